// Command metal-core runs on every leaf switch (SONiC): it applies the
// switch's desired document from central to CONFIG_DB and FRR and reports
// the switch's ports, LLDP neighbours and BGP sessions (docs/network.md).
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
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/agents/metalcore/internal/core"
	"github.com/metalfleet/metalfleet/agents/metalcore/internal/frr"
	"github.com/metalfleet/metalfleet/agents/metalcore/internal/sonic"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "metal-core:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		cfg                             core.Config
		centrals, caFile, tokenFile     string
		validate, reload, metricsListen string
		logLevel, logFormat             string
		insecure                        bool
	)
	fs := flag.NewFlagSet("metal-core", flag.ExitOnError)
	fs.StringVar(&cfg.Name, "name", "", "agent `identity`, as enrolled with metalctl agent enroll --kind switch --identity <name> (required)")
	fs.StringVar(&centrals, "central", "", "central's agent endpoints, comma-separated host:port (required)")
	fs.StringVar(&caFile, "ca", "", "central's CA certificate (PEM), pinned for TLS")
	fs.BoolVar(&insecure, "insecure-plaintext", false, "talk to central without TLS (a central run with --insecure-plaintext)")
	fs.StringVar(&cfg.Token, "token", "", "the switch's agent credential (default: the one kept in --state-dir)")
	fs.StringVar(&tokenFile, "token-file", "", "file holding the agent credential (keeps it out of the process list)")
	fs.StringVar(&cfg.StateDir, "state-dir", "/var/lib/metal-core", "the credential and the last desired document (applied at start: fail-static)")
	fs.StringVar(&cfg.DBConfig, "db-config", sonic.DefaultDBConfig, "SONiC's database_config.json")
	fs.StringVar(&cfg.NamingSchema, "naming-schema", "default", "port names and LLDP identifiers: default (name, alias), swap (alias, name), name or alias")
	fs.DurationVar(&cfg.ASICTimeout, "asic-timeout", 10*time.Second, "how long a port may take to leave the ASIC's router interfaces or bridge (only where ASIC_DB has entries)")
	fs.StringVar(&cfg.FRRFile, "frr-conf", "/etc/sonic/frr/frr.conf", "the live frr.conf")
	fs.StringVar(&cfg.FRRTemplate, "frr-template", "", "a frr.conf template replacing the built-in one (Go text/template)")
	fs.StringVar(&validate, "frr-validate", strings.Join(frr.DefaultValidate(), " "), "command that checks a candidate frr.conf ({file} is the file)")
	fs.StringVar(&reload, "frr-reload", strings.Join(frr.DefaultReload(), " "), "command that makes FRR take the live frr.conf ({file} is the file, {dir} its directory)")
	fs.StringVar(&cfg.VTYDir, "frr-vty-dir", frr.DefaultVTYDir, "FRR's vty sockets: bgpd is asked there for the BGP sessions, as vtysh asks it (empty: through vtysh)")
	fs.StringVar(&cfg.Vtysh, "vtysh", "vtysh", "FRR's vtysh, asked for the BGP sessions when bgpd's vty socket cannot be reached")
	fs.StringVar(&cfg.SONiCVersionFile, "sonic-version-file", "/etc/sonic/sonic_version.yml", "SONiC's version file (build_version)")
	fs.StringVar(&cfg.ManagementInterface, "management-interface", "eth0", "interface whose address is reported when CONFIG_DB's MGMT_INTERFACE has none")
	fs.Func("uplinks", "comma-separated ports to the spines, e.g. Ethernet120,Ethernet124 (metal-stack's SPINE_UPLINKS)", func(v string) error {
		for u := range strings.SplitSeq(v, ",") {
			if u = strings.TrimSpace(u); u != "" {
				cfg.Uplinks = append(cfg.Uplinks, u)
			}
		}
		return nil
	})
	fs.IntVar(&cfg.RelayPort, "relay-port", 4443, "agent relay for installed systems in tenant VRFs, on each tenant port's link-local address (0: off)")
	fs.IntVar(&cfg.RelayPerPort, "relay-per-port", 8, "open relayed connections one switch port may hold")
	fs.StringVar(&cfg.Rack, "rack", "", "the rack the switch stands in (machines linked to it are placed in it)")
	fs.DurationVar(&cfg.FactsPoll, "facts-poll", 30*time.Second, "slow poll of ports and LLDP behind the keyspace notifications")
	fs.DurationVar(&cfg.BGPPoll, "bgp-poll", 5*time.Second, "how often FRR is asked for its BGP sessions")
	fs.DurationVar(&cfg.Resync, "resync", time.Minute, "how often the document in effect is applied again (writes nothing unless something drifted)")
	fs.StringVar(&metricsListen, "metrics-listen", ":2112", "Prometheus /metrics listen address (empty: off)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "text", "text or json")
	_ = fs.Parse(os.Args[1:])

	var err error
	if cfg.Log, cfg.LogLevel, err = agent.NewLogger(os.Stderr, logLevel, logFormat); err != nil {
		return err
	}
	if cfg.Name == "" || centrals == "" {
		return errors.New("--name and --central are required")
	}
	for _, c := range strings.Split(centrals, ",") {
		if c = strings.TrimSpace(c); c != "" {
			cfg.Centrals = append(cfg.Centrals, c)
		}
	}
	switch {
	case insecure:
	case caFile == "":
		return errors.New("--ca is required (or --insecure-plaintext)")
	default:
		if cfg.TLS, err = agent.PinnedTLS(caFile); err != nil {
			return err
		}
	}
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		cfg.Token = strings.TrimSpace(string(b))
	}
	cfg.FRRValidate, cfg.FRRReload = strings.Fields(validate), strings.Fields(reload)
	cfg.Version = version()

	c, err := core.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if metricsListen != "" {
		lis, err := net.Listen("tcp", metricsListen)
		if err != nil {
			return fmt.Errorf("--metrics-listen: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(c.Registry(), promhttp.HandlerOpts{}))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				cfg.Log.Error("metrics server", "err", err)
			}
		}()
		defer srv.Close()
	}
	cfg.Log.Info("metal-core starting", "name", cfg.Name, "version", cfg.Version, "db_config", cfg.DBConfig, "frr_conf", cfg.FRRFile, "naming_schema", cfg.NamingSchema)
	return c.Run(ctx)
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
