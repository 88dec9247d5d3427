package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func (a *app) switchResource() resource[*apiv1.Switch] {
	return resource[*apiv1.Switch]{
		kind: "switch",
		cols: []column[*apiv1.Switch]{
			{header: "ID", value: (*apiv1.Switch).GetId},
			{header: "PARTITION", value: (*apiv1.Switch).GetPartitionId},
			{header: "RACK", value: (*apiv1.Switch).GetRack},
			{header: "ASN", wide: true, value: func(s *apiv1.Switch) string {
				if s.GetAsn() == 0 {
					return ""
				}
				return formatUint(uint64(s.GetAsn()))
			}},
			{header: "LOOPBACK", wide: true, value: (*apiv1.Switch).GetLoopback},
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
			{header: "SYNC", value: switchSync},
			{header: "LAST-SYNC", value: func(s *apiv1.Switch) string {
				if age := formatAge(a.streams.now(), s.GetLastSync()); age != "" {
					return age + " ago"
				}
				return "never"
			}},
		},
		newObj: func() *apiv1.Switch { return &apiv1.Switch{} },
		id:     (*apiv1.Switch).GetId,
		get: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Switch, error) {
			resp, err := apiv1.NewSwitchServiceClient(cc).Get(ctx, &apiv1.SwitchServiceGetRequest{Id: id})
			return resp.GetSwitch(), err
		},
	}
}

// switchSync says whether the switch applied its document: the revision
// in effect, and the last apply's error, shortened.
func switchSync(s *apiv1.Switch) string {
	sy := s.GetSync()
	if sy == nil {
		return ""
	}
	out := "rev " + formatUint(sy.GetAppliedRevision())
	if e := sy.GetError(); e != "" {
		if len(e) > 60 {
			e = e[:57] + "..."
		}
		return out + " error: " + e
	}
	return out + " ok"
}

// switchPortColumns are the ports of one switch, for describe's table
// formats and connected-machines.
func switchPortColumns() []column[*apiv1.SwitchPort] {
	return []column[*apiv1.SwitchPort]{
		{header: "PORT", value: (*apiv1.SwitchPort).GetName},
		{header: "ROLE", value: (*apiv1.SwitchPort).GetRole},
		{header: "VRF", value: func(p *apiv1.SwitchPort) string {
			if p.GetVrf() == 0 {
				return ""
			}
			return fmt.Sprintf("Vrf%d", p.GetVrf())
		}},
		{header: "ADMIN", value: func(p *apiv1.SwitchPort) string {
			if p.GetShut() {
				return "shut"
			}
			return p.GetAdminState()
		}},
		{header: "OPER", value: (*apiv1.SwitchPort).GetOperState},
		{header: "MACHINE", value: (*apiv1.SwitchPort).GetMachineId},
		{header: "NIC", value: (*apiv1.SwitchPort).GetMachineNic},
		{header: "NEIGHBOURS", wide: true, value: func(p *apiv1.SwitchPort) string { return strings.Join(p.GetNeighbours(), ", ") }},
	}
}

func switchBGPColumns() []column[*apiv1.SwitchBgpSession] {
	return []column[*apiv1.SwitchBgpSession]{
		{header: "NEIGHBOUR", value: (*apiv1.SwitchBgpSession).GetPort},
		{header: "VRF", value: (*apiv1.SwitchBgpSession).GetVrf},
		{header: "GROUP", value: (*apiv1.SwitchBgpSession).GetPeerGroup},
		{header: "STATE", value: (*apiv1.SwitchBgpSession).GetState},
		{header: "REMOTE-AS", value: func(b *apiv1.SwitchBgpSession) string { return formatUint(uint64(b.GetRemoteAs())) }},
		{header: "SENT", value: func(b *apiv1.SwitchBgpSession) string { return formatUint(b.GetPrefixesSent()) }},
		{header: "ACCEPTED", value: func(b *apiv1.SwitchBgpSession) string { return formatUint(b.GetPrefixesAccepted()) }},
	}
}

func (a *app) newSwitchCommand() *cobra.Command {
	r := a.switchResource()
	cmd := &cobra.Command{Use: "switch", Aliases: []string{"switches", "sw"}, Short: "Show and operate the leaf switches"}
	var partition string
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.Switch, error) {
		resp, err := apiv1.NewSwitchServiceClient(cc).List(ctx, &apiv1.SwitchServiceListRequest{PartitionId: partition})
		return resp.GetSwitches(), err
	})
	list.Flags().StringVar(&partition, "partition", "", "only switches of this partition")
	cmd.AddCommand(list, a.switchDescribeCommand(r), a.switchPortCommand(r), a.switchConnectedCommand(), a.switchReplaceCommand())
	return cmd
}

