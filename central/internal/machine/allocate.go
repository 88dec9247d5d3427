package machine

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/network"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Allocations by size are combined (store.Combiner, as IP hand-outs are):
// concurrent calls for one size, partition and project run as one
// transaction with a fixed number of statements — pick the machines, take
// the addresses per pool, write the IP rows, the machine rows, the events,
// the installers' documents and the audit rows, each in one statement —
// instead of some twenty round trips and a commit each. A batch is all or
// nothing; calls it cannot serve (a reserved size, a bad image or network,
// fewer machines or addresses than calls, any error) run on their own
// afterwards, which also reports each call's own error.
const (
	allocBatchSize    = 32
	allocBatchRunning = 4
)

type allocKey struct{ partition, size, project string }

type allocReq struct {
	req  *apiv1.MachineServiceCreateRequest
	call *auth.Call
}

// allocRes is the allocated machine's id, "" when the batch did not serve
// the call.
type allocRes struct{ id string }

type allocBatches = store.Combiner[allocKey, allocReq, allocRes]

// errUnbatched rolls a batch back so its calls run on their own.
var errUnbatched = errors.New("allocation batch cannot serve these calls")

// Allocate allocates a machine for req, validated by the caller: a
// waiting, alive machine of the size in the partition (the project spread
// across racks, size reservations honoured) or the machine req names,
// either passing the allocation rules; the filesystem layout; one address
// per family of every network it joins; the machine row, its "Allocated"
// event, its installer's document and the audit row — in one transaction,
// all or nothing. It returns the machine's id.
//
// Concurrent calls for one size, partition and project share a
// transaction; a lone call is a batch of one, and a call a batch could
// not serve runs on its own, which gives it its own answer. Refusals are
// gRPC statuses; store errors come back as they are.
func (ms *Machines) Allocate(ctx context.Context, req *apiv1.MachineServiceCreateRequest) (string, error) {
	r := allocReq{req: req, call: auth.CallFrom(ctx)}
	if req.GetId() == "" {
		res, err := ms.allocs.Do(ctx, allocKey{partition: req.GetPartitionId(), size: req.GetSizeId(), project: req.GetProjectId()}, r)
		if err != nil || res.id != "" {
			return res.id, err
		}
	}
	return ms.allocateAlone(ctx, r)
}

// AllocBatchStats says how many shared transactions allocations ran and
// how many calls they served.
func (ms *Machines) AllocBatchStats() (batches, calls int64) { return ms.allocs.Stats() }

// runAllocBatch is the combiner's run: the calls of one size, partition
// and project in one transaction. It returns each served call's machine;
// the others run on their own afterwards.
func (ms *Machines) runAllocBatch(ctx context.Context, key allocKey, reqs []allocReq) []store.Outcome[allocRes] {
	outs := make([]store.Outcome[allocRes], len(reqs))
	if len(reqs) == 1 {
		// A lone call runs its own transaction here, inside the combiner,
		// so that calls arriving meanwhile queue up and form the next batch.
		// The batch runs with its leader's context, which is this call's.
		outs[0].Val.id, outs[0].Err = ms.allocateAlone(ctx, reqs[0])
		return outs
	}
	if ms.docs == nil {
		// Without the fleet's documents (an API without agents) every
		// call runs on its own.
		return outs
	}
	var ids []string
	err := ms.st.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		ids, err = ms.allocate(ctx, tx, key.project, reqs)
		return err
	})
	if err != nil {
		if !errors.Is(err, errUnbatched) {
			ms.log.Debug("allocation batch fell back to single calls", "calls", len(reqs), "err", err)
		}
		return outs
	}
	for i, id := range ids {
		outs[i].Val.id = id
	}
	return outs
}

// allocateAlone allocates for one call in a transaction of its own.
func (ms *Machines) allocateAlone(ctx context.Context, r allocReq) (string, error) {
	var ids []string
	err := ms.st.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		ids, err = ms.allocate(ctx, tx, r.req.GetProjectId(), []allocReq{r})
		return err
	})
	if err != nil {
		return "", err
	}
	return ids[0], nil
}

