// Package relay is metal-core's agent relay. Once a machine's ports are in
// its tenant VRF, nothing in that VRF routes to central or the management
// network; the installed system still has to reach central (its
// documents: reboot intents, later routing and firewall). The relay
// listens on the link-local address of each tenant port of the leaf — the
// router address the machine learns on its uplink, as a cloud's metadata
// service sits at a link-local address — and forwards the bytes of each
// connection to central's agent endpoint, and nowhere else. TLS runs end to
// end between the machine's agent and central: the relay sees ciphertext
// only, never a credential. Connections are bounded per port, so one
// tenant cannot exhaust the leaf.
package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Config of a relay.
type Config struct {
	// Port is the TCP port the relay listens on at each tenant port's
	// link-local address (default 4443).
	Port int
	// Upstreams are central's agent endpoints (host:port); a connection
	// goes to the first that answers, starting at a random one.
	Upstreams []string
	// PerPort bounds the open connections of one switch port (default 8:
	// an installed system holds one stream, a reconnect may overlap).
	PerPort int
	// DialTimeout bounds the connection to an upstream (default 5s).
	DialTimeout time.Duration
	Log         *slog.Logger
	// Metrics may be nil.
	Metrics *Metrics
}

// Relay is the set of listeners, one per tenant port.
type Relay struct {
	cfg   Config
	mu    sync.Mutex
	ports map[string]*listener
}

// listener is the relay on one switch port.
type listener struct {
	port  string
	lis   net.Listener
	slots chan struct{}
	mu    sync.Mutex
	conns map[net.Conn]struct{}
	done  chan struct{}
}

// New makes a relay listening nowhere yet; Set gives it its ports.
func New(cfg Config) (*Relay, error) {
	if len(cfg.Upstreams) == 0 {
		return nil, errors.New("relay: at least one upstream (central's agent endpoint) required")
	}
	if cfg.Port == 0 {
		cfg.Port = 4443
	}
	if cfg.PerPort <= 0 {
		cfg.PerPort = 8
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Relay{cfg: cfg, ports: map[string]*listener{}}, nil
}

// Set makes the relay listen on exactly ports (Linux interface names): new
// ones start, ones no longer named stop and end their connections. A port
// without a link-local address yet (just moved into its VRF, link down)
// is an error for that port alone; the next Set tries it again.
func (r *Relay) Set(ctx context.Context, ports []string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for name, l := range r.ports {
		if !slices.Contains(ports, name) {
			l.close()
			delete(r.ports, name)
			r.cfg.Log.Info("relay stopped", "port", name)
		}
	}
	for _, name := range ports {
		if _, ok := r.ports[name]; ok {
			continue
		}
		l, err := r.listen(ctx, name)
		if err != nil {
			errs = append(errs, fmt.Errorf("relay on %s: %w", name, err))
			continue
		}
		r.ports[name] = l
		r.cfg.Log.Info("relay listening", "port", name, "addr", l.lis.Addr().String())
	}
	r.cfg.Metrics.setPorts(len(r.ports))
	return errors.Join(errs...)
}

// Ports are the ports the relay listens on now.
func (r *Relay) Ports() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]string, 0, len(r.ports))
	for p := range r.ports {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Close stops every listener and connection.
func (r *Relay) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for name, l := range r.ports {
		l.close()
		delete(r.ports, name)
	}
	r.cfg.Metrics.setPorts(0)
}

// LinkLocal is the IPv6 link-local address of interface name.
func LinkLocal(name string) (netip.Addr, error) {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return netip.Addr{}, err
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is6() && p.Addr().IsLinkLocalUnicast() {
			return p.Addr().WithZone(name), nil
		}
	}
	return netip.Addr{}, fmt.Errorf("no IPv6 link-local address on %s", name)
}

func (r *Relay) listen(ctx context.Context, port string) (*listener, error) {
	addr, err := LinkLocal(port)
	if err != nil {
		return nil, err
	}
	// A link-local address with its zone binds the socket to the port's
	// device: only what arrives on that port reaches it, whatever VRF the
	// port is in.
	var lc net.ListenConfig
	lis, err := lc.Listen(ctx, "tcp6", net.JoinHostPort(addr.String(), strconv.Itoa(r.cfg.Port)))
	if err != nil {
		return nil, err
	}
	l := &listener{port: port, lis: lis, slots: make(chan struct{}, r.cfg.PerPort), conns: map[net.Conn]struct{}{}, done: make(chan struct{})}
	go r.accept(l)
	return l, nil
}

