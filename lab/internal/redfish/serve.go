package redfish

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/metalfleet/metalfleet/lab/internal/vm"
)

// ServeConfig is one lab machine with its BMC, as `metal-lab bmc` runs it.
type ServeConfig struct {
	Machine vm.Spec
	// BMC's Redfish settings; UUID, Name and BootMode default to the
	// machine's.
	BMC             Config
	Listen          string // Redfish HTTPS address, e.g. 172.30.0.101:443
	TLSCert, TLSKey string // made self-signed for Listen's host when both are missing
	MetricsListen   string // Prometheus /metrics over HTTP; "" for none
	// SSHListen serves the machine's serial console over SSH with the
	// BMC's user and password (as real BMCs do); "" for none.
	SSHListen string
	PowerOn   bool // power the machine on once serving
	Log       *slog.Logger
	// Ready, when not nil, is called with the Redfish and metrics (nil
	// when none) addresses once the BMC serves (tests listen on port 0).
	Ready func(redfish, metrics net.Addr)
}

// shutdownTimeout bounds the HTTP shutdown and the machine's forced
// power-off when Serve's context ends.
const shutdownTimeout = 15 * time.Second

// Serve runs one machine's BMC until ctx ends, then forces the machine
// off and reaps QEMU.
func Serve(ctx context.Context, cfg ServeConfig) (err error) {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := vm.New(cfg.Machine, log)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		if cerr := m.Close(cctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("power off: %w", cerr))
		}
	}()

	bmc := cfg.BMC
	if bmc.UUID == "" {
		bmc.UUID = cfg.Machine.UUID
	}
	if bmc.Name == "" {
		bmc.Name = cfg.Machine.Name
	}
	if bmc.BootMode == "" {
		bmc.BootMode = "UEFI"
		if m.Spec().Firmware == "bios" {
			bmc.BootMode = "Legacy"
		}
	}
	if bmc.Log == nil {
		bmc.Log = log
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	bmc.Metrics = reg
	srv, err := New(bmc, m)
	if err != nil {
		return err
	}

	host, _, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", cfg.Listen, err)
	}
	hosts := []string{host}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		hosts = []string{"localhost", "127.0.0.1", "::1"}
	}
	cert, err := LoadOrCreateCert(cfg.TLSCert, cfg.TLSKey, hosts)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("redfish: %w", err)
	}
	errLog := slog.NewLogLogger(log.Handler(), slog.LevelWarn)
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog,
		TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	servers := []*http.Server{hs}
	var metricsAddr net.Addr
	errc := make(chan error, 3)
	go func() { errc <- hs.ServeTLS(ln, "", "") }()

	if cfg.MetricsListen != "" {
		mln, err := net.Listen("tcp", cfg.MetricsListen)
		if err != nil {
			hs.Close()
			return fmt.Errorf("metrics: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		ms := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ErrorLog: errLog}
		servers = append(servers, ms)
		go func() { errc <- ms.Serve(mln) }()
		metricsAddr = mln.Addr()
		log.Info("metrics", "addr", metricsAddr.String())
	}
	if cfg.SSHListen != "" {
		sc, err := NewSerialConsole(SerialConfig{User: bmc.User, Password: bmc.Password, Socket: filepath.Join(cfg.Machine.Dir, "serial.sock"), Log: log})
		if err != nil {
			hs.Close()
			return err
		}
		sln, err := net.Listen("tcp", cfg.SSHListen)
		if err != nil {
			hs.Close()
			return fmt.Errorf("serial console: %w", err)
		}
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			if err := sc.Serve(sctx, sln); err != nil {
				errc <- err
			}
		}()
		log.Info("BMC serving the serial console over SSH", "addr", sln.Addr().String())
	}
	log.Info("BMC serving Redfish", "addr", "https://"+ln.Addr().String(), "system", srv.systemPath())

	shutdown := func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
		defer cancel()
		for _, s := range servers {
			_ = s.Shutdown(sctx)
		}
		_ = srv.Close(sctx)
	}
	if cfg.PowerOn {
		if err := m.PowerOn(ctx); err != nil {
			shutdown()
			return err
		}
	}
	if cfg.Ready != nil {
		cfg.Ready(ln.Addr(), metricsAddr)
	}
	select {
	case <-ctx.Done():
		log.Info("stopping: powering the machine off")
		shutdown()
		return nil
	case err := <-errc:
		shutdown()
		return fmt.Errorf("redfish: %w", err)
	}
}
