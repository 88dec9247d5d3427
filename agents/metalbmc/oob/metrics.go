package oob

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of one metal-bmc; the names start metalfleet_bmc_ (the lab's
// emulated BMCs use their own prefix).
type metrics struct {
	polls         *prometheus.CounterVec
	pollSeconds   prometheus.Histogram
	targets       prometheus.Gauge
	unreachable   prometheus.Gauge
	intents       *prometheus.CounterVec
	intentSeconds *prometheus.HistogramVec
	reports       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		polls: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "metalfleet_bmc_polls_total",
			Help: "Polls of BMCs by result (ok, error)."}, []string{"result"}),
		pollSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "metalfleet_bmc_poll_seconds",
			Help: "Duration of one BMC poll.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 14)}),
		targets: prometheus.NewGauge(prometheus.GaugeOpts{Name: "metalfleet_bmc_targets",
			Help: "BMCs known (static, machines' own and leased)."}),
		unreachable: prometheus.NewGauge(prometheus.GaugeOpts{Name: "metalfleet_bmc_unreachable",
			Help: "BMCs whose last poll failed."}),
		intents: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "metalfleet_bmc_intents_total",
			Help: "Intents finished by kind and outcome (succeeded, failed, interrupted)."}, []string{"kind", "outcome"}),
		intentSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "metalfleet_bmc_intent_seconds",
			Help: "Duration of one intent's call to the BMC.", Buckets: prometheus.ExponentialBuckets(0.01, 2, 14)}, []string{"kind"}),
		reports: prometheus.NewCounter(prometheus.CounterOpts{Name: "metalfleet_bmc_reports_total",
			Help: "Fact reports handed to the agent runtime."}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.polls, m.pollSeconds, m.targets, m.unreachable, m.intents, m.intentSeconds, m.reports} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("oob metrics: %w", err)
		}
	}
	return m, nil
}
