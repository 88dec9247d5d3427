// Package pixie assembles metal-pixie, a partition's PXE service: an agent
// of the fleet (kind pixie) whose desired document names the installer,
// serving DHCPv4/DHCPv6 (and router advertisements), TFTP and HTTP to the
// machines of the partition's PXE network.
package pixie

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/boot"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/cache"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/dhcp"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/lease"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/metric"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/ra"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/tftp"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/web"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Config of one metal-pixie.
type Config struct {
	// Name is the agent identity (enrolled with `metalctl agent enroll
	// --kind pixie --identity <name> --partition <p>`).
	Name     string
	Centrals []string
	// TLS pins central's CA; nil is plaintext (--insecure-plaintext).
	TLS *tls.Config
	// Token is pixie's agent credential; empty: the one in StateDir.
	Token    string
	StateDir string
	// CacheDir holds boot artifacts and images (default StateDir/cache).
	CacheDir string
	// CAFile is central's CA certificate, served as /ca.pem.
	CAFile string
	// Version is reported to central as a fact.
	Version string

	// Interface is the PXE network's interface (DHCP, RA); with
	// RelayedOnly the one the relays reach pixie on.
	Interface string
	// RelayedOnly: the PXE network is routed, its leaves relay DHCP to
	// pixie, and Interface is not on it. Pixie then answers only relayed
	// requests (and relayed clients' unicast renewals), sends no router
	// advertisements, takes nothing from Interface's addresses (ServerIP,
	// Subnet, Routers for DHCPv4, ServerIP6 and Subnet6 for DHCPv6 are
	// required) and binds HTTP and TFTP listen addresses without a host to
	// its server addresses.
	RelayedOnly bool
	// Range4 enables DHCPv4 when set; Range6 DHCPv6.
	Range4, Range6 lease.Range
	// ServerIP and ServerIP6 are pixie's addresses as the machines reach
	// it: on the PXE network (default: the interface's first IPv4 /
	// global IPv6 address), with RelayedOnly its routed addresses.
	ServerIP, ServerIP6 netip.Addr
	// Subnet is the IPv4 PXE network (default: the interface's prefix
	// holding ServerIP); Subnet6 the IPv6 one (default: the interface's
	// prefix holding ServerIP6). Relays are served whose giaddr or
	// link-address lies in them.
	Subnet, Subnet6 netip.Prefix
	Routers         []netip.Addr
	DNS             []netip.Addr
	DNS6            []netip.Addr
	Domain          string
	LeaseTime       time.Duration

	// BMC is the BMC network, when pixie serves it too.
	BMC BMCNetwork

	// RA sends router advertisements on Interface for RAPrefixes (default:
	// the prefix holding ServerIP6).
	RA         bool
	RAPrefixes []netip.Prefix
	RAInterval time.Duration

	// TFTPListen is the TFTP address (":69"; empty disables TFTP).
	TFTPListen string
	IPXEDir    string
	BIOSFile   string
	EFIFile    string

	// HTTPListen is the HTTP address (":80").
	HTTPListen            string
	PublicURL, PublicURL6 string
	// Kernel and Initramfs are local installer files overriding the
	// document's URLs.
	Kernel, Initramfs string
	// BootTimeout bounds one Boot call to central (default 2s).
	BootTimeout   time.Duration
	ImagePrefixes []string
	ImageMaxBytes int64

	Log *slog.Logger
	// LogLevel, when set, follows the document's settings.log_level.
	LogLevel *slog.LevelVar
	// Registry gets pixie's metrics (default: a new one, served on /metrics).
	Registry *prometheus.Registry
	// AgentBackoff bounds the agent's reconnect delay (tests).
	AgentBackoff time.Duration
}

// BMCNetwork is the partition's BMC network, served with DHCPv4
// addresses only (no boot answers), as the management server's dhcpd
// serves it in metal-stack next to the PXE network. The leases go into
// pixie's one lease file, where metal-bmc finds the BMCs (its --lease-file,
// the document's lease_cidrs telling the BMC network's leases from the PXE
// network's). A second pixie agent for it would hold a credential that
// can ask central for installer boot tokens, on a network where nothing
// boots; one DHCP server for both networks is what the management server
// runs anyway.
type BMCNetwork struct {
	// Interface is where the BMCs' broadcasts arrive (the BMC network
	// itself; relayed BMC networks are not served).
	Interface string
	// Range enables it when set.
	Range lease.Range
	// ServerIP and Subnet: pixie's address on the BMC network and its
	// prefix; both default to the interface's address whose network
	// holds Range.
	ServerIP netip.Addr
	Subnet   netip.Prefix
	Routers  []netip.Addr
	// LeaseTime defaults to Config.LeaseTime.
	LeaseTime time.Duration
}

