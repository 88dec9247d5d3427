package service

import (
	"context"
	"github.com/metalfleet/metalfleet/central/internal/network"
	"math/big"
	"net/netip"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type networkService struct {
	*API
	apiv1.UnimplementedNetworkServiceServer
}

func (s *networkService) validateCreate(n *apiv1.Network) ([]netip.Prefix, error) {
	var v violations
	if n == nil {
		v.add("network", "required")
		return nil, v.err()
	}
	v.id("network.id", n.GetId())
	v.text("network.name", n.GetName(), 128)
	v.text("network.description", n.GetDescription(), 1024)
	v.labels("network.labels", n.GetLabels())
	switch n.GetType() {
	case apiv1.NetworkType_NETWORK_TYPE_SUPER, apiv1.NetworkType_NETWORK_TYPE_UNDERLAY:
		v.id("network.partition_id", n.GetPartitionId())
	case apiv1.NetworkType_NETWORK_TYPE_EXTERNAL:
		v.optionalID("network.partition_id", n.GetPartitionId())
	case apiv1.NetworkType_NETWORK_TYPE_CHILD:
		v.add("network.type", "child networks are made with Allocate")
	default:
		v.add("network.type", "required: super, underlay or external")
	}
	if n.GetProjectId() != "" || n.GetParentId() != "" {
		v.add("network.project_id", "only child networks have a project and parent")
	}
	if len(n.GetPrefixes()) == 0 {
		v.add("network.prefixes", "at least one prefix is required")
	}
	var out []netip.Prefix
	fams := map[int]bool{}
	for i, ps := range n.GetPrefixes() {
		p, ok := v.prefix(fieldIndex("network.prefixes", i), ps)
		if !ok {
			continue
		}
		for j, q := range out {
			if ipam.Overlaps(p, q) {
				v.add(fieldIndex("network.prefixes", i), "overlaps network.prefixes[%d]", j)
			}
		}
		fams[ipam.Family(p)] = true
		out = append(out, p)
	}
	if n.GetType() == apiv1.NetworkType_NETWORK_TYPE_SUPER {
		for _, f := range []struct {
			fam   int
			field string
			l     uint32
		}{{4, "network.child_prefix_length_ipv4", n.GetChildPrefixLengthIpv4()}, {6, "network.child_prefix_length_ipv6", n.GetChildPrefixLengthIpv6()}} {
			switch {
			case fams[f.fam] && f.l == 0:
				v.add(f.field, "required for a super network with IPv%d prefixes", f.fam)
			case !fams[f.fam] && f.l != 0:
				v.add(f.field, "set but the network has no IPv%d prefix", f.fam)
			}
			for _, p := range out {
				if ipam.Family(p) != f.fam || f.l == 0 {
					continue
				}
				if _, err := ipam.ChildSlots(p, int(f.l)); err != nil {
					v.add(f.field, "%v", err)
				}
			}
		}
	} else if n.GetChildPrefixLengthIpv4() != 0 || n.GetChildPrefixLengthIpv6() != 0 {
		v.add("network.child_prefix_length_ipv4", "only super networks have child prefix lengths")
	}
	if n.GetVrf() != 0 && n.GetType() == apiv1.NetworkType_NETWORK_TYPE_SUPER {
		v.add("network.vrf", "super networks have no VRF; their child networks get one each")
	}
	if n.GetVrf() > network.MaxVNI {
		v.add("network.vrf", "must be at most %d: a VRF id is the network's 24-bit VXLAN VNI", network.MaxVNI)
	} else if n.GetVrf() >= s.cfg.VRFFirst && n.GetVrf() <= s.cfg.VRFLast {
		v.add("network.vrf", "%d lies in the range central hands to child networks (%d-%d)", n.GetVrf(), s.cfg.VRFFirst, s.cfg.VRFLast)
	}
	return out, v.err()
}

func (s *networkService) Create(ctx context.Context, req *apiv1.NetworkServiceCreateRequest) (*apiv1.NetworkServiceCreateResponse, error) {
	n := req.GetNetwork()
	prefixes, err := s.validateCreate(n)
	if err != nil {
		return nil, err
	}
	n.Usage = nil
	out, err := network.Create(ctx, s.store, n, prefixes)
	if err != nil {
		return nil, toStatus(err, "network "+quote(n.GetId()))
	}
	return &apiv1.NetworkServiceCreateResponse{Network: out}, nil
}

func (s *networkService) Allocate(ctx context.Context, req *apiv1.NetworkServiceAllocateRequest) (*apiv1.NetworkServiceAllocateResponse, error) {
	var v violations
	v.uuid("project_id", req.GetProjectId())
	v.id("partition_id", req.GetPartitionId())
	v.optionalID("parent_id", req.GetParentId())
	v.text("name", req.GetName(), 128)
	v.text("description", req.GetDescription(), 1024)
	v.labels("labels", req.GetLabels())
	want := map[int]bool{}
	for i, f := range req.GetAddressFamilies() {
		switch strings.ToLower(f) {
		case "ipv4", "4":
			want[4] = true
		case "ipv6", "6":
			want[6] = true
		default:
			v.add(fieldIndex("address_families", i), "must be ipv4 or ipv6")
		}
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	if call := auth.CallFrom(ctx); call != nil {
		key := childBatchKey{partition: req.GetPartitionId(), parent: req.GetParentId(), v4: want[4], v6: want[6]}
		out, err := s.childBatches.Do(ctx, key, childBatchReq{req: req, call: call, id: uuid.NewString()})
		if err != nil {
			return nil, err
		}
		if out != nil {
			return &apiv1.NetworkServiceAllocateResponse{Network: out}, nil
		}
		// The batch failed: this call on its own, which reports its own error.
	}
	parent, err := s.findParent(ctx, req.GetPartitionId(), req.GetParentId())
	if err != nil {
		return nil, err
	}
	child := &apiv1.Network{
		Id:          uuid.NewString(),
		Name:        req.GetName(),
		Description: req.GetDescription(),
		Type:        apiv1.NetworkType_NETWORK_TYPE_CHILD,
		PartitionId: parent.GetPartitionId(),
		ProjectId:   req.GetProjectId(),
		ParentId:    parent.GetId(),
		Labels:      req.GetLabels(),
	}
	out, err := network.AllocateChild(ctx, s.store, parent, child, want)
	if err != nil {
		return nil, toStatus(err, "child network of "+quote(parent.GetId()))
	}
	return &apiv1.NetworkServiceAllocateResponse{Network: out}, nil
}

// childBatchSize and childBatchesPerParent bound the batches of
// concurrent Allocate calls (see store.Combiner): calls for the same
// partition, parent and families share one transaction.
const (
	childBatchSize        = 64
	childBatchesPerParent = 4
)

type childBatchKey struct {
	partition string
	parent    string
	v4, v6    bool // requested families; none: every family of the parent
}

type childBatchReq struct {
	req  *apiv1.NetworkServiceAllocateRequest
	call *auth.Call
	id   string // the new network's id
}

// childBatches combines concurrent child network allocations: one batch
// finds the parent once and, in one transaction, takes its calls' VRF ids
// and child prefixes with one statement per pool (ipam.AcquireMany) and
// writes all their network, pool, prefix and audit rows with one statement
// per table. A batch that fails (a pool ran out, a project vanished, a
// conflict) leaves no trace, and its calls go the single-call way, each
// getting its own answer.
type childBatches = store.Combiner[childBatchKey, childBatchReq, *apiv1.Network]

// runChildBatch returns each call's network, or nil when the call must run
// on its own; an error only when findParent refuses, which every call of
// the key would hear alike.
func (a *API) runChildBatch(ctx context.Context, key childBatchKey, reqs []childBatchReq) []store.Outcome[*apiv1.Network] {
	outs := make([]store.Outcome[*apiv1.Network], len(reqs))
	s := &networkService{API: a}
	parent, err := s.findParent(ctx, key.partition, key.parent)
	if err != nil {
		for i := range outs {
			outs[i].Err = err
		}
		return outs
	}
	creqs := make([]network.ChildReq, len(reqs))
	for i, r := range reqs {
		creqs[i] = network.ChildReq{Req: r.req, Call: r.call, ID: r.id}
	}
	nets, err := network.AllocateChildren(ctx, s.store, parent, key.v4, key.v6, creqs)
	if err != nil {
		if s.log != nil {
			s.log.Debug("child network batch failed, allocating one by one", "calls", len(reqs), "err", err)
		}
		return outs
	}
	for i := range outs {
		outs[i].Val = nets[i]
	}
	return outs
}

// findParent picks the super network children are cut from.
func (s *networkService) findParent(ctx context.Context, partition, parentID string) (*apiv1.Network, error) {
	if parentID != "" {
		p, err := fetch(ctx, s.API, network.Table, parentID)
		if err != nil {
			return nil, err
		}
		if p.GetType() != apiv1.NetworkType_NETWORK_TYPE_SUPER {
			return nil, status.Errorf(codes.FailedPrecondition, "network %s is not a super network", quote(parentID))
		}
		if p.GetPartitionId() != partition {
			return nil, status.Errorf(codes.FailedPrecondition, "super network %s is in partition %s, not %s", quote(parentID), quote(p.GetPartitionId()), quote(partition))
		}
		return p, nil
	}
	supers, err := network.Table.List(ctx, s.store.Pool(), "type = 'super' AND partition_id = $1", partition)
	if err != nil {
		return nil, toStatus(err, "networks")
	}
	switch len(supers) {
	case 0:
		return nil, status.Errorf(codes.FailedPrecondition, "partition %s has no super network", quote(partition))
	case 1:
		return supers[0], nil
	}
	return nil, status.Errorf(codes.FailedPrecondition, "partition %s has %d super networks: name one with parent_id", quote(partition), len(supers))
}

func (s *networkService) Get(ctx context.Context, req *apiv1.NetworkServiceGetRequest) (*apiv1.NetworkServiceGetResponse, error) {
	n, err := fetch(ctx, s.API, network.Table, req.GetId())
	if err != nil {
		return nil, err
	}
	if err := s.fillUsage(ctx, n); err != nil {
		return nil, toStatus(err, "network "+quote(req.GetId()))
	}
	return &apiv1.NetworkServiceGetResponse{Network: n}, nil
}

// fillUsage counts free and used units of the network's pools.
func (s *networkService) fillUsage(ctx context.Context, n *apiv1.Network) error {
	prefixes, err := network.Prefixes(ctx, s.store.Pool(), n)
	if err != nil {
		return err
	}
	total := map[int][2]*big.Int{4: {new(big.Int), new(big.Int)}, 6: {new(big.Int), new(big.Int)}}
	for _, p := range prefixes {
		pool := p.IPPool
		if pool == "" {
			pool = p.ChildPool
		}
		size, free, err := ipam.Usage(ctx, s.store.Pool(), pool)
		if err != nil {
			return err
		}
		t := total[ipam.Family(p.CIDR)]
		t[0].Add(t[0], free)
		t[1].Add(t[1], size.Sub(size, free))
	}
	n.Usage = &apiv1.NetworkUsage{
		Ipv4Available: total[4][0].String(), Ipv4Used: total[4][1].String(),
		Ipv6Available: total[6][0].String(), Ipv6Used: total[6][1].String(),
	}
	return nil
}

func (s *networkService) List(ctx context.Context, req *apiv1.NetworkServiceListRequest) (*apiv1.NetworkServiceListResponse, error) {
	var typ string
	if req.GetType() != apiv1.NetworkType_NETWORK_TYPE_UNSPECIFIED {
		typ = network.TypeNames[req.GetType()]
	}
	all, err := network.Table.List(ctx, s.store.Pool(),
		"($1 = '' OR partition_id = $1) AND ($2 = '' OR project_id = $2) AND ($3 = '' OR type = $3)",
		req.GetPartitionId(), req.GetProjectId(), typ)
	if err != nil {
		return nil, toStatus(err, "networks")
	}
	out, err := visible(ctx, s.API, all, (*apiv1.Network).GetProjectId, true)
	if err != nil {
		return nil, err
	}
	return &apiv1.NetworkServiceListResponse{Networks: out}, nil
}

func (s *networkService) Update(ctx context.Context, req *apiv1.NetworkServiceUpdateRequest) (*apiv1.NetworkServiceUpdateResponse, error) {
	var v violations
	v.text("name", req.GetName(), 128)
	v.text("description", req.GetDescription(), 1024)
	v.labels("labels", req.GetLabels())
	if err := v.err(); err != nil {
		return nil, err
	}
	out, err := network.Update(ctx, s.store, req.GetId(), req.GetName(), req.GetDescription(), req.GetLabels())
	if err != nil {
		return nil, toStatus(err, "network "+quote(req.GetId()))
	}
	return &apiv1.NetworkServiceUpdateResponse{Network: out}, nil
}

// Delete frees the network's prefixes and VRF. IPs and child networks must
// go first; the foreign keys back the explicit checks up under concurrency.
func (s *networkService) Delete(ctx context.Context, req *apiv1.NetworkServiceDeleteRequest) (*apiv1.NetworkServiceDeleteResponse, error) {
	out, err := network.Delete(ctx, s.store, req.GetId())
	if err != nil {
		return nil, toStatus(err, "network "+quote(req.GetId()))
	}
	return &apiv1.NetworkServiceDeleteResponse{Network: out}, nil
}
