package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Issue ids central reports (MachineIssue.id) that the CLI treats specially.
const (
	issueCrashLoop = "crash-loop"
	// These repeat the liveliness, which the status column shows anyway.
	issueDead              = "dead"
	issueLivelinessUnknown = "liveliness-unknown"
)

// machineStatus is one cell that says whether a machine needs attention:
// liveliness, the last provisioning event with its age (a "Waiting 3h" that
// should have moved on is visible at a glance) and the issue flags, e.g.
// "alive, Installing 2m" or "dead, Crashed 5m [crash-loop]".
func (a *app) machineStatus(m *apiv1.Machine) string {
	var parts []string
	if l := enumShort(m.GetLiveliness()); l != "" {
		parts = append(parts, l)
	}
	if ev := m.GetLastEvent(); ev != "" {
		if age := formatAge(a.streams.now(), m.GetLastEventAt()); age != "" {
			ev += " " + age
		}
		parts = append(parts, ev)
	}
	s := strings.Join(parts, ", ")
	var flags []string
	for _, is := range m.GetIssues() {
		if id := is.GetId(); id != issueDead && id != issueLivelinessUnknown && id != "" {
			flags = append(flags, id)
		}
	}
	if len(flags) > 0 {
		s = strings.TrimSpace(s + " [" + strings.Join(flags, " ") + "]")
	}
	return s
}

func (a *app) machineResource() resource[*apiv1.Machine] {
	client := apiv1.NewMachineServiceClient
	return resource[*apiv1.Machine]{
		kind: "machine",
		cols: []column[*apiv1.Machine]{
			{header: "ID", value: (*apiv1.Machine).GetId},
			{header: "PARTITION", value: (*apiv1.Machine).GetPartitionId},
			{header: "SIZE", value: (*apiv1.Machine).GetSizeId},
			{header: "RACK", value: (*apiv1.Machine).GetRack},
			// Not STATE: the API's "available" next to an allocated machine
			// read as free. It says whether the machine is locked or reserved.
			{header: "LOCK", value: func(m *apiv1.Machine) string { return enumShort(m.GetState()) }},
			{header: "PROVISIONING", value: func(m *apiv1.Machine) string { return enumShort(m.GetProvisioning()) }},
			{header: "STATUS", value: a.machineStatus},
			{header: "HOSTNAME", value: func(m *apiv1.Machine) string { return m.GetAllocation().GetHostname() }},
			{header: "PROJECT", value: func(m *apiv1.Machine) string { return m.GetAllocation().GetProjectId() }},
			{header: "IMAGE", wide: true, value: func(m *apiv1.Machine) string { return m.GetAllocation().GetImageId() }},
			{header: "IPS", wide: true, value: func(m *apiv1.Machine) string { return strings.Join(m.GetAllocation().GetIps(), ",") }},
		},
		newObj: func() *apiv1.Machine { return &apiv1.Machine{} },
		id:     (*apiv1.Machine).GetId,
		get: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Machine, error) {
			resp, err := client(cc).Get(ctx, &apiv1.MachineServiceGetRequest{Id: id})
			return resp.GetMachine(), err
		},
		remove: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Machine, error) {
			resp, err := client(cc).Delete(ctx, &apiv1.MachineServiceDeleteRequest{Id: id})
			return resp.GetMachine(), err
		},
	}
}

