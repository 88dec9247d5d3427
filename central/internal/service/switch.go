package service

import (
	"context"

	"github.com/metalfleet/metalfleet/central/internal/fabric"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type switchService struct {
	*API
	apiv1.UnimplementedSwitchServiceServer
}

func (s *switchService) Get(ctx context.Context, req *apiv1.SwitchServiceGetRequest) (*apiv1.SwitchServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, fabric.Table, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.SwitchServiceGetResponse{Switch: out}, nil
}

func (s *switchService) List(ctx context.Context, req *apiv1.SwitchServiceListRequest) (*apiv1.SwitchServiceListResponse, error) {
	out, err := fabric.List(ctx, s.store.Pool(), req.GetPartitionId())
	if err != nil {
		return nil, toStatus(err, "switches")
	}
	return &apiv1.SwitchServiceListResponse{Switches: out}, nil
}

func (s *switchService) SetPort(ctx context.Context, req *apiv1.SwitchServiceSetPortRequest) (*apiv1.SwitchServiceSetPortResponse, error) {
	var v violations
	v.id("id", req.GetId())
	v.text("port", req.GetPort(), 64)
	if req.GetPort() == "" {
		v.add("port", "required")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	var docs fabric.Docs
	if s.fleet != nil {
		docs = s.fleet
	}
	out, err := fabric.SetPort(ctx, s.store, docs, req.GetId(), req.GetPort(), req.GetUp())
	if err != nil {
		return nil, toStatus(err, "switch "+quote(req.GetId()))
	}
	return &apiv1.SwitchServiceSetPortResponse{Switch: out}, nil
}
