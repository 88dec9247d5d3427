package cli

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

const (
	// maxAgentEvents is the most events AgentService.Get returns.
	maxAgentEvents = 1000
)

// parseKind reads the CLI word of an agent kind: switch, bmc, pixie,
// installer or phonehome.
func parseKind(flag, s string) (agentv1.Kind, error) {
	n, err := parseEnum(flag, s, agentv1.Kind(0).Descriptor())
	return agentv1.Kind(n), err
}

func kindChoices() string {
	return strings.Join(enumChoices(agentv1.Kind(0).Descriptor()), ", ")
}

// formatLastContact is the age of the last contact, "never" for an agent
// central has not heard from yet.
func formatLastContact(a *app, ag *apiv1.Agent) string {
	if ag.GetLastContact() == nil {
		return "never"
	}
	return formatAge(a.streams.now(), ag.GetLastContact()) + " ago"
}

func (a *app) agentResource() resource[*apiv1.Agent] {
	client := apiv1.NewAgentServiceClient
	return resource[*apiv1.Agent]{
		kind: "agent",
		cols: []column[*apiv1.Agent]{
			{header: "ID", value: (*apiv1.Agent).GetId},
			{header: "KIND", value: func(ag *apiv1.Agent) string { return enumShort(ag.GetKind()) }},
			{header: "IDENTITY", value: (*apiv1.Agent).GetIdentity},
			{header: "PARTITION", value: (*apiv1.Agent).GetPartitionId},
			{header: "REPLICA", value: (*apiv1.Agent).GetReplica},
			// Revisions show 0 too: desired 1, applied 0 is an agent that
			// has not applied anything yet.
			{header: "DESIRED", value: func(ag *apiv1.Agent) string { return strconv.FormatUint(ag.GetDesiredRevision(), 10) }},
			{header: "APPLIED", value: func(ag *apiv1.Agent) string { return strconv.FormatUint(ag.GetAppliedRevision(), 10) }},
			{header: "LAST-CONTACT", value: func(ag *apiv1.Agent) string { return formatLastContact(a, ag) }},
			{header: "LIVELINESS", value: func(ag *apiv1.Agent) string { return enumShort(ag.GetLiveliness()) }},
			{header: "HEALTH", value: func(ag *apiv1.Agent) string { return enumShort(ag.GetHealth()) }},
			{header: "HOSTNAME", wide: true, value: func(ag *apiv1.Agent) string { return ag.GetFacts().GetHostname() }},
			{header: "VERSION", wide: true, value: func(ag *apiv1.Agent) string { return ag.GetFacts().GetAgentVersion() }},
			{header: "MESSAGE", wide: true, value: (*apiv1.Agent).GetMessage},
		},
		newObj: func() *apiv1.Agent { return &apiv1.Agent{} },
		id:     (*apiv1.Agent).GetId,
		// No get: describe is agentDescribeCommand, which shows events too.
		remove: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Agent, error) {
			resp, err := client(cc).Delete(ctx, &apiv1.AgentServiceDeleteRequest{Id: id})
			return resp.GetAgent(), err
		},
	}
}

func agentEventColumns() []column[*apiv1.AgentEvent] {
	return []column[*apiv1.AgentEvent]{
		{header: "TIME", value: func(e *apiv1.AgentEvent) string { return formatTime(e.GetTime()) }},
		{header: "TYPE", value: (*apiv1.AgentEvent).GetType},
		{header: "MESSAGE", value: (*apiv1.AgentEvent).GetMessage},
	}
}

// printWithSecret prints what a call that mints a secret returned. The
// table formats show the object's row and then the secret, labelled and
// with the warning that it is shown once; json, yaml and template print the
// whole response, so the secret is its "secret" field.
func printWithSecret[T proto.Message](p *printer, cols []column[T], obj T, resp proto.Message, secret, what string) error {
	if !p.isTable() {
		return printOne(p, nil, resp)
	}
	if err := printOne(p, cols, obj); err != nil {
		return err
	}
	_, err := fmt.Fprintf(p.w, "\nsecret: %s\nThis is %s. It is shown only this once: central stores only its hash.\n", secret, what)
	return err
}