func (a *app) newMachineCommand() *cobra.Command {
	r := a.machineResource()
	cmd := &cobra.Command{
		Use:     "machine",
		Aliases: []string{"machines", "m"},
		Short:   "Allocate, free, reinstall and inspect machines",
		Long: `Allocate, free, reinstall and inspect machines.

A machine registers itself when it PXE-boots into the installer and waits in
its partition's pool. "machine create" allocates a waiting machine of a size
for a project and installs an image on it; "machine delete" frees it again.`,
	}
	var partition, project, size string
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.Machine, error) {
		resp, err := apiv1.NewMachineServiceClient(cc).List(ctx, &apiv1.MachineServiceListRequest{PartitionId: partition, ProjectId: project, SizeId: size})
		return resp.GetMachines(), err
	})
	list.Long = `List machines.

STATUS shows the liveliness, the last provisioning event with its age and, in
brackets, the issues central found (crash-loop, stuck, no-size, ...).`
	list.Flags().StringVar(&partition, "partition", "", "only machines of this partition")
	list.Flags().StringVar(&project, "project", "", "only machines allocated to this project")
	list.Flags().StringVar(&size, "size", "", "only machines of this size")

	del := deleteCommand(a, r, "delete", "rm", "free")
	del.Short = "Free a machine: its ephemeral IPs are released, it reboots into the installer, wipes its disks and waits again"

	cmd.AddCommand(list, describeCommand(a, r), a.machineCreateCommand(r), del, a.machineReinstallCommand(r),
		a.machineLogsCommand(), a.machineIssuesCommand())
	cmd.AddCommand(a.machineStateCommands(r)...)
	cmd.AddCommand(a.machineBMCCommands(r)...)
	cmd.AddCommand(a.machineConsoleCommand())
	return cmd
}

func (a *app) machineReinstallCommand(r resource[*apiv1.Machine]) *cobra.Command {
	var image string
	cmd := &cobra.Command{
		Use:   "reinstall ID",
		Short: "Install an image again, keeping the allocation; only the primary disk is wiped",
		Example: `  metalctl machine reinstall 4c4c4544-0042-3510-8052-b4c04f4d3232
  metalctl machine reinstall 4c4c4544-0042-3510-8052-b4c04f4d3232 --image ubuntu-24.04`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return printCall(a, cmd, r.cols, func(ctx context.Context, cc grpc.ClientConnInterface) (*apiv1.Machine, error) {
				resp, err := apiv1.NewMachineServiceClient(cc).Reinstall(ctx, &apiv1.MachineServiceReinstallRequest{Id: args[0], ImageId: image})
				return resp.GetMachine(), err
			})
		},
	}
	cmd.Flags().StringVar(&image, "image", "", "image id (default: the current image)")
	return cmd
}

// machineStateCommands are lock, unlock, reserve and unreserve: one
// SetState call each. Releasing needs no reason, locking and reserving do,
// so that the next operator knows why.
func (a *app) machineStateCommands(r resource[*apiv1.Machine]) []*cobra.Command {
	mk := func(use, short string, state apiv1.MachineState, needsReason bool) *cobra.Command {
		var reason string
		cmd := &cobra.Command{
			Use:   use + " ID",
			Short: short,
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				if needsReason && strings.TrimSpace(reason) == "" {
					return errors.New("--reason is required")
				}
				return printCall(a, cmd, r.cols, func(ctx context.Context, cc grpc.ClientConnInterface) (*apiv1.Machine, error) {
					resp, err := apiv1.NewMachineServiceClient(cc).SetState(ctx, &apiv1.MachineServiceSetStateRequest{Id: args[0], State: state, Reason: reason})
					return resp.GetMachine(), err
				})
			},
		}
		if needsReason {
			cmd.Use += " --reason TEXT"
			cmd.Flags().StringVar(&reason, "reason", "", "why (required; shown to other operators)")
		}
		return cmd
	}
	return []*cobra.Command{
		mk("lock", "Lock a machine so that it is not allocated, freed or reinstalled until unlocked", apiv1.MachineState_MACHINE_STATE_LOCKED, true),
		mk("unlock", "Make a locked machine available again", apiv1.MachineState_MACHINE_STATE_AVAILABLE, false),
		mk("reserve", "Reserve a machine: it is only allocated when asked for by id", apiv1.MachineState_MACHINE_STATE_RESERVED, true),
		mk("unreserve", "Make a reserved machine available again", apiv1.MachineState_MACHINE_STATE_AVAILABLE, false),
		a.machineResolveMacCommand(r),
	}
}