// Pixie is a running metal-pixie.
type Pixie struct {
	cfg     Config
	log     *slog.Logger
	reg     *prometheus.Registry
	metrics *metric.Metrics
	leases  *lease.Store
	central *boot.Central
	decider *boot.Decider
	cache   *cache.Cache
	agent   *agent.Agent
	doc     atomic.Pointer[agentv1.PixieDocument]
	fetch   chan struct{}

	httpAddrs []net.Addr
	wg        sync.WaitGroup
	cancel    context.CancelFunc
	errMu     sync.Mutex
	err       error
}

// New checks cfg, fills in defaults from the interface and opens pixie's
// state (leases, caches, the agent's credential).
func New(cfg Config) (*Pixie, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Name == "" {
		return nil, errors.New("pixie: name required")
	}
	if cfg.StateDir == "" {
		return nil, errors.New("pixie: state dir required")
	}
	if cfg.CacheDir == "" {
		cfg.CacheDir = filepath.Join(cfg.StateDir, "cache")
	}
	if cfg.HTTPListen == "" {
		cfg.HTTPListen = ":80"
	}
	if cfg.IPXEDir == "" {
		cfg.IPXEDir = "/usr/lib/ipxe"
	}
	if cfg.BIOSFile == "" {
		cfg.BIOSFile = "undionly.kpxe"
	}
	if cfg.EFIFile == "" {
		cfg.EFIFile = "ipxe.efi"
	}
	if cfg.LeaseTime <= 0 {
		cfg.LeaseTime = time.Hour
	}
	for _, f := range []string{cfg.Kernel, cfg.Initramfs, cfg.CAFile} {
		if f == "" {
			continue
		}
		if _, err := os.Stat(f); err != nil {
			return nil, fmt.Errorf("pixie: %w", err)
		}
	}
	if err := fillNetwork(&cfg); err != nil {
		return nil, err
	}
	if err := fillBMC(&cfg); err != nil {
		return nil, err
	}
	if cfg.Registry == nil {
		cfg.Registry = agent.NewRegistry()
	}
	p := &Pixie{cfg: cfg, log: cfg.Log, reg: cfg.Registry, fetch: make(chan struct{}, 1)}
	p.metrics = metric.New(p.reg)

	agentDir := filepath.Join(cfg.StateDir, "agent")
	if cfg.Token == "" {
		b, err := os.ReadFile(filepath.Join(agentDir, "credential"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("pixie: read credential: %w", err)
		}
		cfg.Token = strings.TrimSpace(string(b))
		if cfg.Token == "" {
			return nil, fmt.Errorf("pixie: no credential: give --token (from `metalctl agent enroll --kind pixie`) or put it in %s/credential", agentDir)
		}
	}
	leases, warn, err := lease.Open(filepath.Join(cfg.StateDir, "leases.json"))
	if err != nil {
		return nil, err
	}
	if warn != nil {
		p.log.Warn("leases", "err", warn)
	}
	p.leases = leases
	for _, v6 := range []bool{false, true} {
		fam := map[bool]string{false: "4", true: "6"}[v6]
		p.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "metalfleet", Subsystem: "pixie", Name: "leases_in_use", Help: "Active DHCP leases.",
			ConstLabels: prometheus.Labels{"family": fam},
		}, func() float64 { return float64(leases.InUse(v6)) }))
	}
	if p.cache, err = cache.New(cache.Config{Dir: cfg.CacheDir, MaxBytes: cfg.ImageMaxBytes, Log: p.log.With("part", "cache"), Metrics: p.metrics}); err != nil {
		return nil, err
	}
	if p.central, err = boot.NewCentral(cfg.Centrals, cfg.TLS, cfg.Token); err != nil {
		return nil, err
	}
	p.decider, err = boot.NewDecider(boot.DeciderConfig{
		Central: p.central, Dir: filepath.Join(cfg.StateDir, "decisions"), Timeout: cfg.BootTimeout,
		Document: p.doc.Load, Log: p.log.With("part", "boot"), Metrics: p.metrics,
	})
	if err != nil {
		return nil, err
	}
	backoff := cfg.AgentBackoff
	p.agent, err = agent.New(agent.Config{
		Kind: agentv1.Kind_KIND_PIXIE, Identity: cfg.Name, Centrals: cfg.Centrals, TLS: cfg.TLS,
		Token: cfg.Token, StateDir: agentDir, Reconciler: p, Facts: agent.HostFacts(cfg.Version),
		Log: p.log.With("part", "agent"), LogLevel: cfg.LogLevel, Metrics: agent.NewMetrics(p.reg),
		MinBackoff: backoff / 4, MaxBackoff: backoff,
	})
	if err != nil {
		return nil, err
	}
	return p, nil
}

