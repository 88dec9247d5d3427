// Command metal-central is Metalfleet's control plane: the API for people and
// tools, the desired state in SQL, and (later) the agents' stream endpoint.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/server"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "metal-central:", err)
		os.Exit(1)
	}
}

func run() error {
	var cfg server.Config
	var logLevel, logFormat, tlsHosts, advertise string
	var vrfFirst, vrfLast uint
	fs := flag.NewFlagSet("metal-central", flag.ExitOnError)
	fs.StringVar(&cfg.Listen, "listen", ":8443", "gRPC listen address (IPv4 or [IPv6]:port)")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", "127.0.0.1:9090", "Prometheus /metrics and /healthz listen address (empty disables)")
	fs.StringVar(&cfg.DataDir, "data-dir", "", "directory for the embedded database, CA, certificates and admin.token (required)")
	fs.StringVar(&cfg.DBURL, "db-url", "", "PostgreSQL or CockroachDB URL; empty runs an embedded PostgreSQL in --data-dir")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "serving certificate (PEM); default: made by central's own CA in --data-dir")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "serving key (PEM) for --tls-cert")
	fs.StringVar(&tlsHosts, "tls-hosts", "", "extra comma-separated DNS names or addresses for the self-made serving certificate")
	fs.BoolVar(&cfg.InsecurePlaintext, "insecure-plaintext", false, "serve gRPC without TLS (local experiments only)")
	fs.BoolVar(&cfg.DurableEmbedded, "durable", true, "fsync the embedded database (turn off only for throw-away labs)")
	fs.DurationVar(&cfg.AdminTokenLifetime, "admin-token-lifetime", 365*24*time.Hour, "lifetime of the admin token written on first start")
	fs.UintVar(&vrfFirst, "vrf-first", 10000, "first VRF id / VNI handed to child networks")
	fs.UintVar(&vrfLast, "vrf-last", 16777215, "last VRF id / VNI handed to child networks")
	fs.StringVar(&advertise, "advertise", "", "comma-separated agent endpoints (host:port, [v6]:port) PXE-booted installers dial (default <hostname>:<listen port>)")
	fs.DurationVar(&cfg.Service.BootTokenTTL, "boot-token-ttl", 30*time.Minute, "lifetime of the boot token handed to each PXE boot")
	def := fleet.DefaultConfig()
	fs.StringVar(&cfg.Replica, "replica", "", "name of this replica, shown to agents and operators (default <hostname>:<port>)")
	fs.DurationVar(&cfg.Fleet.Heartbeat, "agent-heartbeat", def.Heartbeat, "how often agents are asked to send a heartbeat")
	fs.DurationVar(&cfg.Fleet.Resync, "agent-resync", def.Resync, "how often all connected agents' revisions are compared with the database")
	fs.IntVar(&cfg.Fleet.MaxHandshakes, "agent-max-handshakes", def.MaxHandshakes, "concurrent agent handshakes before new ones are told to retry later")
	fs.BoolVar(&cfg.Pprof, "pprof", false, "serve Go's /debug/pprof/ on the metrics listener (profiling; keep that listener private)")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "text", "text or json")
	_ = fs.Parse(os.Args[1:])
	if cfg.DataDir == "" {
		return fmt.Errorf("--data-dir is required")
	}
	if tlsHosts != "" {
		cfg.TLSHosts = strings.Split(tlsHosts, ",")
	}
	if advertise != "" {
		cfg.Service.Centrals = strings.Split(advertise, ",")
	}
	if vrfFirst > vrfLast || vrfLast > 1<<24-1 {
		return fmt.Errorf("--vrf-first/--vrf-last: want 1 <= first <= last <= 16777215")
	}
	cfg.Service.VRFFirst, cfg.Service.VRFLast = uint32(vrfFirst), uint32(vrfLast)

	var level slog.Level
	if err := level.UnmarshalText([]byte(logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewTextHandler(os.Stderr, hopts)
	if logFormat == "json" {
		h = slog.NewJSONHandler(os.Stderr, hopts)
	}
	log := slog.New(h)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	srv, err := server.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	scheme := "TLS, trust " + srv.CAFile()
	if cfg.InsecurePlaintext {
		scheme = "plaintext"
	} else if srv.CAFile() == "" {
		scheme = "TLS with the given certificate"
	}
	fmt.Printf("metal-central is serving the API on %s (%s)\n", srv.Addr(), scheme)
	fmt.Printf("admin token: %s\n", srv.AdminTokenPath())
	if m := srv.MetricsAddr(); m != "" {
		fmt.Printf("metrics: http://%s/metrics\n", m)
	}
	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down")
	case runErr = <-srv.Done():
		log.Error("stopping after failure", "err", runErr)
	}
	sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv.Stop(sctx)
	return runErr
}
