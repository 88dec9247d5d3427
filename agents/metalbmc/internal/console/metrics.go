package console

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	active   prometheus.Gauge
	sessions *prometheus.CounterVec
	bytes    *prometheus.CounterVec
}

func newMetrics() *metrics {
	return &metrics{
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: "metalfleet_bmc_console_sessions_active",
			Help: "Console sessions metal-bmc serves now."}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "metalfleet_bmc_console_sessions_total",
			Help: "Console sessions by result: joined, bmc_failed (the BMC's console could not be opened), central_failed."}, []string{"result"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "metalfleet_bmc_console_bytes_total",
			Help: "Console bytes: in (typed, to the BMC), out (the machine's output)."}, []string{"direction"}),
	}
}

// Describe implements prometheus.Collector.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	m.active.Describe(ch)
	m.sessions.Describe(ch)
	m.bytes.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	m.active.Collect(ch)
	m.sessions.Collect(ch)
	m.bytes.Collect(ch)
}