func (a *app) newAgentCommand() *cobra.Command {
	r := a.agentResource()
	cmd := &cobra.Command{
		Use:     "agent",
		Aliases: []string{"agents"},
		Short:   "Show and manage the agent fleet (switches, BMCs, PXE services, installers, phone-home)",
		Long: `Show and manage the agent fleet.

An agent is named by its id or by "<kind>/<identity>", e.g. switch/leaf01.
Kinds: ` + kindChoices() + `.`,
	}

	var (
		kindFlag, partition string
		kind                agentv1.Kind
	)
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.Agent, error) {
		resp, err := apiv1.NewAgentServiceClient(cc).List(ctx, &apiv1.AgentServiceListRequest{Kind: kind, PartitionId: partition})
		return resp.GetAgents(), err
	})
	// The kind is checked before connecting, so a typo never reaches central.
	list.PreRunE = func(*cobra.Command, []string) error {
		if kindFlag == "" {
			return nil
		}
		var err error
		kind, err = parseKind("--kind", kindFlag)
		return err
	}
	list.Flags().StringVar(&kindFlag, "kind", "", "only agents of this kind: "+kindChoices())
	list.Flags().StringVar(&partition, "partition", "", "only agents of this partition")

	cmd.AddCommand(list, a.agentDescribeCommand(r), a.agentEnrollCommand(r), a.agentConfigureCommand(r), deleteCommand(a, r, "delete", "rm"))
	return cmd
}

// agentDescribeCommand is describe with the agent's event log: YAML and JSON
// show the API's answer, {agent: ..., events: [...]}; the table formats show
// the agent's row and then its events.
func (a *app) agentDescribeCommand(r resource[*apiv1.Agent]) *cobra.Command {
	var events uint32
	cmd := &cobra.Command{
		Use:     "describe ID|KIND/IDENTITY",
		Aliases: []string{"get"},
		Short:   "Show one agent with its newest events (YAML unless -o is given)",
		Example: `  metalctl agent describe switch/leaf01
  metalctl agent describe 7c1e9a40-5f2b-4c8e-9d3a-0b6f1e2d3c4a --events 100 -o json`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if events > maxAgentEvents {
				return fmt.Errorf("--events %d: at most %d", events, maxAgentEvents)
			}
			p, err := a.printer(formatYAML)
			if err != nil {
				return err
			}
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				resp, err := apiv1.NewAgentServiceClient(cc).Get(ctx, &apiv1.AgentServiceGetRequest{Id: args[0], Events: events})
				if err != nil {
					return err
				}
				if !p.isTable() {
					return printOne(p, nil, resp)
				}
				if err := printOne(p, r.cols, resp.GetAgent()); err != nil {
					return err
				}
				if len(resp.GetEvents()) == 0 {
					return nil
				}
				if _, err := fmt.Fprintln(p.w); err != nil {
					return fmt.Errorf("write output: %w", err)
				}
				return printList(p, agentEventColumns(), resp.GetEvents())
			})
		},
	}
	cmd.Flags().Uint32Var(&events, "events", 0, fmt.Sprintf("how many of the newest events to show (server default 20, at most %d)", maxAgentEvents))
	return cmd
}

