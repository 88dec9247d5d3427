package agent

import (
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
	}
	reg.MustRegister(m.connected, m.lag, m.reconnects, m.applyErrors, m.documents, m.rejected)
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
