// Command metal-phonehome runs in every installed OS: it reports "Phoned
// Home" to metal-central once per allocation, keeps the machine's
// liveliness, and reboots the machine into PXE when central frees or
// reinstalls it. Build it static: CGO_ENABLED=0.
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
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/agents/phonehome/internal/phonehome"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "metal-phonehome:", err)
		os.Exit(1)
	}
}

func run() error {
	var configPath, installPath, stateDir, metricsListen, logLevel, logFormat string
	fs := flag.NewFlagSet("metal-phonehome", flag.ExitOnError)
	fs.StringVar(&configPath, "config", "/etc/metal/phonehome.json", "phone-home configuration written by the installer")
	fs.StringVar(&installPath, "install-record", "/etc/metal/install.json", "the installer's record of the installation (optional)")
	fs.StringVar(&stateDir, "state-dir", "/var/lib/metal-phonehome", "directory for the credential, the last desired document and the phone-home state")
	fs.StringVar(&metricsListen, "metrics-listen", "", "Prometheus /metrics listen address, e.g. 127.0.0.1:9102 (empty: off)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "text", "text or json")
	_ = fs.Parse(os.Args[1:])

	log, level, err := agent.NewLogger(os.Stderr, logLevel, logFormat)
	if err != nil {
		return err
	}

	file, err := phonehome.LoadFile(configPath)
	if err != nil {
		return err
	}
	version := buildVersion()
	log.Info("starting", "version", version, "config", file)

	reg := agent.NewRegistry()
	p, err := phonehome.New(phonehome.Options{
		File:         file,
		StateDir:     stateDir,
		InstallFile:  installPath,
		Version:      version,
		Rebooter:     phonehome.SystemRebooter{},
		Log:          log,
		LogLevel:     level,
		Metrics:      phonehome.NewMetrics(reg),
		AgentMetrics: agent.NewMetrics(reg),
	})
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
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server", "err", err)
			}
		}()
		defer srv.Close()
		log.Info("serving metrics", "addr", lis.Addr().String())
	}
	return p.Run(ctx)
}

// buildVersion is the module version or VCS revision the binary was built
// from, so no linker flag is needed.
func buildVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			return "devel-" + s.Value[:12]
		}
	}
	return "devel"
}
