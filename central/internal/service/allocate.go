package service

import (
	"context"
	"errors"
	"fmt"
	"github.com/metalfleet/metalfleet/central/internal/network"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/machine"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// allocItem is one call on its way to an allocation. One call alone
// (createOne) and a batch of calls (allocateBatch) build it with the same
// steps: read (image, networks), pick (machine.Pick or PickGiven, under
// the allocation rules), fit (layout, allocation), the addresses, and
// machine.Allocate.
type allocItem struct {
	r      allocReq
	img    *apiv1.Image
	nets   []*apiv1.Network
	pick   machine.Candidate
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
func (it *allocItem) fit(ctx context.Context, tx pgx.Tx, layouts []*apiv1.FilesystemLayout, c machine.Candidate, now time.Time) error {
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

// allocation is the item as machine.Allocate takes it.
func (it *allocItem) allocation(part *apiv1.Partition) machine.Allocation {
	return machine.Allocation{Candidate: it.pick, Alloc: it.alloc, Labels: it.r.req.GetLabels(),
		Doc: allocationDocument(it.alloc, it.img, it.layout, it.docs, part), Call: it.r.call}
}

// createOne allocates one machine in a transaction of its own.
func (s *machineService) createOne(ctx context.Context, req *apiv1.MachineServiceCreateRequest) (string, error) {
	var id string
	err := s.store.Tx(ctx, func(tx pgx.Tx) error {
		it, err := newAllocReads().item(ctx, tx, allocReq{req: req, call: auth.CallFrom(ctx)}, req.GetProjectId())
		if err != nil {
			return err
		}
		var c machine.Candidate
		if req.GetId() != "" {
			c, err = s.machines.PickGiven(ctx, tx, req.GetId(), req.GetSizeId())
		} else {
			c, err = s.pickWaiting(ctx, tx, req)
		}
		if err != nil {
			return err
		}
		m := c.Machine
		id = m.GetId()
		if req.GetPartitionId() != "" && m.GetPartitionId() != req.GetPartitionId() {
			return status.Errorf(codes.FailedPrecondition, "machine %s is in partition %s, not %s", id, quote(m.GetPartitionId()), quote(req.GetPartitionId()))
		}
		layouts, err := catalog.ListLayouts(ctx, tx)
		if err != nil {
			return fmt.Errorf("read filesystem layouts: %w", err)
		}
		now, err := machine.DBNow(ctx, tx)
		if err != nil {
			return err
		}
		if err := it.fit(ctx, tx, layouts, c, now); err != nil {
			return err
		}
		addrs := &network.MachineIPs{Machine: id, Hostname: it.alloc.GetHostname(), Nets: it.nets}
		if err := network.TakeMachineIPs(ctx, tx, req.GetProjectId(), addrs); err != nil {
			return err
		}
		it.addresses(addrs)
		part, err := catalog.Partitions.Get(ctx, tx, m.GetPartitionId())
		if err != nil {
			return fmt.Errorf("read partition: %w", err)
		}
		return s.machines.Allocate(ctx, tx, req.GetProjectId(), []machine.Allocation{it.allocation(part)})
	})
	return id, err
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
			return nil, status.Errorf(codes.NotFound, "networks[%d]: network %s not found", i, quote(id))
		}
		if err != nil {
			return nil, err
		}
		switch n.GetType() {
		case apiv1.NetworkType_NETWORK_TYPE_CHILD:
			if n.GetProjectId() != project {
				return nil, status.Errorf(codes.NotFound, "networks[%d]: network %s not found", i, quote(id))
			}
		case apiv1.NetworkType_NETWORK_TYPE_EXTERNAL:
		default:
			return nil, status.Errorf(codes.InvalidArgument, "networks[%d]: network %s is a %s network; machines join child or external networks", i, quote(id), network.TypeNames[n.GetType()])
		}
		out = append(out, n)
	}
	return out, nil
}

// pickWaiting locks a waiting machine for the request, or explains why
// there is none.
func (s *machineService) pickWaiting(ctx context.Context, tx pgx.Tx, req *apiv1.MachineServiceCreateRequest) (machine.Candidate, error) {
	if err := s.machines.CheckReservations(ctx, tx, req.GetPartitionId(), req.GetSizeId(), req.GetProjectId()); err != nil {
		return machine.Candidate{}, err
	}
	picked, err := s.machines.Pick(ctx, tx, req.GetPartitionId(), req.GetSizeId(), req.GetProjectId(), 1)
	if err != nil {
		return machine.Candidate{}, err
	}
	if len(picked) == 0 {
		return machine.Candidate{}, status.Errorf(codes.ResourceExhausted, "no waiting machine of size %s in partition %s is free", quote(req.GetSizeId()), quote(req.GetPartitionId()))
	}
	return picked[0], nil
}
