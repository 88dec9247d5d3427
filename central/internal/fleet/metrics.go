package fleet

import "github.com/prometheus/client_golang/prometheus"

// metrics of the hub; one set per replica.
type metrics struct {
	streams      *prometheus.GaugeVec
	handshakes   *prometheus.CounterVec
	sent         prometheus.Counter
	propagation  prometheus.Histogram
	resyncHealed prometheus.Counter
	flushErrors  prometheus.Counter
	events       prometheus.Counter
	bootTokens   *prometheus.CounterVec
	reports      *prometheus.CounterVec
}

func newMetrics() *metrics {
	const ns, sub = "metalfleet", "fleet"
	return &metrics{
		streams: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "streams",
			Help: "Agent streams open on this replica, by agent kind."}, []string{"kind"}),
		handshakes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "handshakes_total",
			Help: "Stream handshakes by result (ok, shed, invalid, unauthenticated, denied, error)."}, []string{"result"}),
		sent: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "documents_sent_total",
			Help: "Desired documents sent to agents."}),
		propagation: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "propagation_seconds",
			Help:    "Time from a document's change to its send on the agent's stream.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		resyncHealed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "resync_healed_total",
			Help: "Agents found behind by the periodic resync (a hint was lost)."}),
		flushErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "observed_flush_errors_total",
			Help: "Failed writes of batched contact and observed state (retried)."}),
		events: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "events_total",
			Help: "Agent events stored."}),
		bootTokens: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "boot_tokens_total",
			Help: "Boot tokens by result: minted, exchanged, refused (the partition's cap of unused tokens)."}, []string{"result"}),
		reports: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reports_total",
			Help: "Agent reports by result: stored, duplicate (sent again, stored before), rejected (never stored), failed (not stored now; the agent sends it again)."}, []string{"result"}),
	}
}

func (m *metrics) collectors() []prometheus.Collector {
	return []prometheus.Collector{m.streams, m.handshakes, m.sent, m.propagation, m.resyncHealed, m.flushErrors, m.events, m.bootTokens, m.reports}
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range m.collectors() {
		c.Describe(ch)
	}
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	for _, c := range m.collectors() {
		c.Collect(ch)
	}
}
