package service

import (
	"context"
	"errors"
	"net/netip"
	"strings"

	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/network"
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
	out, err := s.networks.Create(ctx, n, prefixes)
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
	out, err := s.networks.AllocateChild(ctx, network.ChildRequest{
		Partition: req.GetPartitionId(), Parent: req.GetParentId(), V4: want[4], V6: want[6],
		Project: req.GetProjectId(), Name: req.GetName(), Description: req.GetDescription(), Labels: req.GetLabels(),
	})
	if err != nil {
		return nil, networkStatus(err, func(parent string) string { return "child network of " + quote(parent) })
	}
	return &apiv1.NetworkServiceAllocateResponse{Network: out}, nil
}

// networkStatus is toStatus for the network aggregate's calls that concern
// a network other than what they write (network.Error): a failed read is
// reported under that network's name, as reading it here would be, any
// other failure as what(that network).
func networkStatus(err error, what func(network string) string) error {
	var ne *network.Error
	switch {
	case !errors.As(err, &ne):
		return toStatus(err, what(""))
	case ne.Read && ne.Network == "":
		return toStatus(ne.Err, "networks")
	case ne.Read:
		return toStatus(ne.Err, "network "+quote(ne.Network))
	}
	return toStatus(ne.Err, what(ne.Network))
}

func (s *networkService) Get(ctx context.Context, req *apiv1.NetworkServiceGetRequest) (*apiv1.NetworkServiceGetResponse, error) {
	n, err := fetch(ctx, s.API, network.Table, req.GetId())
	if err != nil {
		return nil, err
	}
	if n.Usage, err = s.networks.Usage(ctx, n); err != nil {
		return nil, toStatus(err, "network "+quote(req.GetId()))
	}
	return &apiv1.NetworkServiceGetResponse{Network: n}, nil
}

func (s *networkService) List(ctx context.Context, req *apiv1.NetworkServiceListRequest) (*apiv1.NetworkServiceListResponse, error) {
	all, err := s.networks.List(ctx, req.GetPartitionId(), req.GetProjectId(), req.GetType())
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
	out, err := s.networks.Update(ctx, req.GetId(), req.GetName(), req.GetDescription(), req.GetLabels())
	if err != nil {
		return nil, toStatus(err, "network "+quote(req.GetId()))
	}
	return &apiv1.NetworkServiceUpdateResponse{Network: out}, nil
}

// Delete frees the network's prefixes and VRF. IPs and child networks must
// go first; the foreign keys back the explicit checks up under concurrency.
func (s *networkService) Delete(ctx context.Context, req *apiv1.NetworkServiceDeleteRequest) (*apiv1.NetworkServiceDeleteResponse, error) {
	out, err := s.networks.Delete(ctx, req.GetId())
	if err != nil {
		return nil, toStatus(err, "network "+quote(req.GetId()))
	}
	return &apiv1.NetworkServiceDeleteResponse{Network: out}, nil
}
