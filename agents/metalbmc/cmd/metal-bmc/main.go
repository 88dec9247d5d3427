// Command metal-bmc is a partition's out-of-band agent: it finds the
// partition's BMCs (a static list and the BMC network's DHCP leases),
// reports their facts and power, and executes power, boot-device,
// identify-LED and firmware intents through bmclib, once per generation
// (docs/bmc.md).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/proto"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/console"
	"github.com/metalfleet/metalfleet/agents/metalbmc/oob"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "metal-bmc:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		cfg                                      oob.Config
		name, centrals, caFile, token, tokenFile string
		metricsListen, logLevel, logFormat       string
		insecure                                 bool
		sshPort                                  int
	)
	fs := flag.NewFlagSet("metal-bmc", flag.ExitOnError)
	fs.StringVar(&name, "name", "", "agent `identity`, as enrolled with metalctl agent enroll --kind bmc --identity <name> (required)")
	fs.StringVar(&centrals, "central", "", "central's agent endpoints, comma-separated host:port (required)")
	fs.StringVar(&caFile, "ca", "", "central's CA certificate (PEM), pinned for TLS")
	fs.BoolVar(&insecure, "insecure-plaintext", false, "talk to central without TLS (a central run with --insecure-plaintext)")
	fs.StringVar(&token, "token", "", "the agent credential (default: the one kept in --state-dir)")
	fs.StringVar(&tokenFile, "token-file", "", "file holding the agent credential (keeps it out of the process list)")
	fs.StringVar(&cfg.StateDir, "state-dir", "/var/lib/metal-bmc", "the credential, the last desired document and the intent journal")
	fs.StringVar(&cfg.LeaseFile, "lease-file", "", "the BMC network's DHCP leases (metal-pixie's leases.json); empty: static BMCs only")
	fs.IntVar(&cfg.Parallel, "parallel", oob.DefaultParallel, "BMCs polled at once (and, separately, intents executed at once)")
	fs.DurationVar(&cfg.PollInterval, "poll-interval", time.Minute, "how often a reachable BMC is read, unless the document says")
	fs.DurationVar(&cfg.ReportInterval, "report-interval", 5*time.Minute, "facts are reported on change, and at least this often")
	fs.DurationVar(&cfg.MinBackoff, "min-backoff", 10*time.Second, "first wait before polling an unreachable BMC again (doubling)")
	fs.DurationVar(&cfg.MaxBackoff, "max-backoff", 10*time.Minute, "longest wait before polling an unreachable BMC again")
	fs.DurationVar(&cfg.Timeout, "bmc-timeout", 30*time.Second, "bound of one call to a BMC")
	fs.BoolVar(&cfg.RedfishSessions, "redfish-sessions", false, "log in to Redfish with sessions instead of HTTP Basic")
	fs.StringVar(&cfg.IpmitoolPath, "ipmitool", "ipmitool", "ipmitool binary for IPMI BMCs")
	fs.StringVar(&cfg.IpmiCipherSuite, "ipmi-cipher-suite", "", "pin IPMI's cipher suite (default: bmclib tries 3, then 17)")
	fs.IntVar(&sshPort, "console-ssh-port", 22, "port of Redfish BMCs' SSH serial console when the BMC's Redfish NetworkProtocol names none (IPMI BMCs: serial-over-LAN)")
	fs.StringVar(&metricsListen, "metrics-listen", ":2113", "Prometheus /metrics listen address (empty: off)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "text", "text or json")
	_ = fs.Parse(os.Args[1:])

	log, level, err := agent.NewLogger(os.Stderr, logLevel, logFormat)
	if err != nil {
		return err
	}
	if name == "" || centrals == "" {
		return errors.New("--name and --central are required")
	}
	acfg := agent.Config{Kind: agentv1.Kind_KIND_BMC, Identity: name, Token: token, StateDir: cfg.StateDir, Log: log.With("part", "agent"), LogLevel: level}
	for _, c := range strings.Split(centrals, ",") {
		if c = strings.TrimSpace(c); c != "" {
			acfg.Centrals = append(acfg.Centrals, c)
		}
	}
	switch {
	case insecure:
	case caFile == "":
		return errors.New("--ca is required (or --insecure-plaintext)")
	default:
		if acfg.TLS, err = agent.PinnedTLS(caFile); err != nil {
			return err
		}
	}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		acfg.Token = strings.TrimSpace(string(b))
	}

	reg := agent.NewRegistry()
	ver := version()
	hostFacts := agent.HostFacts(ver)
	var (
		baseMu sync.Mutex
		base   = &agentv1.Facts{AgentVersion: ver}
	)
	// The agent exists only after the service (it is the service's
	// reconciler); reports wait for it.
	var (
		agentMu sync.Mutex
		ag      *agent.Agent
	)
	cfg.Log, cfg.Metrics = log.With("part", "bmc"), reg
	cfg.Base = func() *agentv1.Facts {
		baseMu.Lock()
		defer baseMu.Unlock()
		return base
	}
	cfg.Report = func(f *agentv1.Facts, ev ...*agentv1.Event) {
		agentMu.Lock()
		a := ag
		agentMu.Unlock()
		if a != nil {
			a.Emit(f, ev...)
		}
	}
	svc, err := oob.New(cfg)
	if err != nil {
		return err
	}
	defer svc.Close()
	acfg.Reconciler = svc
	cipher := cfg.IpmiCipherSuite
	cons, err := console.New(console.Config{Creds: svc.Credentials, SSHPort: sshPort, SSHPortOf: svc.SSHPort, Ipmitool: cfg.IpmitoolPath, CipherSuite: cipher,
		Timeout: cfg.Timeout, Log: log.With("part", "console"), Metrics: reg})
	if err != nil {
		return err
	}
	acfg.Console = cons.Serve
	acfg.Metrics = agent.NewMetrics(reg)
	acfg.Facts = func(ctx context.Context) (*agentv1.Facts, error) {
		f, err := hostFacts(ctx)
		if f != nil {
			baseMu.Lock()
			base = proto.Clone(f).(*agentv1.Facts)
			baseMu.Unlock()
			f.Bmc = svc.Facts()
		}
		return f, err
	}
	a, err := agent.New(acfg)
	if err != nil {
		return err
	}
	agentMu.Lock()
	ag = a
	agentMu.Unlock()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if metricsListen != "" {
		lis, err := net.Listen("tcp", metricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server", "err", err)
			}
		}()
		defer srv.Close()
	}
	log.Info("metal-bmc starting", "name", name, "version", ver, "state_dir", cfg.StateDir, "lease_file", cfg.LeaseFile, "parallel", cfg.Parallel)

	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = svc.Run(ctx)
	}()
	err = a.Run(ctx)
	stop()
	<-done
	return err
}

// version is the module version or VCS revision the binary was built from.
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return s.Value[:12]
		}
	}
	return "dev"
}
