package service

import (
	"context"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type machineService struct {
	*API
	apiv1.UnimplementedMachineServiceServer
}

var machines = table[*apiv1.Machine]{name: "machines", newFn: func() *apiv1.Machine { return &apiv1.Machine{} }}

func (s *machineService) Get(ctx context.Context, req *apiv1.MachineServiceGetRequest) (*apiv1.MachineServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, machines, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceGetResponse{Machine: out}, nil
}

// List shows admins every machine and others their projects' allocated ones.
func (s *machineService) List(ctx context.Context, req *apiv1.MachineServiceListRequest) (*apiv1.MachineServiceListResponse, error) {
	all, err := machines.list(ctx, s.store.Pool(), "($1 = '' OR partition_id = $1) AND ($2 = '' OR project_id = $2)", req.GetPartitionId(), req.GetProjectId())
	if err != nil {
		return nil, toStatus(err, "machines")
	}
	out, err := visible(ctx, s.API, all, func(m *apiv1.Machine) string { return m.GetAllocation().GetProjectId() }, false)
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceListResponse{Machines: out}, nil
}

type switchService struct {
	*API
	apiv1.UnimplementedSwitchServiceServer
}

var switches = table[*apiv1.Switch]{name: "switches", newFn: func() *apiv1.Switch { return &apiv1.Switch{} }}

func (s *switchService) Get(ctx context.Context, req *apiv1.SwitchServiceGetRequest) (*apiv1.SwitchServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, switches, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.SwitchServiceGetResponse{Switch: out}, nil
}

func (s *switchService) List(ctx context.Context, req *apiv1.SwitchServiceListRequest) (*apiv1.SwitchServiceListResponse, error) {
	out, err := switches.list(ctx, s.store.Pool(), "($1 = '' OR partition_id = $1)", req.GetPartitionId())
	if err != nil {
		return nil, toStatus(err, "switches")
	}
	return &apiv1.SwitchServiceListResponse{Switches: out}, nil
}
