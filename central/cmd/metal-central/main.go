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
	tr := server.DefaultTransport()
	var streamWindow, connWindow int
	var headerTable uint
	fs.IntVar(&cfg.TLSHandshakeSlots, "tls-handshake-slots", fleet.DefaultTLSSlots(), "TLS handshakes run at once; more wait for a slot (a reconnecting fleet is admitted at the rate central finishes handshakes)")
	fs.DurationVar(&cfg.TLSHandshakeWait, "tls-handshake-wait", 10*time.Second, "how long a connection waits for a TLS handshake slot before it is closed (the agent retries after its backoff)")
	fs.IntVar(&tr.ReadBuffer, "grpc-read-buffer", tr.ReadBuffer, "gRPC per-connection read buffer in bytes (0: read straight from TLS)")
	fs.IntVar(&tr.WriteBuffer, "grpc-write-buffer", tr.WriteBuffer, "gRPC per-connection write buffer in bytes")
	fs.BoolVar(&tr.SharedWriteBuffer, "grpc-shared-write-buffer", tr.SharedWriteBuffer, "release a connection's write buffer between writes (idle streams hold none)")
	fs.IntVar(&streamWindow, "grpc-stream-window", 0, "HTTP/2 stream flow-control window in bytes (0: gRPC's dynamic default; minimum 65535)")
	fs.IntVar(&connWindow, "grpc-conn-window", 0, "HTTP/2 connection flow-control window in bytes (0: gRPC's dynamic default; minimum 65535)")
	fs.UintVar(&headerTable, "grpc-header-table", 0, "HPACK dynamic header table size in bytes (0: 4096)")
	fs.DurationVar(&tr.KeepaliveTime, "grpc-keepalive-time", tr.KeepaliveTime, "ping an agent connection idle this long")
	fs.DurationVar(&tr.KeepaliveTimeout, "grpc-keepalive-timeout", tr.KeepaliveTimeout, "close a connection whose ping is not answered within this")
	fs.DurationVar(&cfg.StuckInterval, "stuck-interval", server.DefaultStuckInterval, "how often machines stuck past their state's timeout are looked for and power-cycled through their BMC (per partition: metalctl partition bmc set --stuck-max-cycles / --no-stuck-cycle)")
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
	for name, v := range map[string]int{"--grpc-stream-window": streamWindow, "--grpc-conn-window": connWindow} {
		if v < 0 || v > 1<<31-1 {
			return fmt.Errorf("%s: want 0 to 2147483647 bytes, got %d", name, v)
		}
	}
	if headerTable > 1<<32-1 {
		return fmt.Errorf("--grpc-header-table: want at most 4294967295 bytes, got %d", headerTable)
	}
	if tr.ReadBuffer < 0 || tr.WriteBuffer < 0 {
		return fmt.Errorf("--grpc-read-buffer/--grpc-write-buffer: want ≥ 0 bytes")
	}
	tr.StreamWindow, tr.ConnWindow, tr.HeaderTable = int32(streamWindow), int32(connWindow), uint32(headerTable)
	cfg.Transport = tr

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
