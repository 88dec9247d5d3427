// Package cli implements metalctl, the command line client of metal-central.
//
// Everything the commands need from the process (standard streams, the
// environment, the clock) comes in through Streams, so tests run commands
// in-process and in parallel without touching the real environment.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
)

// Streams is the outside world as the commands see it.
type Streams struct {
	In  io.Reader
	Out io.Writer
	Err io.Writer
	// LookupEnv is os.LookupEnv in main; tests pass a map lookup.
	LookupEnv func(key string) (string, bool)
	// Now is the clock for relative times (AGE columns); nil means time.Now.
	Now func() time.Time
}

// env returns the value of an environment variable; an empty value counts as
// unset so that `METALCTL_API_URL= metalctl ...` falls back to the context.
func (s Streams) env(key string) string {
	if s.LookupEnv == nil {
		return ""
	}
	v, _ := s.LookupEnv(key)
	return v
}

func (s Streams) now() time.Time {
	if s.Now == nil {
		return time.Now()
	}
	return s.Now()
}

// Environment variables metalctl reads.
const (
	envAPIURL   = "METALCTL_API_URL"
	envAPIToken = "METALCTL_API_TOKEN"
	envCAFile   = "METALCTL_CA_FILE"
	envContext  = "METALCTL_CONTEXT"
	envConfig   = "METALCTL_CONFIG"
)

// globalFlags are the persistent flags of the root command.
type globalFlags struct {
	apiURL    string
	apiToken  string
	caFile    string
	insecure  bool
	context   string
	output    string
	template  string
	noHeaders bool
	timeout   time.Duration
}

// app is the state shared by all commands of one root command; the commands
// close over it instead of using package-level variables.
type app struct {
	streams Streams
	flags   globalFlags
	root    *cobra.Command
}

// NewRootCommand builds the metalctl command tree.
func NewRootCommand(streams Streams) *cobra.Command {
	a := &app{streams: streams}
	root := &cobra.Command{
		Use:   "metalctl",
		Short: "metalctl manages a metalfleet installation through metal-central",
		// Run prints errors itself so gRPC errors get their own format and
		// usage is not dumped for errors that are not about usage.
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	a.root = root
	if streams.In != nil {
		root.SetIn(streams.In)
	}
	if streams.Out != nil {
		root.SetOut(streams.Out)
	}
	if streams.Err != nil {
		root.SetErr(streams.Err)
	}

	pf := root.PersistentFlags()
	pf.StringVar(&a.flags.apiURL, "api-url", "", "metal-central endpoint as host:port (env "+envAPIURL+")")
	pf.StringVar(&a.flags.apiToken, "api-token", "", "bearer token (env "+envAPIToken+")")
	pf.StringVar(&a.flags.caFile, "ca-file", "", "PEM file with the CA that signed the server certificate; system roots if empty (env "+envCAFile+")")
	pf.BoolVar(&a.flags.insecure, "insecure-plaintext", false, "connect without TLS (local experiments only)")
	pf.StringVar(&a.flags.context, "context", "", "context of the config file to use instead of the current one (env "+envContext+")")
	pf.StringVarP(&a.flags.output, "output", "o", "table", "output format: table, wide, yaml, json or template")
	pf.StringVar(&a.flags.template, "template", "", "Go text/template applied to the JSON form of each object (implies -o template)")
	pf.BoolVar(&a.flags.noHeaders, "no-headers", false, "omit table headers")
	pf.DurationVar(&a.flags.timeout, "timeout", 30*time.Second, "timeout of each command's API calls")

	root.AddCommand(
		a.newContextCommand(),
		a.newPartitionCommand(),
		a.newSizeCommand(),
		a.newSizeReservationCommand(),
		a.newImageCommand(),
		a.newFilesystemLayoutCommand(),
		a.newTenantCommand(),
		a.newProjectCommand(),
		a.newNetworkCommand(),
		a.newIPCommand(),
		a.newTokenCommand(),
		a.newMachineCommand(),
		a.newSwitchCommand(),
		a.newAgentCommand(),
		a.newBootTokenCommand(),
		a.newAuditCommand(),
	)
	return root
}

// Run executes metalctl with args and returns the process exit status.
func Run(ctx context.Context, streams Streams, args []string) int {
	root := NewRootCommand(streams)
	root.SetArgs(args)
	if err := root.ExecuteContext(ctx); err != nil {
		errOut := streams.Err
		if errOut == nil {
			errOut = io.Discard
		}
		fmt.Fprintf(errOut, "Error: %s\n", describeError(err))
		return 1
	}
	return 0
}

// describeError renders gRPC errors as "<code>: <message>" plus the field
// violations of a google.rpc.BadRequest detail, because the default
// "rpc error: code = ... desc = ..." is noise for a CLI user.
func describeError(err error) string {
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) || se.GRPCStatus() == nil {
		return err.Error()
	}
	st := se.GRPCStatus()
	msg := st.Code().String() + ": " + st.Message()
	// Keep context that was added by wrapping, e.g. which apply document failed.
	if inner, ok := se.(error); ok {
		if full := err.Error(); full != inner.Error() && strings.HasSuffix(full, inner.Error()) {
			msg = strings.TrimSuffix(full, inner.Error()) + msg
		}
	}
	var b strings.Builder
	b.WriteString(msg)
	for _, d := range st.Details() {
		br, ok := d.(*errdetails.BadRequest)
		if !ok {
			continue
		}
		for _, v := range br.GetFieldViolations() {
			line := v.GetField() + ": " + v.GetDescription()
			// Servers often put the only violation into the message as well.
			if line == st.Message() {
				continue
			}
			b.WriteString("\n  " + line)
		}
	}
	return b.String()
}