// ifacePrefixes are the addresses of the interface name with their
// prefix lengths.
func ifacePrefixes(name string) ([]netip.Prefix, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return nil, fmt.Errorf("pixie: --interface: %w", err)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return nil, fmt.Errorf("pixie: addresses of %s: %w", name, err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, _ := netip.AddrFromSlice(ipn.IP)
		ones, _ := ipn.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return out, nil
}

// fillNetwork takes what was not configured from the interface, and
// checks that the interface is what the mode says it is.
func fillNetwork(cfg *Config) error {
	serves4, serves6 := cfg.Range4.First.IsValid(), cfg.Range6.First.IsValid()
	if (serves4 || serves6 || cfg.RA) && cfg.Interface == "" {
		return errors.New("pixie: DHCP and router advertisements need --interface")
	}
	if cfg.RelayedOnly {
		return checkRelayed(cfg)
	}
	if !serves4 && !serves6 && !cfg.RA {
		return nil
	}
	pfxs, err := ifacePrefixes(cfg.Interface)
	if err != nil {
		return err
	}
	fillFromPrefixes(cfg, pfxs, serves4, serves6)
	if serves4 && (!cfg.ServerIP.IsValid() || !cfg.Subnet.IsValid()) {
		return fmt.Errorf("pixie: no IPv4 address on %s for DHCPv4: give --server-ip and --subnet", cfg.Interface)
	}
	if serves6 && !cfg.ServerIP6.IsValid() {
		return fmt.Errorf("pixie: no global IPv6 address on %s for DHCPv6: give --server-ip6", cfg.Interface)
	}
	// Directly on the PXE network, pixie answers broadcasts on its
	// interface; an interface without an address in the PXE network is
	// a routed PXE network, which is --relayed-only's job. Pixie does not
	// switch modes by itself: an address that is missing at start (or a
	// typo in --subnet) would otherwise silently stop the PXE link being
	// served, or start answering broadcasts on another network.
	for _, c := range []struct {
		on   bool
		pfx  netip.Prefix
		flag string
	}{{serves4, cfg.Subnet, "--subnet"}, {serves6 && cfg.Subnet6.IsValid(), cfg.Subnet6, "--subnet6"}} {
		if c.on && !holds(pfxs, c.pfx) {
			return fmt.Errorf("pixie: --interface %s holds no address in %s %s: for a PXE network reached through DHCP relays give --relayed-only", cfg.Interface, c.flag, c.pfx)
		}
	}
	return nil
}

// fillFromPrefixes takes the server addresses and subnets that were not
// configured from the interface's addresses. An interface may hold several
// networks of one family (the lab's PXE bridge also holds the external
// network's gateways), and the kernel lists them in no promised order: the
// address that counts is the one whose network holds the DHCP range (or the
// configured server address), never simply the first one listed.
func fillFromPrefixes(cfg *Config, pfxs []netip.Prefix, serves4, serves6 bool) {
	pick := func(v4 bool, anchors ...netip.Addr) (netip.Prefix, bool) {
		var first netip.Prefix
		for _, p := range pfxs {
			ip := p.Addr()
			if ip.Is4() != v4 || !v4 && ip.IsLinkLocalUnicast() {
				continue
			}
			if !first.IsValid() {
				first = p
			}
			for _, a := range anchors {
				if a.IsValid() && p.Masked().Contains(a) {
					return p, true
				}
			}
		}
		return first, first.IsValid()
	}
	if serves4 && (!cfg.ServerIP.IsValid() || !cfg.Subnet.IsValid()) {
		if p, ok := pick(true, cfg.ServerIP, cfg.Range4.First); ok {
			if !cfg.ServerIP.IsValid() {
				cfg.ServerIP = p.Addr()
			}
			if !cfg.Subnet.IsValid() && p.Masked().Contains(cfg.ServerIP) {
				cfg.Subnet = p.Masked()
			}
		}
	}
	need6 := (serves6 || cfg.RA) && (!cfg.ServerIP6.IsValid() || cfg.RA && len(cfg.RAPrefixes) == 0 || serves6 && !cfg.Subnet6.IsValid())
	if !need6 {
		return
	}
	if p, ok := pick(false, cfg.ServerIP6, cfg.Range6.First); ok {
		if !cfg.ServerIP6.IsValid() {
			cfg.ServerIP6 = p.Addr()
		}
		if cfg.RA && len(cfg.RAPrefixes) == 0 && p.Masked().Contains(cfg.ServerIP6) {
			cfg.RAPrefixes = []netip.Prefix{p.Masked()}
		}
		if serves6 && !cfg.Subnet6.IsValid() && p.Masked().Contains(cfg.ServerIP6) {
			cfg.Subnet6 = p.Masked()
		}
	}
}

// fillBMC takes the BMC network's server address and subnet from its
// interface and checks that it cannot hand out the PXE network's
// addresses (both pools share the lease store).
func fillBMC(cfg *Config) error {
	b := &cfg.BMC
	if !b.Range.First.IsValid() {
		if b.Interface != "" {
			return errors.New("pixie: --bmc-interface without --bmc-dhcp4-range")
		}
		return nil
	}
	if !b.Range.First.Is4() {
		return fmt.Errorf("pixie: --bmc-dhcp4-range %s: want an IPv4 range", b.Range)
	}
	if b.Interface == "" {
		return errors.New("pixie: --bmc-dhcp4-range needs --bmc-interface")
	}
	if b.LeaseTime <= 0 {
		b.LeaseTime = cfg.LeaseTime
	}
	if !b.ServerIP.IsValid() || !b.Subnet.IsValid() {
		pfxs, err := ifacePrefixes(b.Interface)
		if err != nil {
			return fmt.Errorf("pixie: --bmc-interface: %w", err)
		}
		for _, p := range pfxs {
			if p.Addr().Is4() && p.Masked().Contains(b.Range.First) {
				if !b.ServerIP.IsValid() {
					b.ServerIP = p.Addr()
				}
				if !b.Subnet.IsValid() {
					b.Subnet = p.Masked()
				}
				break
			}
		}
		if !b.ServerIP.IsValid() || !b.Subnet.IsValid() {
			return fmt.Errorf("pixie: --bmc-interface %s holds no IPv4 address in the network of --bmc-dhcp4-range %s", b.Interface, b.Range)
		}
	}
	if !b.Subnet.Contains(b.Range.First) || !b.Subnet.Contains(b.Range.Last) {
		return fmt.Errorf("pixie: --bmc-dhcp4-range %s is not inside the BMC network %s", b.Range, b.Subnet)
	}
	if r := cfg.Range4; r.First.IsValid() && !b.Range.Last.Less(r.First) && !r.Last.Less(b.Range.First) {
		return fmt.Errorf("pixie: --bmc-dhcp4-range %s overlaps --dhcp4-range %s: both networks' leases are in one store", b.Range, r)
	}
	for _, r := range b.Routers {
		if !b.Subnet.Contains(r) {
			return fmt.Errorf("pixie: --bmc-router %s is not inside the BMC network %s", r, b.Subnet)
		}
	}
	return nil
}

// holds reports whether one of addrs lies in pfx.
func holds(addrs []netip.Prefix, pfx netip.Prefix) bool {
	for _, a := range addrs {
		if pfx.Contains(a.Addr()) {
			return true
		}
	}
	return false
}

// checkRelayed checks a relayed-only configuration: everything about the
// PXE network is given, nothing of it is on the interface.
func checkRelayed(cfg *Config) error {
	serves4, serves6 := cfg.Range4.First.IsValid(), cfg.Range6.First.IsValid()
	switch {
	case cfg.RA:
		return errors.New("pixie: --ra with --relayed-only: --interface is not the PXE network; the leaves send the router advertisements there")
	case !serves4 && !serves6:
		return errors.New("pixie: --relayed-only needs --dhcp4-range or --dhcp6-range")
	}
	type check struct {
		bad bool
		msg string
	}
	var checks []check
	if serves4 {
		checks = append(checks,
			check{!cfg.ServerIP.IsValid(), "--relayed-only needs --server-ip: pixie's IPv4 address as the relays and machines reach it"},
			check{!cfg.Subnet.IsValid(), "--relayed-only needs --subnet: the IPv4 PXE network the relays serve"},
			check{len(cfg.Routers) == 0, "--relayed-only needs --router: the relays' (leaves') addresses on the PXE network, the machines' route to pixie"},
		)
		if cfg.ServerIP.IsValid() && cfg.Subnet.IsValid() {
			checks = append(checks,
				check{cfg.Subnet.Contains(cfg.ServerIP), fmt.Sprintf("--server-ip %s is inside --subnet %s: with --relayed-only pixie is not on the PXE network", cfg.ServerIP, cfg.Subnet)},
				check{!cfg.Subnet.Contains(cfg.Range4.First) || !cfg.Subnet.Contains(cfg.Range4.Last), fmt.Sprintf("--dhcp4-range %s is not inside --subnet %s", cfg.Range4, cfg.Subnet)})
			for _, r := range cfg.Routers {
				checks = append(checks, check{!cfg.Subnet.Contains(r), fmt.Sprintf("--router %s is not inside --subnet %s", r, cfg.Subnet)})
			}
		}
	}
	if serves6 {
		checks = append(checks,
			check{!cfg.ServerIP6.IsValid(), "--relayed-only needs --server-ip6: pixie's IPv6 address as the relays and machines reach it"},
			check{!cfg.Subnet6.IsValid(), "--relayed-only needs --subnet6: the IPv6 PXE network the relays serve (their link-address)"})
		if cfg.ServerIP6.IsValid() && cfg.Subnet6.IsValid() {
			checks = append(checks,
				check{!cfg.Subnet6.Addr().Is6(), fmt.Sprintf("--subnet6 %s is not IPv6", cfg.Subnet6)},
				check{cfg.Subnet6.Contains(cfg.ServerIP6), fmt.Sprintf("--server-ip6 %s is inside --subnet6 %s: with --relayed-only pixie is not on the PXE network", cfg.ServerIP6, cfg.Subnet6)},
				check{!cfg.Subnet6.Contains(cfg.Range6.First) || !cfg.Subnet6.Contains(cfg.Range6.Last), fmt.Sprintf("--dhcp6-range %s is not inside --subnet6 %s", cfg.Range6, cfg.Subnet6)})
		}
	}
	for _, c := range checks {
		if c.bad {
			return errors.New("pixie: " + c.msg)
		}
	}
	pfxs, err := ifacePrefixes(cfg.Interface)
	if err != nil {
		return err
	}
	for _, a := range pfxs {
		for _, c := range []struct {
			pfx  netip.Prefix
			flag string
		}{{cfg.Subnet, "--subnet"}, {cfg.Subnet6, "--subnet6"}} {
			if c.pfx.IsValid() && c.pfx.Contains(a.Addr()) {
				return fmt.Errorf("pixie: --relayed-only, but --interface %s holds %s inside %s %s: pixie is on the PXE network there; drop --relayed-only", cfg.Interface, a.Addr(), c.flag, c.pfx)
			}
		}
	}
	return nil
}

// Apply implements agent.Reconciler: the document names the installer.
func (p *Pixie) Apply(_ context.Context, d *agentv1.Desired) error {
	pd := d.GetPixie()
	if pd == nil {
		return errors.New("desired document has no pixie part")
	}
	for _, u := range []string{pd.GetKernelUrl(), pd.GetInitramfsUrl()} {
		if u == "" {
			continue
		}
		if _, err := cache.CheckURL(u); err != nil {
			return fmt.Errorf("pixie document: %w", err)
		}
	}
	p.doc.Store(pd)
	p.log.Info("pixie document applied", "revision", d.GetRevision(), "partition", pd.GetPartitionId(), "kernel", pd.GetKernelUrl(), "initramfs", pd.GetInitramfsUrl())
	select {
	case p.fetch <- struct{}{}:
	default:
	}
	return nil
}

// Document is the pixie document in effect (nil: none yet).
func (p *Pixie) Document() *agentv1.PixieDocument { return p.doc.Load() }

// HTTPAddr is where the HTTP server listens (after Start); the first
// address when it listens on several (HTTPAddrs).
func (p *Pixie) HTTPAddr() net.Addr {
	if len(p.httpAddrs) == 0 {
		return nil
	}
	return p.httpAddrs[0]
}

// HTTPAddrs are all addresses the HTTP server listens on (after Start).
func (p *Pixie) HTTPAddrs() []net.Addr { return p.httpAddrs }

// httpPort is the HTTP port clients of one family reach: that of the
// listener on an address of the family, else of a wildcard one.
func (p *Pixie) httpPort(v6 bool) int {
	port := 0
	for _, a := range p.httpAddrs {
		ta := a.(*net.TCPAddr)
		ip, _ := netip.AddrFromSlice(ta.IP)
		switch {
		case ip.IsUnspecified() && port == 0:
			port = ta.Port
		case !ip.IsUnspecified() && ip.Unmap().Is6() == v6:
			return ta.Port
		}
	}
	return port
}

// listenAddrs expands a listen address: with RelayedOnly one without a
// host becomes one per server address. The boot URLs and siaddr name
// those addresses, and the management host pixie runs on may sit on
// other networks that have no business with its boot services.
func (p *Pixie) listenAddrs(listen string) ([]string, error) {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, err
	}
	if !p.cfg.RelayedOnly || host != "" {
		return []string{listen}, nil
	}
	var out []string
	for _, ip := range []netip.Addr{p.cfg.ServerIP, p.cfg.ServerIP6} {
		if ip.IsValid() {
			out = append(out, net.JoinHostPort(ip.String(), port))
		}
	}
	return out, nil
}