// allocate allocates for reqs, calls of project, inside tx and returns
// each call's machine id, "" for a call left to run on its own. One call
// and a batch of calls take the same steps: read (image, networks), pick
// (a waiting machine, or the one named by id, under the allocation
// rules), fit (layout, allocation), the addresses, and the write. They
// differ only where they must: a step's refusal is a lone call's answer,
// but sends a batch's calls to run alone (errUnbatched), each of which
// then hears its own; a batch leaves out a call whose reads fail; the
// reservations of a size are counted one call at a time; and a lone call
// takes addresses from any prefix of a network, a batch only from each
// family's first (network.TakeBatchIPs).
func (ms *Machines) allocate(ctx context.Context, tx pgx.Tx, project string, reqs []allocReq) ([]string, error) {
	alone := len(reqs) == 1
	refused := func(err error) error {
		if alone {
			return err
		}
		return errUnbatched
	}

	reads := newAllocReads()
	var items []*allocItem
	for i, r := range reqs {
		it, err := reads.item(ctx, tx, r, project)
		if err != nil {
			if alone {
				return nil, err
			}
			continue // served on its own, which reports its error
		}
		it.index = i
		items = append(items, it)
	}
	if !alone && len(items) < 2 {
		return nil, errUnbatched
	}

	picked, err := ms.pickFor(ctx, tx, project, items)
	if err != nil {
		return nil, err
	}
	for i, it := range items {
		m := picked[i].Machine
		if p := it.r.req.GetPartitionId(); p != "" && m.GetPartitionId() != p {
			return nil, refused(status.Errorf(codes.FailedPrecondition, "machine %s is in partition %s, not %s", m.GetId(), auth.Quote(m.GetPartitionId()), auth.Quote(p)))
		}
		if !alone && picked[i].Agent == "" {
			// A machine whose installer went away: left to a call of its own.
			return nil, errUnbatched
		}
	}
	layouts, err := catalog.ListLayouts(ctx, tx)
	if err != nil {
		return nil, fmt.Errorf("read filesystem layouts: %w", err)
	}
	now, err := dbNow(ctx, tx)
	if err != nil {
		return nil, err
	}
	for i, it := range items {
		if err := it.fit(layouts, picked[i], now); err != nil {
			return nil, refused(err)
		}
	}

	addrs := make([]*network.MachineIPs, len(items))
	for i, it := range items {
		addrs[i] = &network.MachineIPs{Machine: it.pick.Machine.GetId(), Hostname: it.alloc.GetHostname(), Nets: it.nets}
	}
	if alone {
		err = network.TakeMachineIPs(ctx, tx, project, addrs[0])
	} else if err = network.TakeBatchIPs(ctx, tx, project, addrs); errors.Is(err, network.ErrShort) {
		err = errUnbatched
	}
	if err != nil {
		return nil, err
	}
	for i, it := range items {
		it.addresses(addrs[i])
	}

	// The machines, their events, documents and audit rows.
	part, err := catalog.Partitions.Get(ctx, tx, items[0].pick.Machine.GetPartitionId())
	if err != nil {
		return nil, refused(fmt.Errorf("read partition: %w", err))
	}
	as := make([]allocation, len(items))
	for i, it := range items {
		as[i] = it.allocation(part)
	}
	if err := ms.give(ctx, tx, project, as); err != nil {
		return nil, err
	}
	ids := make([]string, len(reqs))
	for _, it := range items {
		ids[it.index] = it.pick.Machine.GetId()
	}
	return ids, nil
}

// pickFor locks a machine for every item: the one a lone call names
// (pickGiven), or waiting ones of the calls' size and partition (pick).
// A batch whose size has reservations, or that finds fewer machines than
// it has calls, runs its calls alone (errUnbatched): reservations are
// counted under their lock one call at a time, and who gets a machine and
// who is told there is none is decided call by call.
func (ms *Machines) pickFor(ctx context.Context, tx pgx.Tx, project string, items []*allocItem) ([]Candidate, error) {
	alone := len(items) == 1
	req := items[0].r.req
	if req.GetId() != "" {
		c, err := ms.pickGiven(ctx, tx, req.GetId(), req.GetSizeId())
		return []Candidate{c}, err
	}
	partition, size := req.GetPartitionId(), req.GetSizeId()
	if alone {
		if err := ms.checkReservations(ctx, tx, partition, size, project); err != nil {
			return nil, err
		}
	} else {
		held, err := hasReservations(ctx, tx, partition, size)
		if err != nil {
			return nil, err
		}
		if held {
			return nil, errUnbatched
		}
	}
	picked, err := ms.pick(ctx, tx, partition, size, project, len(items))
	if err != nil {
		return nil, err
	}
	if len(picked) < len(items) {
		if !alone {
			return nil, errUnbatched
		}
		return nil, status.Errorf(codes.ResourceExhausted, "no waiting machine of size %s in partition %s is free", auth.Quote(size), auth.Quote(partition))
	}
	return picked, nil
}

// allocItem is one call on its way to an allocation.
type allocItem struct {
	r      allocReq
	index  int // the call's place in its batch
	img    *apiv1.Image
	nets   []*apiv1.Network
	pick   Candidate
	layout *apiv1.FilesystemLayout
	alloc  *apiv1.MachineAllocation
	docs   []*agentv1.MachineNetwork
}

// allocReads reads what calls need before a machine is picked, each image
// and each list of networks once for all calls of a batch (they share the
// project, so the same list has the same answer).
type allocReads struct {
	images map[string]*apiv1.Image
	nets   map[string][]*apiv1.Network
	errs   map[string]error
}

func newAllocReads() *allocReads {
	return &allocReads{images: map[string]*apiv1.Image{}, nets: map[string][]*apiv1.Network{}, errs: map[string]error{}}
}

