// Package labcli is metal-lab's command line.
package labcli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/lab/internal/fleetsim"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// New returns the root command.
func New() *cobra.Command {
	root := &cobra.Command{Use: "metal-lab", Short: "Metalfleet on one Linux box", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(fleetCmd(), upCmd(), downCmd(), statusCmd(), e2eCmd(), serveCmd(), bmcCmd(), bmcChassisCmd(), execCmd())
	return root
}

func fleetCmd() *cobra.Command {
	var (
		cfg      fleetsim.Config
		kind     string
		jsonOut  string
		extraArg []string
		maxRatio float64
		minShare float64
	)
	cmd := &cobra.Command{
		Use:   "fleet",
		Short: "Run N simulated agents against a real metal-central and measure propagation, memory and restart",
		Long: `fleet starts metal-central (embedded PostgreSQL, TLS) as a child process,
enrols --agents agents through the public API, connects them all over real
gRPC streams from this process, changes their desired state --rate times a
second for --duration through the public API, and reports:

  - propagation latency p50/p99/max: central's commit time of a change until
    the agent has the document
  - central's RSS idle and with all streams, and the growth per stream
  - with --restart: the time until central serves again and until every agent
    holds a new stream and is at its newest revision, the return's ratio to
    the cold connect, and the agents' TLS handshakes (full, resumed).

It fails when an agent gave up, and, as a guard in CI, when the return took
more than --max-return-ratio times the cold connect or fewer than
--min-resumed of the returning handshakes resumed a session.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, ok := agentv1.Kind_value["KIND_"+strings.ToUpper(kind)]
			if !ok || k == 0 {
				return fmt.Errorf("--kind %q: want switch, bmc, pixie, installer or phonehome", kind)
			}
			cfg.Kind = agentv1.Kind(k)
			if cfg.CentralBin == "" {
				bin, err := findCentral()
				if err != nil {
					return err
				}
				cfg.CentralBin = bin
			}
			cfg.CentralArgs = extraArg
			cfg.Progress = cmd.ErrOrStderr()
			start := time.Now()
			res, err := fleetsim.Run(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			printResult(cmd.OutOrStdout(), cfg, res, time.Since(start))
			if jsonOut != "" {
				b, _ := json.MarshalIndent(struct {
					Config fleetsim.Config
					Result fleetsim.Result
					Cores  int
				}{cfg, res, runtime.NumCPU()}, "", "  ")
				if err := os.WriteFile(jsonOut, append(b, '\n'), 0o644); err != nil {
					return err
				}
			}
			return guard(res, cfg.Restart, maxRatio, minShare)
		},
	}
	f := cmd.Flags()
	f.IntVar(&cfg.Agents, "agents", 1000, "number of simulated agents")
	// bmc: without facts its reports carry no domain work, so the run
	// measures the agent protocol itself (a switch's every report now
	// runs the fabric, which ten thousand simulated switches are not).
	f.StringVar(&kind, "kind", "bmc", "agent kind")
	f.Float64Var(&cfg.Rate, "rate", 50, "desired state changes per second")
	f.DurationVar(&cfg.Duration, "duration", 20*time.Second, "how long to change desired state")
	f.BoolVar(&cfg.Restart, "restart", true, "restart central afterwards and time the fleet's return")
	f.DurationVar(&cfg.Settle, "settle", 0, "after the changes, wait this long and measure central's RSS again (steady state; the Go runtime forces a GC every 2m)")
	f.StringVar(&cfg.CentralBin, "central", "", "metal-central binary (default: bin/metal-central, then PATH)")
	f.StringVar(&cfg.WorkDir, "work-dir", "", "directory for central's data and log (default: a temporary one, removed)")
	f.StringArrayVar(&extraArg, "central-arg", nil, "extra metal-central flag, repeatable (e.g. --central-arg=--agent-heartbeat=30s)")
	f.StringVar(&jsonOut, "json", "", "also write the result as JSON to this file")
	f.StringArrayVar(&cfg.CentralEnv, "central-env", nil, "extra environment variable for metal-central, repeatable (e.g. --central-env=GOGC=50)")
	f.Float64Var(&maxRatio, "max-return-ratio", 0, "fail when the return after the restart takes more than this many times the cold connect (0: no check)")
	f.Float64Var(&minShare, "min-resumed", 0, "fail when less than this share of the returning agents' TLS handshakes resumed a session (0: no check)")
	return cmd
}

// guard fails a run whose fleet did not come back as it must.
func guard(r fleetsim.Result, restarted bool, maxRatio, minShare float64) error {
	if r.GaveUp > 0 {
		return fmt.Errorf("%d agents gave up", r.GaveUp)
	}
	if !restarted {
		return nil
	}
	if maxRatio > 0 && r.ReturnRatio() > maxRatio {
		return fmt.Errorf("the fleet came back in %s, %.2f times its cold connect of %s: more than --max-return-ratio %.2f",
			r.Return().Round(time.Millisecond), r.ReturnRatio(), r.Connect.Round(time.Millisecond), maxRatio)
	}
	if minShare > 0 && r.ResumedShare() < minShare {
		return fmt.Errorf("%.0f%% of the returning handshakes resumed a session (%d full, %d resumed): less than --min-resumed %.0f%%",
			100*r.ResumedShare(), r.ReturnTLS.Full, r.ReturnTLS.Resumed, 100*minShare)
	}
	return nil
}

func findCentral() (string, error) {
	if exe, err := os.Executable(); err == nil {
		if p := filepath.Join(filepath.Dir(exe), "metal-central"); isFile(p) {
			return p, nil
		}
	}
	if p := filepath.Join("bin", "metal-central"); isFile(p) {
		return filepath.Abs(p)
	}
	p, err := exec.LookPath("metal-central")
	if err != nil {
		return "", fmt.Errorf("metal-central not found next to metal-lab, in bin/ or on PATH: run make build or give --central")
	}
	return p, nil
}

func isFile(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.Mode().IsRegular()
}

func printResult(w io.Writer, cfg fleetsim.Config, r fleetsim.Result, took time.Duration) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "agents\t%d (%s)\n", r.Agents, strings.ToLower(strings.TrimPrefix(cfg.Kind.String(), "KIND_")))
	fmt.Fprintf(tw, "cores\t%d (central, PostgreSQL and simulator on this box)\n", runtime.NumCPU())
	fmt.Fprintf(tw, "connect all\t%s\n", r.Connect.Round(time.Millisecond))
	fmt.Fprintf(tw, "connect TLS handshakes full / resumed / failed / timed out\t%s\n", handshakes(r.ConnectTLS))
	fmt.Fprintf(tw, "central RSS idle / connected\t%.1f MiB / %.1f MiB\n", float64(r.RSSIdle)/(1<<20), float64(r.RSSConnected)/(1<<20))
	fmt.Fprintf(tw, "RSS per stream\t%.1f KiB\n", r.PerStream()/1024)
	if r.RSSSettled > 0 {
		fmt.Fprintf(tw, "RSS settled (after %s) / per stream\t%.1f MiB / %.1f KiB\n", cfg.Settle, float64(r.RSSSettled)/(1<<20), r.PerStreamSettled()/1024)
	}
	if r.Changes > 0 {
		fmt.Fprintf(tw, "changes (rate)\t%d (%.0f/s)\n", r.Changes, cfg.Rate)
		fmt.Fprintf(tw, "propagation from changed_at (before commit) p50 / p99 / max\t%s / %s / %s\n", ms(r.P50), ms(r.P99), ms(r.Max))
		fmt.Fprintf(tw, "propagation from API return (after commit) p50 / p99 / max\t%s / %s / %s\n", ms(r.AfterP50), ms(r.AfterP99), ms(r.AfterMax))
		fmt.Fprintf(tw, "delivered\t%d\n", r.Delivered)
	}
	if cfg.Restart {
		fmt.Fprintf(tw, "restart: central serving again\t%s\n", r.Down.Round(time.Millisecond))
		fmt.Fprintf(tw, "restart: all agents back at latest\t%s\n", r.Converge.Round(time.Millisecond))
		fmt.Fprintf(tw, "restart: return (serving again → all back) / cold connect\t%s / %s = %.2f\n", r.Return().Round(time.Millisecond), r.Connect.Round(time.Millisecond), r.ReturnRatio())
		fmt.Fprintf(tw, "restart: TLS handshakes full / resumed / failed / timed out\t%s\n", handshakes(r.ReturnTLS))
		fmt.Fprintf(tw, "central RSS after restart\t%.1f MiB\n", float64(r.RSSRestarted)/(1<<20))
	}
	fmt.Fprintf(tw, "agents that gave up\t%d\n", r.GaveUp)
	fmt.Fprintf(tw, "run took\t%s\n", took.Round(time.Second))
	tw.Flush()
}

func handshakes(c agent.HandshakeCounts) string {
	return fmt.Sprintf("%d / %d / %d / %d", c.Full, c.Resumed, c.Failed, c.TimedOut)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond)) }
