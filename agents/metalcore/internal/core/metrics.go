package core

import "github.com/prometheus/client_golang/prometheus"

// metrics of one metal-core. Every method accepts a nil receiver.
type metrics struct {
	duration *prometheus.HistogramVec
	errors   *prometheus.CounterVec
	writes   prometheus.Counter
	reloads  prometheus.Counter
	reports  prometheus.Counter
}

// Operations counted in errors_total.
const (
	opDocument = "document" // the document was refused
	opSONiC    = "sonic"    // CONFIG_DB apply
	opFRR      = "frr"      // frr.conf render, check, reload
	opFacts    = "facts"    // reading ports, LLDP, device
	opBGP      = "bgp"      // reading BGP sessions
	opWatch    = "watch"    // keyspace notifications
)

func newMetrics(reg prometheus.Registerer) *metrics {
	const ns, sub = "metalfleet", "core"
	m := &metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Subsystem: sub, Name: "sync_duration_seconds",
			Help:    "Duration of applying a switch document, by part (sonic, frr, total).",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}}, []string{"part"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "errors_total",
			Help: "Failures by operation (document, sonic, frr, facts, bgp, watch)."}, []string{"operation"}),
		writes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "configdb_writes_total",
			Help: "HSET and DEL commands written to CONFIG_DB; a re-apply of the same document writes none."}),
		reloads: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "frr_reloads_total",
			Help: "frr.conf files swapped in and reloaded."}),
		reports: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "facts_reports_total",
			Help: "Facts reported to central because they changed."}),
	}
	reg.MustRegister(m.duration, m.errors, m.writes, m.reloads, m.reports)
	return m
}

func (m *metrics) observe(part string, seconds float64) {
	if m != nil {
		m.duration.WithLabelValues(part).Observe(seconds)
	}
}

func (m *metrics) fail(op string) {
	if m != nil {
		m.errors.WithLabelValues(op).Inc()
	}
}

func (m *metrics) wrote(n int) {
	if m != nil && n > 0 {
		m.writes.Add(float64(n))
	}
}

func (m *metrics) reloaded() {
	if m != nil {
		m.reloads.Inc()
	}
}

func (m *metrics) reported() {
	if m != nil {
		m.reports.Inc()
	}
}
