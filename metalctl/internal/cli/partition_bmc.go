package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// partitionBMCCols show a partition's BMC settings; the password never
// comes back from central, only whether one is set.
var partitionBMCCols = []column[*apiv1.PartitionBMC]{
	{header: "PARTITION", value: (*apiv1.PartitionBMC).GetPartitionId},
	{header: "USER", value: (*apiv1.PartitionBMC).GetUser},
	{header: "PASSWORD", value: func(s *apiv1.PartitionBMC) string {
		if s.GetPasswordSet() {
			return "set"
		}
		return "none"
	}},
	{header: "STATIC BMCS", value: func(s *apiv1.PartitionBMC) string {
		var out []string
		for _, e := range s.GetStaticBmcs() {
			a := e.GetAddress()
			if e.GetIpmi() {
				a += " (ipmi)"
			}
			out = append(out, a)
		}
		return strings.Join(out, ",")
	}},
	{header: "LEASE CIDRS", value: func(s *apiv1.PartitionBMC) string { return strings.Join(s.GetLeaseCidrs(), ",") }},
	{header: "POLL", value: func(s *apiv1.PartitionBMC) string {
		if s.GetPollIntervalSeconds() == 0 {
			return "default"
		}
		return (time.Duration(s.GetPollIntervalSeconds()) * time.Second).String()
	}},
	{header: "STUCK CYCLES", value: func(s *apiv1.PartitionBMC) string {
		if s.GetStuckCycleDisabled() {
			return "off"
		}
		return fmt.Sprintf("up to %d", s.GetStuckMaxCycles())
	}},
}

// newPartitionBMCCommand is "partition bmc show|set": how the partition's
// metal-bmc reaches its BMCs (docs/bmc.md).
func (a *app) newPartitionBMCCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "bmc", Short: "Show or set the BMC credentials, static BMCs, lease prefixes and stuck-machine cycles of a partition (admin)"}
	show := &cobra.Command{
		Use:   "show PARTITION",
		Short: "Show a partition's BMC settings (never the password)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return printCall(a, cmd, partitionBMCCols, func(ctx context.Context, cc grpc.ClientConnInterface) (*apiv1.PartitionBMC, error) {
				resp, err := apiv1.NewBMCServiceClient(cc).GetSettings(ctx, &apiv1.BMCServiceGetSettingsRequest{PartitionId: args[0]})
				return resp.GetSettings(), err
			})
		},
	}
	var (
		user, passwordFile string
		static, ipmi, cidr []string
		poll               time.Duration
		noStuckCycle       bool
		stuckMax           uint32
	)
	set := &cobra.Command{
		Use:   "set PARTITION",
		Short: "Replace a partition's BMC settings; the partition's metal-bmc gets them at once",
		Long: `Replace a partition's BMC settings; the partition's metal-bmc gets them at once.

The password is read from --password-file ("-" for stdin), never from a flag,
so that it stays out of shell histories and process lists; without it the
stored password is kept.`,
		Example: `  metalctl partition bmc set fra1 --user metal --password-file /run/secrets/bmc \
    --static 10.1.0.5 --static-ipmi 10.1.0.6:623 --lease-cidr 10.1.0.0/24 --poll-interval 60s --stuck-max-cycles 5`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			in := &apiv1.PartitionBMC{PartitionId: args[0], User: user, LeaseCidrs: cidr}
			if poll < 0 || poll%time.Second != 0 {
				return errors.New("--poll-interval: whole seconds, e.g. 60s")
			}
			in.PollIntervalSeconds = uint32(poll / time.Second)
			in.StuckCycleDisabled, in.StuckMaxCycles = noStuckCycle, stuckMax
			for _, s := range static {
				in.StaticBmcs = append(in.StaticBmcs, &apiv1.PartitionBMCEndpoint{Address: s})
			}
			for _, s := range ipmi {
				in.StaticBmcs = append(in.StaticBmcs, &apiv1.PartitionBMCEndpoint{Address: s, Ipmi: true})
			}
			if passwordFile != "" {
				var (
					b   []byte
					err error
				)
				if passwordFile == "-" {
					b, err = readAllLimited(cmd.InOrStdin())
				} else {
					b, err = os.ReadFile(passwordFile)
				}
				if err != nil {
					return fmt.Errorf("--password-file: %w", err)
				}
				in.Password = strings.TrimRight(string(b), "\r\n")
				if in.Password == "" {
					return errors.New("--password-file: empty")
				}
			}
			return printCall(a, cmd, partitionBMCCols, func(ctx context.Context, cc grpc.ClientConnInterface) (*apiv1.PartitionBMC, error) {
				resp, err := apiv1.NewBMCServiceClient(cc).SetSettings(ctx, &apiv1.BMCServiceSetSettingsRequest{Settings: in})
				return resp.GetSettings(), err
			})
		},
	}
	f := set.Flags()
	f.StringVar(&user, "user", "", "BMC user")
	f.StringVar(&passwordFile, "password-file", "", `file holding the BMC password ("-": stdin); omitted: keep the stored one`)
	f.StringArrayVar(&static, "static", nil, "a Redfish BMC at a fixed address (host, host:port, https://host:port); repeatable")
	f.StringArrayVar(&ipmi, "static-ipmi", nil, "an IPMI BMC at a fixed address (host or host:port); repeatable")
	f.StringArrayVar(&cidr, "lease-cidr", nil, "a prefix of the BMC network: which DHCP leases are BMCs; repeatable (none: every lease)")
	f.DurationVar(&poll, "poll-interval", 0, "how often metal-bmc reads each BMC (1s-1h; 0: its default)")
	f.BoolVar(&noStuckCycle, "no-stuck-cycle", false, "do not power-cycle machines stuck past their state's timeout (default: cycle them)")
	f.Uint32Var(&stuckMax, "stuck-max-cycles", 0, "power cycles per stuck episode before central gives up and shows stuck-cycles-exhausted (1-100; 0: 3)")
	cmd.AddCommand(show, set)
	return cmd
}

// maxPasswordInput bounds what is read as a password: central refuses
// more than 256 bytes anyway.
const maxPasswordInput = 4096

func readAllLimited(r io.Reader) ([]byte, error) {
	return io.ReadAll(io.LimitReader(r, maxPasswordInput))
}
