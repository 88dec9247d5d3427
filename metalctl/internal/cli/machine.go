package cli

import (
	"context"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

const (
	prefixMachineState = "MACHINE_STATE_"
	prefixLiveliness   = "LIVELINESS_"
)

// machineResource is read-only: machines come from provisioning.
func (a *app) machineResource() resource[*apiv1.Machine] {
	return resource[*apiv1.Machine]{
		kind: "machine",
		cols: []column[*apiv1.Machine]{
			{header: "ID", value: (*apiv1.Machine).GetId},
			{header: "PARTITION", value: (*apiv1.Machine).GetPartitionId},
			{header: "RACK", wide: true, value: (*apiv1.Machine).GetRack},
			{header: "SIZE", value: (*apiv1.Machine).GetSizeId},
			{header: "STATE", value: func(m *apiv1.Machine) string { return enumShort(m.GetState(), prefixMachineState) }},
			{header: "LIVELINESS", value: func(m *apiv1.Machine) string { return enumShort(m.GetLiveliness(), prefixLiveliness) }},
			{header: "LAST-EVENT", value: (*apiv1.Machine).GetLastEvent},
			// AGE is how long ago the last event happened, which tells a
			// stuck provisioning apart from a progressing one.
			{header: "AGE", value: func(m *apiv1.Machine) string { return formatAge(a.streams.now(), m.GetLastEventAt()) }},
			{header: "PROJECT", wide: true, value: func(m *apiv1.Machine) string { return m.GetAllocation().GetProjectId() }},
			{header: "HOSTNAME", wide: true, value: func(m *apiv1.Machine) string { return m.GetAllocation().GetHostname() }},
			{header: "IMAGE", wide: true, value: func(m *apiv1.Machine) string { return m.GetAllocation().GetImageId() }},
		},
		newObj: func() *apiv1.Machine { return &apiv1.Machine{} },
		id:     (*apiv1.Machine).GetId,
		get: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Machine, error) {
			resp, err := apiv1.NewMachineServiceClient(cc).Get(ctx, &apiv1.MachineServiceGetRequest{Id: id})
			return resp.GetMachine(), err
		},
	}
}

func (a *app) newMachineCommand() *cobra.Command {
	r := a.machineResource()
	cmd := &cobra.Command{Use: "machine", Aliases: []string{"machines", "m"}, Short: "Show machines"}
	var partition, project string
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.Machine, error) {
		resp, err := apiv1.NewMachineServiceClient(cc).List(ctx, &apiv1.MachineServiceListRequest{PartitionId: partition, ProjectId: project})
		return resp.GetMachines(), err
	})
	list.Flags().StringVar(&partition, "partition", "", "only machines of this partition")
	list.Flags().StringVar(&project, "project", "", "only machines allocated to this project")
	cmd.AddCommand(list, describeCommand(a, r))
	return cmd
}

func switchResource() resource[*apiv1.Switch] {
	return resource[*apiv1.Switch]{
		kind: "switch",
		cols: []column[*apiv1.Switch]{
			{header: "ID", value: (*apiv1.Switch).GetId},
			{header: "PARTITION", value: (*apiv1.Switch).GetPartitionId},
			{header: "RACK", value: (*apiv1.Switch).GetRack},
			{header: "PORTS", value: func(s *apiv1.Switch) string { return formatUint(uint64(len(s.GetPorts()))) }},
			{header: "CONNECTED", wide: true, value: func(s *apiv1.Switch) string {
				n := 0
				for _, p := range s.GetPorts() {
					if p.GetMachineId() != "" {
						n++
					}
				}
				return formatUint(uint64(n))
			}},
			{header: "LAST-SYNC", wide: true, value: func(s *apiv1.Switch) string { return formatTime(s.GetLastSync()) }},
		},
		newObj: func() *apiv1.Switch { return &apiv1.Switch{} },
		id:     (*apiv1.Switch).GetId,
		get: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Switch, error) {
			resp, err := apiv1.NewSwitchServiceClient(cc).Get(ctx, &apiv1.SwitchServiceGetRequest{Id: id})
			return resp.GetSwitch(), err
		},
	}
}

func (a *app) newSwitchCommand() *cobra.Command {
	r := switchResource()
	cmd := &cobra.Command{Use: "switch", Aliases: []string{"switches", "sw"}, Short: "Show switches"}
	var partition string
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.Switch, error) {
		resp, err := apiv1.NewSwitchServiceClient(cc).List(ctx, &apiv1.SwitchServiceListRequest{PartitionId: partition})
		return resp.GetSwitches(), err
	})
	list.Flags().StringVar(&partition, "partition", "", "only switches of this partition")
	cmd.AddCommand(list, describeCommand(a, r))
	return cmd
}