// switchDescribeCommand is describe with the ports and BGP sessions as
// tables in the table formats; YAML and JSON show the whole switch.
func (a *app) switchDescribeCommand(r resource[*apiv1.Switch]) *cobra.Command {
	return &cobra.Command{
		Use:     "describe ID",
		Aliases: []string{"get"},
		Short:   "Show one switch: its ports, neighbours and BGP sessions (YAML unless -o is given)",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.printer(formatYAML)
			if err != nil {
				return err
			}
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				sw, err := r.get(ctx, cc, args[0])
				if err != nil {
					return err
				}
				if !p.isTable() {
					return printOne(p, nil, sw)
				}
				if err := printOne(p, r.cols, sw); err != nil {
					return err
				}
				if _, err := fmt.Fprintln(p.w); err != nil {
					return fmt.Errorf("write output: %w", err)
				}
				if err := printList(p, switchPortColumns(), sw.GetPorts()); err != nil {
					return err
				}
				if len(sw.GetBgpSessions()) == 0 {
					return nil
				}
				if _, err := fmt.Fprintln(p.w); err != nil {
					return fmt.Errorf("write output: %w", err)
				}
				return printList(p, switchBGPColumns(), sw.GetBgpSessions())
			})
		},
	}
}

func (a *app) switchPortCommand(r resource[*apiv1.Switch]) *cobra.Command {
	return &cobra.Command{
		Use:   "port up|down SWITCH PORT",
		Short: "Bring a port up or shut it down; it stays so until the next port command",
		Example: `  metalctl switch port down leaf01 Ethernet4
  metalctl switch port up leaf01 Ethernet4`,
		Args: cobra.ExactArgs(3),
		RunE: func(cmd *cobra.Command, args []string) error {
			var up bool
			switch args[0] {
			case "up":
				up = true
			case "down":
			default:
				return fmt.Errorf("%q: want up or down", args[0])
			}
			p, err := a.printer("")
			if err != nil {
				return err
			}
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				resp, err := apiv1.NewSwitchServiceClient(cc).SetPort(ctx, &apiv1.SwitchServiceSetPortRequest{Id: args[1], Port: args[2], Up: up})
				if err != nil {
					return err
				}
				return printOne(p, r.cols, resp.GetSwitch())
			})
		},
	}
}

func (a *app) switchConnectedCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "connected-machines SWITCH",
		Short: "The machines on the switch's ports, as LLDP sees them",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.printer("")
			if err != nil {
				return err
			}
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				resp, err := apiv1.NewSwitchServiceClient(cc).Get(ctx, &apiv1.SwitchServiceGetRequest{Id: args[0]})
				if err != nil {
					return err
				}
				var ports []*apiv1.SwitchPort
				for _, port := range resp.GetSwitch().GetPorts() {
					if port.GetMachineId() != "" {
						ports = append(ports, port)
					}
				}
				return printList(p, switchPortColumns(), ports)
			})
		},
	}
}

func (a *app) switchReplaceCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "replace SWITCH",
		Short: "Replace a broken switch: a new credential for the new one, which takes over its configuration",
		Long: `Replace a broken switch with a new one of the same model and cabling.

The switch's agent gets a new credential, printed once: the broken switch's
credential stops working (its stream is closed). Start metal-core on the new
switch with the same --name and this credential: it gets the switch's
configuration as central keeps it — ordinal, ASN and loopback, ports, VRFs,
shut ports — and converges to it; nothing has to be set up again.`,
		Example: `  metalctl switch replace leaf01`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.printer("")
			if err != nil {
				return err
			}
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				sw, err := apiv1.NewSwitchServiceClient(cc).Get(ctx, &apiv1.SwitchServiceGetRequest{Id: args[0]})
				if err != nil {
					return err
				}
				resp, err := apiv1.NewAgentServiceClient(cc).Enroll(ctx, &apiv1.AgentServiceEnrollRequest{
					Kind: agentv1.Kind_KIND_SWITCH, Identity: sw.GetSwitch().GetId(), PartitionId: sw.GetSwitch().GetPartitionId()})
				if err != nil {
					return err
				}
				return printWithSecret(p, a.agentResource().cols, resp.GetAgent(), resp, resp.GetSecret(), "the new switch's credential (metal-core --token-file)")
			})
		},
	}
}