func (a *app) agentEnrollCommand(r resource[*apiv1.Agent]) *cobra.Command {
	var kind string
	req := &apiv1.AgentServiceEnrollRequest{}
	cmd := &cobra.Command{
		Use:   "enroll",
		Short: "Enroll a switch, BMC or PXE agent; prints its credential, which is shown only once",
		Long: `Enroll a long-lived agent (switch, bmc or pixie) and print its credential.

The credential is shown only once; central stores only its hash. Enrolling an
existing agent again replaces its credential and closes its stream. Installers
join with boot tokens (metalctl boot-token create) and phone-home agents get
their credentials with their machine's allocation, so neither is enrolled.

With -o json, yaml or template the output is the whole answer, the credential
being its "secret" field.`,
		Example: `  metalctl agent enroll --kind switch --identity leaf01 --partition lab
  metalctl agent enroll --kind pixie --identity pixie-lab --partition lab -o template --template '{{.secret}}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if kind == "" || req.GetIdentity() == "" || req.GetPartitionId() == "" {
				return errors.New("--kind, --identity and --partition are required")
			}
			k, err := parseKind("--kind", kind)
			if err != nil {
				return err
			}
			switch k {
			case agentv1.Kind_KIND_SWITCH, agentv1.Kind_KIND_BMC, agentv1.Kind_KIND_PIXIE:
			default:
				return fmt.Errorf("--kind %q: want switch, bmc or pixie; installers join with boot tokens (metalctl boot-token create), phone-home agents with their machine's allocation", kind)
			}
			req.Kind = k
			p, err := a.printer("")
			if err != nil {
				return err
			}
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				resp, err := apiv1.NewAgentServiceClient(cc).Enroll(ctx, req)
				if err != nil {
					return err
				}
				return printWithSecret(p, r.cols, resp.GetAgent(), resp, resp.GetSecret(), "the agent's credential")
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&kind, "kind", "", "switch, bmc or pixie")
	f.StringVar(&req.Identity, "identity", "", "name of the agent within its kind, e.g. the switch name")
	f.StringVar(&req.PartitionId, "partition", "", "partition id")
	return cmd
}

// logLevels are the values AgentServiceConfigureRequest.log_level takes;
// empty gives the agent back its own default.
var logLevels = []string{"debug", "info", "warn", "error"}

func (a *app) agentConfigureCommand(r resource[*apiv1.Agent]) *cobra.Command {
	var (
		logLevel                                string
		labels                                  []string
		replaceLabels, clearLabels, reportFacts bool
	)
	cmd := &cobra.Command{
		Use:   "configure ID|KIND/IDENTITY",
		Short: "Change the settings every agent kind shares; central pushes them as a new desired revision",
		Long: `Change the settings every agent kind shares. A change becomes a new desired
revision that central pushes to the agent; settings whose flags are not given
stay as they are.

  --log-level L     debug, info, warn or error; --log-level "" gives the agent
                    back its own default. Only sent when the flag is given.
  --label k=v       REPLACES all operator labels of the agent with the labels
                    given (repeat the flag for several); implies --replace-labels.
  --clear-labels    removes all operator labels.
  --report-facts    asks the agent to collect and report its facts again.`,
		Example: `  metalctl agent configure switch/leaf01 --log-level debug
  metalctl agent configure switch/leaf01 --label rack=r01 --label role=leaf
  metalctl agent configure switch/leaf01 --clear-labels --report-facts`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &apiv1.AgentServiceConfigureRequest{Id: args[0], ReportFacts: reportFacts}
			if cmd.Flags().Changed("log-level") {
				l := strings.ToLower(strings.TrimSpace(logLevel))
				if l != "" && !slices.Contains(logLevels, l) {
					return fmt.Errorf("--log-level %q: want %s or \"\"", logLevel, strings.Join(logLevels, ", "))
				}
				req.LogLevel = &l
			}
			m, err := parseLabels(labels)
			if err != nil {
				return err
			}
			switch {
			case clearLabels && len(labels) > 0:
				return errors.New("--clear-labels and --label exclude each other")
			case clearLabels:
				req.ReplaceLabels = true
			case len(labels) > 0:
				req.ReplaceLabels, req.Labels = true, m
			case replaceLabels:
				return errors.New("--replace-labels needs the new labels as --label k=v; to remove all labels use --clear-labels")
			}
			if req.LogLevel == nil && !req.GetReplaceLabels() && !req.GetReportFacts() {
				return errors.New("nothing to configure: give --log-level, --label, --clear-labels or --report-facts")
			}
			return printCall(a, cmd, r.cols, func(ctx context.Context, cc grpc.ClientConnInterface) (*apiv1.Agent, error) {
				resp, err := apiv1.NewAgentServiceClient(cc).Configure(ctx, req)
				return resp.GetAgent(), err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&logLevel, "log-level", "", "debug, info, warn or error; \"\" for the agent's own default")
	f.StringArrayVar(&labels, "label", nil, "label key=value; replaces all labels with the given set (repeatable)")
	f.BoolVar(&replaceLabels, "replace-labels", false, "replace the labels with the --label set (implied by --label)")
	f.BoolVar(&clearLabels, "clear-labels", false, "remove all labels")
	f.BoolVar(&reportFacts, "report-facts", false, "ask the agent to report its facts again")
	return cmd
}
