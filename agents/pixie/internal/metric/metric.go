// Package metric holds metal-pixie's Prometheus metrics. Every method
// accepts a nil receiver, so packages run (and are tested) without them.
package metric

import "github.com/prometheus/client_golang/prometheus"

// Metrics of one metal-pixie.
type Metrics struct {
	requests      *prometheus.CounterVec
	decisions     *prometheus.CounterVec
	cache         *prometheus.CounterVec
	centralErrors *prometheus.CounterVec
	events        prometheus.Counter
}

// New registers the metrics with reg.
func New(reg prometheus.Registerer) *Metrics {
	const ns, sub = "metalfleet", "pixie"
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "requests_total",
			Help: "Requests served, by kind (dhcp4, dhcp6, tftp, script, kernel, initramfs, ipxe, image, boot_token, ca) and result."},
			[]string{"kind", "result"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "boot_decisions_total",
			Help: "Boot scripts served, by action (installer, disk) and source (central, cache, document)."},
			[]string{"action", "source"}),
		cache: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "cache_total",
			Help: "Cache lookups of boot artifacts and images, by kind (boot, image) and result (hit, miss, error, mismatch)."},
			[]string{"kind", "result"}),
		centralErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "central_errors_total",
			Help: "Failed Boot calls to central, by gRPC code."},
			[]string{"code"}),
		events: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "pxe_booting_events_total",
			Help: "PXE Booting events queued for central."}),
	}
	reg.MustRegister(m.requests, m.decisions, m.cache, m.centralErrors, m.events)
	return m
}

// Request counts one request of kind with its result.
func (m *Metrics) Request(kind, result string) {
	if m != nil {
		m.requests.WithLabelValues(kind, result).Inc()
	}
}

// Decision counts one boot script.
func (m *Metrics) Decision(action, source string) {
	if m != nil {
		m.decisions.WithLabelValues(action, source).Inc()
	}
}

// Cache counts one cache lookup.
func (m *Metrics) Cache(kind, result string) {
	if m != nil {
		m.cache.WithLabelValues(kind, result).Inc()
	}
}

// CentralError counts one failed call to central.
func (m *Metrics) CentralError(code string) {
	if m != nil {
		m.centralErrors.WithLabelValues(code).Inc()
	}
}

// Event counts one queued event.
func (m *Metrics) Event() {
	if m != nil {
		m.events.Inc()
	}
}
