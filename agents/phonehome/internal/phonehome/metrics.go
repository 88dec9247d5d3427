package phonehome

import "github.com/prometheus/client_golang/prometheus"

// Metrics of the phone-home (the runtime's connection metrics are
// agent.Metrics).
type Metrics struct {
	phonedHomeTotal  prometheus.Counter
	rebootsTotal     prometheus.Counter
	rebootFailures   prometheus.Counter
	rebootGeneration prometheus.Gauge
}

// NewMetrics registers the phone-home metrics with reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	const ns, sub = "metalfleet", "phonehome"
	m := &Metrics{
		phonedHomeTotal: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "phoned_home_total",
			Help: "\"Phoned Home\" events emitted (one per allocation)."}),
		rebootsTotal: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reboots_total",
			Help: "Planned reboots started for a grown reboot generation."}),
		rebootFailures: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "reboot_failures_total",
			Help: "Planned reboots the system refused."}),
		rebootGeneration: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: ns, Subsystem: sub, Name: "reboot_generation",
			Help: "Reboot generation executed last (or the baseline); -1 before the first machine document."}),
	}
	m.rebootGeneration.Set(-1)
	reg.MustRegister(m.phonedHomeTotal, m.rebootsTotal, m.rebootFailures, m.rebootGeneration)
	return m
}

// The methods accept a nil receiver: a phone-home without metrics.

func (m *Metrics) phonedHome() {
	if m != nil {
		m.phonedHomeTotal.Inc()
	}
}

func (m *Metrics) reboot() {
	if m != nil {
		m.rebootsTotal.Inc()
	}
}

func (m *Metrics) rebootFailed() {
	if m != nil {
		m.rebootFailures.Inc()
	}
}

func (m *Metrics) setGeneration(gen *uint64) {
	if m != nil && gen != nil {
		m.rebootGeneration.Set(float64(*gen))
	}
}
