package cli

import (
	"context"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

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
