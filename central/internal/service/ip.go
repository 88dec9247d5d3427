package service

import (
	"context"
	"net/netip"
	"strings"

	"github.com/metalfleet/metalfleet/central/internal/network"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type ipService struct {
	*API
	apiv1.UnimplementedIPServiceServer
}

func (s *ipService) Allocate(ctx context.Context, req *apiv1.IPServiceAllocateRequest) (*apiv1.IPServiceAllocateResponse, error) {
	var v violations
	v.uuid("project_id", req.GetProjectId())
	if req.GetNetworkId() == "" {
		v.add("network_id", "required")
	}
	v.text("name", req.GetName(), 128)
	v.text("description", req.GetDescription(), 1024)
	v.labels("labels", req.GetLabels())
	var want netip.Addr
	if req.GetIp() != "" {
		a, err := netip.ParseAddr(req.GetIp())
		if err != nil || a.Zone() != "" {
			v.add("ip", "not an IP address")
		}
		want = a.Unmap()
	}
	fam := 0
	switch strings.ToLower(req.GetAddressFamily()) {
	case "":
	case "ipv4", "4":
		fam = 4
	case "ipv6", "6":
		fam = 6
	default:
		v.add("address_family", "must be ipv4 or ipv6")
	}
	typ := req.GetType()
	if typ == apiv1.IPType_IP_TYPE_UNSPECIFIED {
		typ = apiv1.IPType_IP_TYPE_EPHEMERAL
	}
	if _, ok := network.IPTypeNames[typ]; !ok {
		v.add("type", "must be ephemeral or static")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	ip := &apiv1.IP{
		NetworkId:   req.GetNetworkId(),
		ProjectId:   req.GetProjectId(),
		Name:        req.GetName(),
		Description: req.GetDescription(),
		Type:        typ,
		Labels:      req.GetLabels(),
	}
	out, err := s.networks.AllocateIP(ctx, ip, want, fam)
	if err != nil {
		return nil, networkStatus(err, func(string) string { return "ip in network " + quote(req.GetNetworkId()) })
	}
	return &apiv1.IPServiceAllocateResponse{Ip: out}, nil
}

func (s *ipService) Get(ctx context.Context, req *apiv1.IPServiceGetRequest) (*apiv1.IPServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, network.IPs, canonicalIP(req.GetIp()))
	if err != nil {
		return nil, err
	}
	return &apiv1.IPServiceGetResponse{Ip: out}, nil
}

func (s *ipService) List(ctx context.Context, req *apiv1.IPServiceListRequest) (*apiv1.IPServiceListResponse, error) {
	all, err := s.networks.ListIPs(ctx, req.GetProjectId(), req.GetNetworkId())
	if err != nil {
		return nil, toStatus(err, "ips")
	}
	out, err := visible(ctx, s.API, all, (*apiv1.IP).GetProjectId, false)
	if err != nil {
		return nil, err
	}
	return &apiv1.IPServiceListResponse{Ips: out}, nil
}

func (s *ipService) Update(ctx context.Context, req *apiv1.IPServiceUpdateRequest) (*apiv1.IPServiceUpdateResponse, error) {
	var v violations
	v.text("name", req.GetName(), 128)
	v.text("description", req.GetDescription(), 1024)
	v.labels("labels", req.GetLabels())
	if _, ok := network.IPTypeNames[req.GetType()]; !ok && req.GetType() != apiv1.IPType_IP_TYPE_UNSPECIFIED {
		v.add("type", "must be ephemeral or static")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	out, err := s.networks.UpdateIP(ctx, canonicalIP(req.GetIp()), req.GetName(), req.GetDescription(), req.GetLabels(), req.GetType())
	if err != nil {
		return nil, toStatus(err, "ip "+quote(canonicalIP(req.GetIp())))
	}
	return &apiv1.IPServiceUpdateResponse{Ip: out}, nil
}

func (s *ipService) Release(ctx context.Context, req *apiv1.IPServiceReleaseRequest) (*apiv1.IPServiceReleaseResponse, error) {
	out, err := s.networks.ReleaseIP(ctx, canonicalIP(req.GetIp()), req.GetIp())
	if err != nil {
		return nil, toStatus(err, "ip "+quote(req.GetIp()))
	}
	return &apiv1.IPServiceReleaseResponse{Ip: out}, nil
}

// canonicalIP normalises an address so that "fd00::0001" finds "fd00::1".
func canonicalIP(s string) string {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().String()
	}
	return s
}