func (r *Relay) accept(l *listener) {
	for {
		c, err := l.lis.Accept()
		if err != nil {
			select {
			case <-l.done:
				return
			default:
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			r.cfg.Log.Warn("relay accept", "port", l.port, "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		select {
		case l.slots <- struct{}{}:
		default:
			// Over the port's bound: closed at once, nothing forwarded.
			r.cfg.Metrics.refused(l.port)
			c.Close()
			continue
		}
		if !l.track(c) {
			<-l.slots
			c.Close()
			return
		}
		go func() {
			defer func() { <-l.slots }()
			defer l.untrack(c)
			r.forward(l.port, c)
		}()
	}
}

// forward copies c to an upstream and back until either side ends.
func (r *Relay) forward(port string, c net.Conn) {
	defer c.Close()
	up, err := r.dialUpstream()
	if err != nil {
		r.cfg.Metrics.failed(port)
		r.cfg.Log.Warn("relay: no upstream answers", "port", port, "err", err)
		return
	}
	defer up.Close()
	r.cfg.Metrics.opened(port)
	defer r.cfg.Metrics.closed(port)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn, dir string) {
		n, _ := io.Copy(dst, src)
		r.cfg.Metrics.bytes(dir, n)
		// Half-close: the other direction may still have bytes to carry.
		if tc, ok := dst.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(up, c, "up")
	go pipe(c, up, "down")
	<-done
	<-done
}

func (r *Relay) dialUpstream() (net.Conn, error) {
	d := net.Dialer{Timeout: r.cfg.DialTimeout}
	n := len(r.cfg.Upstreams)
	first := rand.N(n)
	var errs []error
	for i := range n {
		addr := r.cfg.Upstreams[(first+i)%n]
		c, err := d.Dial("tcp", addr)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

func (l *listener) track(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.done:
		return false
	default:
	}
	l.conns[c] = struct{}{}
	return true
}

func (l *listener) untrack(c net.Conn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.conns, c)
}

// close stops accepting and ends the port's connections: a port that left
// its tenant VRF (freed machine) must not keep a way to central open.
func (l *listener) close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	select {
	case <-l.done:
		return
	default:
	}
	close(l.done)
	l.lis.Close()
	for c := range l.conns {
		c.Close()
	}
}

// Metrics of the relay.
type Metrics struct {
	ports       prometheus.Gauge
	open        *prometheus.GaugeVec
	connections *prometheus.CounterVec
	refusals    *prometheus.CounterVec
	failures    *prometheus.CounterVec
	byteCount   *prometheus.CounterVec
}

// NewMetrics registers the relay's metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "metalfleet", "metalcore_relay"
	m := &Metrics{
		ports: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "ports",
			Help: "Switch ports the agent relay listens on (the tenant ports)."}),
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "open_connections",
			Help: "Relayed connections open now, by switch port."}, []string{"port"}),
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "connections_total",
			Help: "Connections relayed to central, by switch port."}, []string{"port"}),
		refusals: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "refused_total",
			Help: "Connections closed at once: the port's bound of open connections was reached."}, []string{"port"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "upstream_failures_total",
			Help: "Connections closed because no central endpoint answered."}, []string{"port"}),
		byteCount: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "bytes_total",
			Help: "Bytes relayed: up (machine to central), down (central to machine)."}, []string{"direction"}),
	}
	reg.MustRegister(m.ports, m.open, m.connections, m.refusals, m.failures, m.byteCount)
	return m
}

// The methods accept a nil receiver.

func (m *Metrics) setPorts(n int) {
	if m != nil {
		m.ports.Set(float64(n))
	}
}

func (m *Metrics) opened(port string) {
	if m != nil {
		m.connections.WithLabelValues(port).Inc()
		m.open.WithLabelValues(port).Inc()
	}
}

func (m *Metrics) closed(port string) {
	if m != nil {
		m.open.WithLabelValues(port).Dec()
	}
}

func (m *Metrics) refused(port string) {
	if m != nil {
		m.refusals.WithLabelValues(port).Inc()
	}
}

func (m *Metrics) failed(port string) {
	if m != nil {
		m.failures.WithLabelValues(port).Inc()
	}
}

func (m *Metrics) bytes(dir string, n int64) {
	if m != nil && n > 0 {
		m.byteCount.WithLabelValues(dir).Add(float64(n))
	}
}
