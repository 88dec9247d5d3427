package fleet

import (
	"fmt"
	"net"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TLSGate admits TLS handshakes at the rate central can finish them. After
// a restart the whole fleet dials at once; started all together, ten
// thousand handshakes share two cores, each takes as long as all of them,
// and the agents' timers run out on work that is thrown away. With a gate
// a bounded number run at a time and finish quickly; the others wait for a
// slot (their TCP connection is already accepted) up to a bound, and are
// then shed: closed, to come back after their backoff. Metrics say how
// many started, completed, failed and were shed, how many wait and how
// long.
type TLSGate struct {
	slots     chan struct{}
	wait      time.Duration
	started   prometheus.Counter
	completed prometheus.Counter
	failed    prometheus.Counter
	shed      prometheus.Counter
	waiting   prometheus.Gauge
	waited    prometheus.Histogram
}

// DefaultTLSSlots is the default number of concurrent handshakes: enough
// to keep every core busy while handshakes wait on the network, few enough
// that each finishes in milliseconds.
func DefaultTLSSlots() int { return 32 * runtime.GOMAXPROCS(0) }

// NewTLSGate admits slots handshakes at once (≤ 0: DefaultTLSSlots) and
// lets a connection wait up to wait for a slot (≤ 0: 10 s).
func NewTLSGate(slots int, wait time.Duration) *TLSGate {
	if slots <= 0 {
		slots = DefaultTLSSlots()
	}
	if wait <= 0 {
		wait = 10 * time.Second
	}
	const ns, sub = "metalfleet", "central"
	counter := func(name, help string) prometheus.Counter {
		return prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: name, Help: help})
	}
	return &TLSGate{
		slots:     make(chan struct{}, slots),
		wait:      wait,
		started:   counter("tls_handshakes_started_total", "TLS handshakes admitted by the gate and started."),
		completed: counter("tls_handshakes_completed_total", "TLS handshakes completed (full or resumed)."),
		failed:    counter("tls_handshakes_failed_total", "TLS handshakes started that failed (the peer left, timed out or spoke no TLS)."),
		shed:      counter("tls_handshakes_shed_total", "Connections closed unhandshaken: no slot within the wait (--tls-handshake-wait)."),
		waiting: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "tls_handshakes_waiting",
			Help: "Connections waiting for a handshake slot now."}),
		waited: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "tls_handshake_wait_seconds",
			Help: "Time connections waited for a handshake slot.", Buckets: prometheus.ExponentialBuckets(0.001, 4, 8)}),
	}
}

// admit waits for a slot; false: shed. release gives the slot back.
func (g *TLSGate) admit() bool {
	select {
	case g.slots <- struct{}{}:
		g.waited.Observe(0)
		g.started.Inc()
		return true
	default:
	}
	g.waiting.Inc()
	defer g.waiting.Dec()
	start := time.Now()
	t := time.NewTimer(g.wait)
	defer t.Stop()
	select {
	case g.slots <- struct{}{}:
		g.waited.Observe(time.Since(start).Seconds())
		g.started.Inc()
		return true
	case <-t.C:
		g.shed.Inc()
		return false
	}
}

func (g *TLSGate) release(err error) {
	<-g.slots
	if err != nil {
		g.failed.Inc()
	} else {
		g.completed.Inc()
	}
}

// handshake runs hs inside a slot, or closes raw when none comes.
func (g *TLSGate) handshake(raw net.Conn, hs func() error) error {
	if g == nil {
		return hs()
	}
	if !g.admit() {
		raw.Close()
		return fmt.Errorf("tls handshake shed: %d in progress, none finished within %s", cap(g.slots), g.wait)
	}
	err := hs()
	g.release(err)
	return err
}

// Describe implements prometheus.Collector.
func (g *TLSGate) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range g.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (g *TLSGate) Collect(ch chan<- prometheus.Metric) {
	for _, c := range g.collectors() {
		c.Collect(ch)
	}
}

func (g *TLSGate) collectors() []prometheus.Collector {
	return []prometheus.Collector{g.started, g.completed, g.failed, g.shed, g.waiting, g.waited}
}