// Leases is the lease store (tests, debugging).
func (p *Pixie) Leases() *lease.Store { return p.leases }

func baseURL(public string, ip netip.Addr, port int) string {
	if public != "" {
		return strings.TrimRight(public, "/")
	}
	if !ip.IsValid() {
		return ""
	}
	return "http://" + netip.AddrPortFrom(ip, uint16(port)).String()
}

// Start opens every socket (so that a port in use fails here, not later)
// and serves until ctx ends or a server fails; Wait returns then.
func (p *Pixie) Start(ctx context.Context) error {
	cfg := p.cfg
	ctx, cancel := context.WithCancel(ctx)
	p.cancel = cancel
	var closers []func()
	fail := func(err error) error {
		for _, c := range closers {
			c()
		}
		cancel()
		return err
	}

	httpAddrs, err := p.listenAddrs(cfg.HTTPListen)
	if err != nil {
		return fail(fmt.Errorf("pixie: --http-listen: %w", err))
	}
	var hls []net.Listener
	for _, a := range httpAddrs {
		hl, err := net.Listen("tcp", a)
		if err != nil {
			return fail(fmt.Errorf("pixie: http: %w", err))
		}
		closers = append(closers, func() { hl.Close() })
		hls = append(hls, hl)
		p.httpAddrs = append(p.httpAddrs, hl.Addr())
	}
	boot4 := dhcp.Boot{BaseURL: baseURL(cfg.PublicURL, cfg.ServerIP, p.httpPort(false)), BIOSFile: cfg.BIOSFile, EFIFile: cfg.EFIFile}
	boot6 := dhcp.Boot{BaseURL: baseURL(cfg.PublicURL6, cfg.ServerIP6, p.httpPort(true)), BIOSFile: cfg.BIOSFile, EFIFile: cfg.EFIFile}
	if cfg.ServerIP6.IsValid() {
		boot6.TFTPHost = "[" + cfg.ServerIP6.String() + "]"
	}

	type server struct {
		name string
		run  func(ctx context.Context) error
	}
	var servers []server

	if cfg.Range4.First.IsValid() {
		s4, err := dhcp.NewServer4(dhcp.Config4{
			Interface: cfg.Interface, ServerIP: cfg.ServerIP, Prefix: cfg.Subnet, RelayedOnly: cfg.RelayedOnly, Pool: lease.Pool{Range: cfg.Range4},
			Routers: cfg.Routers, DNS: cfg.DNS, Domain: cfg.Domain, LeaseTime: cfg.LeaseTime, Boot: boot4,
			Leases: p.leases, Log: p.log.With("part", "dhcp4"), Metrics: p.metrics,
		})
		if err != nil {
			return fail(err)
		}
		conn, err := s4.Listen()
		if err != nil {
			return fail(err)
		}
		closers = append(closers, func() { conn.Close() })
		servers = append(servers, server{"dhcp4", func(ctx context.Context) error { return s4.Serve(ctx, conn) }})
	}
	if b := cfg.BMC; b.Range.First.IsValid() {
		sb, err := dhcp.NewServer4(dhcp.Config4{
			Interface: b.Interface, ServerIP: b.ServerIP, Prefix: b.Subnet, Plain: true, Pool: lease.Pool{Range: b.Range},
			Routers: b.Routers, LeaseTime: b.LeaseTime, Leases: p.leases, Log: p.log.With("part", "dhcp4-bmc"), Metrics: p.metrics,
		})
		if err != nil {
			return fail(fmt.Errorf("bmc network: %w", err))
		}
		conn, err := sb.Listen()
		if err != nil {
			return fail(fmt.Errorf("bmc network: %w", err))
		}
		closers = append(closers, func() { conn.Close() })
		servers = append(servers, server{"dhcp4-bmc", func(ctx context.Context) error { return sb.Serve(ctx, conn) }})
	}
	if cfg.Range6.First.IsValid() {
		ifi, err := net.InterfaceByName(cfg.Interface)
		if err != nil {
			return fail(fmt.Errorf("pixie: %w", err))
		}
		s6, err := dhcp.NewServer6(dhcp.Config6{
			Interface: cfg.Interface, Prefix: cfg.Subnet6, RelayedOnly: cfg.RelayedOnly, ServerIP: cfg.ServerIP6,
			ServerMAC: ifi.HardwareAddr, Pool: lease.Pool{Range: cfg.Range6, Exclude: []netip.Addr{cfg.ServerIP6}},
			DNS: cfg.DNS6, LeaseTime: cfg.LeaseTime, Boot: boot6, Leases: p.leases, Log: p.log.With("part", "dhcp6"), Metrics: p.metrics,
		})
		if err != nil {
			return fail(err)
		}
		conn, err := s6.Listen()
		if err != nil {
			return fail(err)
		}
		closers = append(closers, func() { conn.Close() })
		servers = append(servers, server{"dhcp6", func(ctx context.Context) error { return s6.Serve(ctx, conn) }})
	}
	if cfg.TFTPListen != "" {
		ts := tftp.New(cfg.IPXEDir, p.log.With("part", "tftp"), p.metrics)
		addrs, err := p.listenAddrs(cfg.TFTPListen)
		if err != nil {
			return fail(fmt.Errorf("pixie: --tftp-listen: %w", err))
		}
		for _, a := range addrs {
			host, tport, _ := net.SplitHostPort(a)
			// The TFTP library keys its IPv4/IPv6 handling on the socket,
			// so each family gets its own.
			var nets []string
			switch ip, err := netip.ParseAddr(host); {
			case err == nil && ip.Is6() && !ip.Is4In6():
				nets = []string{"udp6"}
			case err == nil:
				nets = []string{"udp4"}
			default:
				nets = []string{"udp4"}
				if cfg.Range6.First.IsValid() && host == "" {
					nets = append(nets, "udp6")
				}
			}
			for _, network := range nets {
				conn, err := net.ListenPacket(network, net.JoinHostPort(host, tport))
				if err != nil {
					return fail(fmt.Errorf("pixie: tftp: %w", err))
				}
				closers = append(closers, func() { conn.Close() })
				servers = append(servers, server{"tftp-" + network, func(ctx context.Context) error { return ts.Serve(ctx, conn) }})
			}
		}
	}
	if cfg.RA {
		rcfg := ra.Config{Interface: cfg.Interface, Prefixes: cfg.RAPrefixes, Managed: cfg.Range6.First.IsValid(), Interval: cfg.RAInterval, Log: p.log.With("part", "ra")}
		servers = append(servers, server{"ra", func(ctx context.Context) error { return ra.Run(ctx, rcfg) }})
	}

	ws, err := web.New(web.Config{
		Decider: p.decider, Cache: p.cache, IPXEDir: cfg.IPXEDir, CAFile: cfg.CAFile,
		Kernel: cfg.Kernel, Initramfs: cfg.Initramfs, Document: p.doc.Load,
		Address: func(mac string, v6 bool) string {
			if l, ok := p.leases.ByMAC(mac, v6); ok {
				return l.Addr.String()
			}
			return ""
		},
		ServesDHCP: func(v6 bool) bool {
			if v6 {
				return cfg.Range6.First.IsValid()
			}
			return cfg.Range4.First.IsValid()
		},
		Emit:      func(e *agentv1.Event) { p.agent.Emit(nil, e) },
		PublicURL: cfg.PublicURL, PublicURL6: cfg.PublicURL6, ImagePrefixes: cfg.ImagePrefixes,
		Gatherer: p.reg, Health: p.health, Log: p.log.With("part", "http"), Metrics: p.metrics,
	})
	if err != nil {
		return fail(err)
	}
	hs := web.NewHTTPServer(ws, p.log)
	servers = append(servers,
		server{"http", func(ctx context.Context) error {
			stop := context.AfterFunc(ctx, func() {
				sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
				defer c()
				if hs.Shutdown(sctx) != nil {
					hs.Close()
				}
			})
			defer stop()
			errs := make(chan error, len(hls))
			for _, hl := range hls {
				go func() { errs <- hs.Serve(hl) }()
			}
			var first error
			for range hls {
				if err := <-errs; !errors.Is(err, http.ErrServerClosed) && first == nil {
					first = err
					hs.Close() // the other listeners stop with it
				}
			}
			return first
		}},
		server{"agent", p.agent.Run},
		server{"prefetch", p.prefetch},
	)

	for _, s := range servers {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			err := s.run(ctx)
			if err != nil && ctx.Err() == nil {
				p.log.Error("stopping: part failed", "part", s.name, "err", err)
				p.errMu.Lock()
				if p.err == nil {
					p.err = fmt.Errorf("%s: %w", s.name, err)
				}
				p.errMu.Unlock()
				cancel()
			}
		}()
	}
	p.log.Info("metal-pixie serving", "name", cfg.Name, "http", p.httpAddrs, "relayed_only", cfg.RelayedOnly, "dhcp4", rangeOrOff(cfg.Range4), "dhcp6", rangeOrOff(cfg.Range6),
		"dhcp4_bmc", rangeOrOff(cfg.BMC.Range),
		"tftp", cfg.TFTPListen, "ra", cfg.RA, "boot_url", boot4.BaseURL, "boot_url6", boot6.BaseURL)
	return nil
}

