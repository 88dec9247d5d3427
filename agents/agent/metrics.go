package agent

import (
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// NewRegistry is the registry an agent process serves on /metrics: the Go
// runtime and process collectors, to which the process adds NewMetrics and
// its own. A registry of our own rather than the default one, which
// packages may register into behind our back.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Metrics of the agents of one process (one agent, or a simulated fleet);
// gauges are sums over those agents.
type Metrics struct {
	connected   prometheus.Gauge
	lag         prometheus.Gauge
	reconnects  prometheus.Counter
	applyErrors prometheus.Counter
	documents   prometheus.Counter
	rejected    prometheus.Counter
	handshakes  *prometheus.CounterVec
	hsTimeouts  prometheus.Counter
	// counts mirror the handshake counters for the fleet simulator.
	counts [handshakeOutcomes + 1]atomic.Uint64
}

// Handshake outcomes; counts[handshakeOutcomes] holds timeouts.
const (
	handshakeFull = iota
	handshakeResumed
	handshakeFailed
	handshakeOutcomes
)

func handshakeLabel(outcome int) string {
	return [handshakeOutcomes]string{"full", "resumed", "failed"}[outcome]
}

// HandshakeCounts are the TLS handshakes of the agents of one Metrics:
// completed in full, completed by resuming a session, failed; and
// attempts that ran out of HandshakeTimeout before central's welcome.
type HandshakeCounts struct {
	Full, Resumed, Failed, TimedOut uint64
}

// Sub is c minus an earlier reading.
func (c HandshakeCounts) Sub(earlier HandshakeCounts) HandshakeCounts {
	return HandshakeCounts{c.Full - earlier.Full, c.Resumed - earlier.Resumed, c.Failed - earlier.Failed, c.TimedOut - earlier.TimedOut}
}

// Handshakes reads the handshake counts (zero for nil).
func (m *Metrics) Handshakes() HandshakeCounts {
	if m == nil {
		return HandshakeCounts{}
	}
	return HandshakeCounts{
		Full:     m.counts[handshakeFull].Load(),
		Resumed:  m.counts[handshakeResumed].Load(),
		Failed:   m.counts[handshakeFailed].Load(),
		TimedOut: m.counts[handshakeOutcomes].Load(),
	}
}

func (m *Metrics) handshake(outcome int) {
	if m != nil {
		m.counts[outcome].Add(1)
		m.handshakes.WithLabelValues(handshakeLabel(outcome)).Inc()
	}
}

func (m *Metrics) handshakeTimeout() {
	if m != nil {
		m.counts[handshakeOutcomes].Add(1)
		m.hsTimeouts.Inc()
	}
}

// NewMetrics registers the agent metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "metalfleet", "agent"
	m := &Metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "connected",
			Help: "Agents holding a stream to central (1 for a single agent)."}),
		lag: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "revision_lag",
			Help: "Desired revisions received but not yet applied, summed over agents."}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reconnects_total",
			Help: "Streams that ended and were dialled again."}),
		applyErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "apply_errors_total",
			Help: "Desired documents the reconciler failed to apply."}),
		documents: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "documents_received_total",
			Help: "Desired documents received from central."}),
		rejected: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reports_rejected_total",
			Help: "Reports dropped because central can never store them (or they cannot be encoded); the agent's log says why."}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "tls_handshakes_total",
			Help: "TLS handshakes with central by outcome: full, resumed (a kept session, a fraction of the cost), failed."}, []string{"outcome"}),
		hsTimeouts: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "handshake_timeouts_total",
			Help: "Connection attempts that got no welcome within the handshake timeout (which then doubles)."}),
	}
	for o := range handshakeOutcomes {
		m.handshakes.WithLabelValues(handshakeLabel(o))
	}
	reg.MustRegister(m.connected, m.lag, m.reconnects, m.applyErrors, m.documents, m.rejected, m.handshakes, m.hsTimeouts)
	return m
}

// The methods accept a nil receiver: an agent without metrics.

func (m *Metrics) connect(delta float64) {
	if m != nil {
		m.connected.Add(delta)
	}
}

func (m *Metrics) reconnect() {
	if m != nil {
		m.reconnects.Inc()
	}
}

func (m *Metrics) applyError() {
	if m != nil {
		m.applyErrors.Inc()
	}
}

func (m *Metrics) document() {
	if m != nil {
		m.documents.Inc()
	}
}

func (m *Metrics) addLag(delta int64) {
	if m != nil && delta != 0 {
		m.lag.Add(float64(delta))
	}
}

func (m *Metrics) reportRejected() {
	if m != nil {
		m.rejected.Inc()
	}
}
