package redfish

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/metalfleet/metalfleet/agents/agent/file"
	"github.com/metalfleet/metalfleet/lab/internal/dhcpc"
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
	// DHCP, when set, is the interface whose IPv4 address the BMC gets
	// by DHCP and keeps renewed, as a BMC on a BMC network does; Listen,
	// SSHListen and MetricsListen then give ports only (":443").
	DHCP string
	// LeaseFile, when set with DHCP, gets the lease in effect (JSON, see
	// LeaseInfo) after every change: where a BMC shows its network
	// settings, here for the lab and a person.
	LeaseFile string
	Log       *slog.Logger
	// Ready, when not nil, is called with the Redfish and metrics (nil
	// when none) addresses once the BMC serves (tests listen on port 0).
	Ready func(redfish, metrics net.Addr)
}

// LeaseInfo is what ServeConfig.LeaseFile holds: the BMC's DHCP lease,
// Address empty while it has none.
type LeaseInfo struct {
	Interface string    `json:"interface"`
	Address   string    `json:"address"` // address/prefix
	Server    string    `json:"server,omitempty"`
	Bound     time.Time `json:"bound,omitzero"`
	Expires   time.Time `json:"expires,omitzero"`
	// Renewals of this address since it was bound.
	Renewals int `json:"renewals"`
}

// leaseAddress starts the BMC's DHCP client on cfg.DHCP (it runs until
// ctx ends) and waits for its first address: an invalid one when ctx
// ended first.
func leaseAddress(ctx context.Context, cfg ServeConfig, log *slog.Logger) (netip.Addr, error) {
	for _, l := range []struct{ flag, addr string }{{"listen", cfg.Listen}, {"ssh-listen", cfg.SSHListen}, {"metrics-listen", cfg.MetricsListen}} {
		if h, _, err := net.SplitHostPort(l.addr); l.addr != "" && (err != nil || h != "") {
			return netip.Addr{}, fmt.Errorf("%s %q with DHCP: give the port only (e.g. :443); the address is the lease's", l.flag, l.addr)
		}
	}
	// OnLease runs on the client's goroutine only: no lock for these.
	var prev netip.Prefix
	renewals := 0
	write := func(l dhcpc.Lease) {
		if l.Addr.IsValid() && l.Addr == prev {
			renewals++
		} else {
			renewals = 0
		}
		prev = l.Addr
		if cfg.LeaseFile == "" {
			return
		}
		info := LeaseInfo{Interface: cfg.DHCP}
		if l.Addr.IsValid() {
			info.Address, info.Server, info.Bound, info.Expires, info.Renewals = l.Addr.String(), l.Server.String(), l.Bound.UTC(), l.Expires.UTC(), renewals
		}
		b, _ := json.MarshalIndent(info, "", "  ")
		if err := file.WriteAtomic(cfg.LeaseFile, append(b, '\n'), 0o644); err != nil {
			log.Warn("lease file", "err", err)
		}
	}
	c, err := dhcpc.New(dhcpc.Config{Interface: cfg.DHCP, Hostname: cfg.Machine.Name + "-bmc", OnLease: write, Log: log})
	if err != nil {
		return netip.Addr{}, err
	}
	go func() { _ = c.Run(ctx) }()
	log.Info("BMC asking for its address by DHCP", "interface", cfg.DHCP)
	l, err := c.Wait(ctx)
	if err != nil {
		return netip.Addr{}, nil
	}
	return l.Addr.Addr(), nil
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
	if cfg.SSHListen != "" && bmc.SSHPort == 0 {
		// The port the BMC's NetworkProtocol names; an ephemeral one
		// (":0") is known only once listening, and is not named.
		_, p, err := net.SplitHostPort(cfg.SSHListen)
		if err != nil {
			return fmt.Errorf("ssh-listen %q: %w", cfg.SSHListen, err)
		}
		bmc.SSHPort, _ = strconv.Atoi(p)
	}
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
	if cfg.DHCP != "" {
		addr, err := leaseAddress(ctx, cfg, log)
		if err != nil {
			return err
		}
		if !addr.IsValid() {
			return nil // ctx ended first
		}
		// The certificate names the leased address, as a BMC makes its
		// certificate for the address it got. The listeners take the
		// wildcard: a lease lost and got again may bring another
		// address, and the BMC's namespace holds no other.
		hosts = []string{addr.String()}
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