func rangeOrOff(r lease.Range) string {
	if !r.First.IsValid() {
		return "off"
	}
	return r.String()
}

// Wait returns when every part stopped: the first failure, or nil after
// ctx ended.
func (p *Pixie) Wait() error {
	p.wg.Wait()
	p.central.Close()
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.err
}

// Run is Start and Wait.
func (p *Pixie) Run(ctx context.Context) error {
	if err := p.Start(ctx); err != nil {
		return err
	}
	return p.Wait()
}

// prefetch downloads the document's installer into the cache as soon as
// the document arrives, so that the first machine does not wait for it
// and the partition has it when central goes away.
func (p *Pixie) prefetch(ctx context.Context) error {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.fetch:
		case <-retry.C:
		}
		doc := p.doc.Load()
		if doc == nil {
			continue
		}
		var urls []string
		if p.cfg.Kernel == "" && doc.GetKernelUrl() != "" {
			urls = append(urls, doc.GetKernelUrl())
		}
		if p.cfg.Initramfs == "" && doc.GetInitramfsUrl() != "" {
			urls = append(urls, doc.GetInitramfsUrl())
		}
		ok := true
		for _, u := range urls {
			if _, err := p.cache.Artifact(ctx, u); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				p.log.Warn("prefetch installer artifact; retrying in 30s", "url", u, "err", err)
				ok = false
			}
		}
		if !ok {
			retry.Reset(30 * time.Second)
			continue
		}
		if len(urls) > 0 {
			p.cache.Prune(doc.GetKernelUrl(), doc.GetInitramfsUrl())
		}
	}
}

func (p *Pixie) health() any {
	doc := p.doc.Load()
	return map[string]any{
		"status":            "ok",
		"name":              p.cfg.Name,
		"central_connected": p.agent.Connected(),
		"agent_phase":       string(p.agent.Phase()),
		"document_revision": p.agent.Applied(),
		"partition":         doc.GetPartitionId(),
		"leases_in_use":     map[string]int{"4": p.leases.InUse(false), "6": p.leases.InUse(true)},
	}
}

// ParseAddrs reads a comma-separated list of addresses (flags).
func ParseAddrs(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		a, err := netip.ParseAddr(f)
		if err != nil {
			return nil, err
		}
		out = append(out, a.Unmap())
	}
	return out, nil
}