// machineResolveMacCommand settles a duplicate-mac issue.
func (a *app) machineResolveMacCommand(r resource[*apiv1.Machine]) *cobra.Command {
	var owner string
	cmd := &cobra.Command{
		Use:   "resolve-mac MAC --owner ID",
		Short: "Settle a duplicate MAC: the NIC belongs to the machine given by --owner from now on",
		Long: `Settle a duplicate MAC (issue duplicate-mac).

A NIC that a machine reports while it belongs to another one does not move by
itself: whoever owns a MAC decides what its PXE boot does. Check which machine
really has the NIC (its BMC, the switch port it is cabled to), then give it
to that machine; --owner is its current owner or a machine that reported it.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if owner == "" {
				return errors.New("--owner is required")
			}
			return printCall(a, cmd, r.cols, func(ctx context.Context, cc grpc.ClientConnInterface) (*apiv1.Machine, error) {
				resp, err := apiv1.NewMachineServiceClient(cc).ResolveMac(ctx, &apiv1.MachineServiceResolveMacRequest{Mac: args[0], OwnerId: owner})
				return resp.GetMachine(), err
			})
		},
	}
	cmd.Flags().StringVar(&owner, "owner", "", "the machine the MAC belongs to (required)")
	return cmd
}

func issueColumns() []column[*apiv1.MachineIssue] {
	return []column[*apiv1.MachineIssue]{
		{header: "MACHINE", value: (*apiv1.MachineIssue).GetMachineId},
		{header: "ISSUE", value: (*apiv1.MachineIssue).GetId},
		{header: "DESCRIPTION", value: (*apiv1.MachineIssue).GetDescription},
	}
}

func (a *app) machineIssuesCommand() *cobra.Command {
	var partition string
	cmd := &cobra.Command{
		Use:   "issues",
		Short: "List machines that need an operator: crash loops, stuck provisioning, unknown sizes, dead machines",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := a.printer("")
			if err != nil {
				return err
			}
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				resp, err := apiv1.NewMachineServiceClient(cc).Issues(ctx, &apiv1.MachineServiceIssuesRequest{PartitionId: partition})
				if err != nil {
					return err
				}
				return printList(p, issueColumns(), resp.GetIssues())
			})
		},
	}
	cmd.Flags().StringVar(&partition, "partition", "", "only machines of this partition")
	return cmd
}

// createFlags are the flags of machine create that are not request fields
// as they are.
type createFlags struct {
	sshKeys  []string
	userData string
	labels   []string
	wait     bool
	timeout  time.Duration
}

func (a *app) machineCreateCommand(r resource[*apiv1.Machine]) *cobra.Command {
	req := &apiv1.MachineServiceCreateRequest{}
	var cf createFlags
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Allocate a machine for a project and install an image on it",
		Long: `Allocate a machine for a project and install an image on it.

Central picks a waiting, alive machine of the size in the partition (or the
one given with --id) and allocates its IPs in the same transaction. The
machine then installs the image, boots it and phones home.

--sshpublickey and --userdata take the value itself or @FILE to read it from
a file; a key file may hold several keys, one per line.

With --wait, metalctl follows the provisioning events until the machine
phones home (exit 0) or crashes, or --wait-timeout passes (exit 1).
The global --timeout still bounds each API call. On a terminal
a progress bar shows the steps Waiting, Installing, Booting New Kernel and
Phoned Home. With -o json or yaml the events go to stderr and the final
machine to stdout.`,
		Example: `  metalctl machine create --project $P --partition lab --size s1 --image debian-12 \
      --networks $N --hostname web-0 --sshpublickey @~/.ssh/id_ed25519.pub --wait
  metalctl machine create --id 4c4c4544-0042-3510-8052-b4c04f4d3232 --project $P --partition lab \
      --image debian-12 --networks $N,internet --hostname db-0`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.completeCreateRequest(req, &cf); err != nil {
				return err
			}
			if !cf.wait {
				return printCall(a, cmd, r.cols, func(ctx context.Context, cc grpc.ClientConnInterface) (*apiv1.Machine, error) {
					resp, err := apiv1.NewMachineServiceClient(cc).Create(ctx, req)
					return resp.GetMachine(), err
				})
			}
			return a.createAndWait(cmd, r, req, cf.timeout)
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.ProjectId, "project", "", "project id (required)")
	f.StringVar(&req.PartitionId, "partition", "", "partition id (required)")
	f.StringVar(&req.SizeId, "size", "", "size id (required unless --id is given)")
	f.StringVar(&req.ImageId, "image", "", "image id (required)")
	f.StringSliceVar(&req.Networks, "networks", nil, "network ids the machine joins (repeatable or comma separated)")
	f.StringVar(&req.Hostname, "hostname", "", "hostname of the installed system")
	f.StringArrayVar(&cf.sshKeys, "sshpublickey", nil, "SSH public key or @FILE (repeatable)")
	f.StringVar(&cf.userData, "userdata", "", "user data (cloud-init) or @FILE")
	f.StringVar(&req.Id, "id", "", "allocate this machine instead of any waiting one")
	f.StringVar(&req.FilesystemLayoutId, "filesystem-layout", "", "filesystem layout id (default: the layout matching size and image)")
	f.StringArrayVar(&cf.labels, "label", nil, "label key=value (repeatable)")
	f.BoolVar(&cf.wait, "wait", false, "follow the provisioning until the machine phones home")
	// Not --timeout: that is the global timeout of each API call, which
	// also bounds the create call itself.
	f.DurationVar(&cf.timeout, "wait-timeout", defaultWaitTimeout, "how long --wait waits for the machine to phone home")
	return cmd
}

// completeCreateRequest checks the flags and reads the @FILE values, before
// anything reaches central.
func (a *app) completeCreateRequest(req *apiv1.MachineServiceCreateRequest, cf *createFlags) error {
	var missing []string
	for _, f := range []struct{ name, value string }{
		{"--project", req.GetProjectId()},
		{"--partition", req.GetPartitionId()},
		{"--image", req.GetImageId()},
	} {
		if strings.TrimSpace(f.value) == "" {
			missing = append(missing, f.name)
		}
	}
	if req.GetSizeId() == "" && req.GetId() == "" {
		missing = append(missing, "--size (or --id)")
	}
	switch len(missing) {
	case 0:
	case 1:
		return fmt.Errorf("%s is required", missing[0])
	default:
		return fmt.Errorf("%s and %s are required", strings.Join(missing[:len(missing)-1], ", "), missing[len(missing)-1])
	}
	if cf.timeout <= 0 {
		return errors.New("--wait-timeout must be positive")
	}
	var nets []string
	for _, n := range req.GetNetworks() {
		if n = strings.TrimSpace(n); n != "" {
			nets = append(nets, n)
		}
	}
	req.Networks = nets
	keys, err := readSSHKeys(cf.sshKeys)
	if err != nil {
		return err
	}
	req.SshPublicKeys = keys
	if req.UserData, err = readAtFile("--userdata", cf.userData); err != nil {
		return err
	}
	if req.Labels, err = parseLabels(cf.labels); err != nil {
		return err
	}
	return nil
}

// readAtFile returns v, or the content of the file when v is @FILE.
func readAtFile(flag, v string) (string, error) {
	name, ok := strings.CutPrefix(v, "@")
	if !ok {
		return v, nil
	}
	if name == "" {
		return "", fmt.Errorf("%s @: want @FILE", flag)
	}
	b, err := os.ReadFile(expandHome(name))
	if err != nil {
		return "", fmt.Errorf("%s: %w", flag, err)
	}
	return string(b), nil
}

// expandHome expands a leading "~/", which the shell leaves alone after "@".
func expandHome(p string) string {
	rest, ok := strings.CutPrefix(p, "~/")
	if !ok {
		return p
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return p
	}
	return home + "/" + rest
}

// readSSHKeys takes keys and @FILEs; a file (authorized_keys style) gives
// one key per non-empty, non-comment line.
func readSSHKeys(values []string) ([]string, error) {
	var keys []string
	for _, v := range values {
		if !strings.HasPrefix(v, "@") {
			if v = strings.TrimSpace(v); v == "" {
				return nil, errors.New("--sshpublickey: empty key")
			}
			keys = append(keys, v)
			continue
		}
		content, err := readAtFile("--sshpublickey", v)
		if err != nil {
			return nil, err
		}
		n := len(keys)
		for line := range strings.Lines(content) {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				keys = append(keys, line)
			}
		}
		if len(keys) == n {
			return nil, fmt.Errorf("--sshpublickey %s: no key in the file", v)
		}
	}
	return keys, nil
}