// item reads r's usable image and the networks it joins.
func (rd *allocReads) item(ctx context.Context, tx pgx.Tx, r allocReq, project string) (*allocItem, error) {
	imgKey := "image\x00" + r.req.GetImageId()
	img, ok := rd.images[imgKey]
	if !ok && rd.errs[imgKey] == nil {
		var err error
		if img, err = catalog.UsableImage(ctx, tx, r.req.GetImageId()); err != nil {
			rd.errs[imgKey] = err
		}
		rd.images[imgKey] = img
	}
	if err := rd.errs[imgKey]; err != nil {
		return nil, err
	}
	netKey := "nets\x00" + strings.Join(r.req.GetNetworks(), "\x00")
	nets, ok := rd.nets[netKey]
	if !ok && rd.errs[netKey] == nil {
		var err error
		if nets, err = machineNetworks(ctx, tx, project, r.req.GetNetworks()); err != nil {
			rd.errs[netKey] = err
		}
		rd.nets[netKey] = nets
	}
	if err := rd.errs[netKey]; err != nil {
		return nil, err
	}
	return &allocItem{r: r, img: img, nets: nets}, nil
}

// fit gives the item its picked machine: the filesystem layout and the
// allocation.
func (it *allocItem) fit(layouts []*apiv1.FilesystemLayout, c Candidate, now time.Time) error {
	layout, err := catalog.ChooseLayout(it.r.req.GetFilesystemLayoutId(), layouts, c.Machine, it.img)
	if err != nil {
		return err
	}
	it.pick, it.layout = c, layout
	it.alloc = newAllocation(it.r.req, c.Machine, it.img, layout, now)
	return nil
}

// addresses records the addresses taken for the item.
func (it *allocItem) addresses(a *network.MachineIPs) {
	it.alloc.Ips = append(it.alloc.Ips, a.IPs...)
	it.docs = a.Docs
}

// allocation is the item as give writes it.
func (it *allocItem) allocation(part *apiv1.Partition) allocation {
	return allocation{Candidate: it.pick, alloc: it.alloc, labels: it.r.req.GetLabels(),
		doc: allocationDocument(it.alloc, it.img, it.layout, it.docs, part), call: it.r.call}
}

func newAllocation(req *apiv1.MachineServiceCreateRequest, m *apiv1.Machine, img *apiv1.Image, layout *apiv1.FilesystemLayout, now time.Time) *apiv1.MachineAllocation {
	alloc := &apiv1.MachineAllocation{
		Id: uuid.NewString(), ProjectId: req.GetProjectId(), Hostname: req.GetHostname(), ImageId: img.GetId(),
		Networks: req.GetNetworks(), SshPublicKeys: req.GetSshPublicKeys(), UserData: req.GetUserData(),
		FilesystemLayoutId: layout.GetId(), CreatedAt: timestamppb.New(now),
	}
	if alloc.Hostname == "" {
		alloc.Hostname = "m-" + m.GetId()[:8]
	}
	return alloc
}

// allocationDocument is what the installer gets to install.
func allocationDocument(alloc *apiv1.MachineAllocation, img *apiv1.Image, layout *apiv1.FilesystemLayout, nets []*agentv1.MachineNetwork, part *apiv1.Partition) *agentv1.MachineAllocation {
	return &agentv1.MachineAllocation{
		Id: alloc.GetId(), ProjectId: alloc.GetProjectId(), Hostname: alloc.GetHostname(),
		Image:  &agentv1.ImageRef{Id: img.GetId(), Os: img.GetOs(), Version: img.GetVersion(), Url: img.GetUrl(), Sha256: img.GetSha256()},
		Layout: catalog.LayoutDoc(layout), Networks: nets, SshPublicKeys: alloc.GetSshPublicKeys(), UserData: alloc.GetUserData(),
		DnsServers: part.GetDnsServers(), NtpServers: part.GetNtpServers(), CreatedAt: alloc.GetCreatedAt(),
	}
}

// machineNetworks reads the networks a machine joins: the project's own
// child networks and shared external ones.
func machineNetworks(ctx context.Context, tx pgx.Tx, project string, ids []string) ([]*apiv1.Network, error) {
	var out []*apiv1.Network
	for i, id := range ids {
		n, err := network.Table.Get(ctx, tx, id)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, status.Errorf(codes.NotFound, "networks[%d]: network %s not found", i, auth.Quote(id))
		}
		if err != nil {
			return nil, err
		}
		switch n.GetType() {
		case apiv1.NetworkType_NETWORK_TYPE_CHILD:
			if n.GetProjectId() != project {
				return nil, status.Errorf(codes.NotFound, "networks[%d]: network %s not found", i, auth.Quote(id))
			}
		case apiv1.NetworkType_NETWORK_TYPE_EXTERNAL:
		default:
			return nil, status.Errorf(codes.InvalidArgument, "networks[%d]: network %s is a %s network; machines join child or external networks", i, auth.Quote(id), network.TypeNames[n.GetType()])
		}
		out = append(out, n)
	}
	return out, nil
}
