package console

import "github.com/prometheus/client_golang/prometheus"

// metrics of the broker; one set per replica.
type metrics struct {
	active       prometheus.Gauge
	sessions     *prometheus.CounterVec
	bytes        *prometheus.CounterVec
	duration     prometheus.Histogram
	agentRefused prometheus.Counter
}

func newMetrics() *metrics {
	const ns, sub = "metalfleet", "console"
	return &metrics{
		active: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "sessions_active",
			Help: "Console sessions open on this replica."}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "sessions_total",
			Help: "Console sessions by result: ended (it ran), busy (the machine already had one)."}, []string{"result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "bytes_total",
			Help: "Console bytes of ended sessions: in (typed by people), out (the machines' output)."}, []string{"direction"}),
		duration: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "session_seconds",
			Help: "How long console sessions lasted.", Buckets: prometheus.ExponentialBuckets(1, 4, 10)}),
		agentRefused: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "agent_streams_refused_total",
			Help: "metal-bmc console streams refused (no such session for the agent, or already joined)."}),
	}
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	m.active.Describe(ch)
	m.sessions.Describe(ch)
	m.bytes.Describe(ch)
	m.duration.Describe(ch)
	m.agentRefused.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.active.Collect(ch)
	m.sessions.Collect(ch)
	m.bytes.Collect(ch)
	m.duration.Collect(ch)
	m.agentRefused.Collect(ch)
}
