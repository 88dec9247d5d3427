package redfish

import (
	"fmt"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics of one BMC; a nil *metrics counts nothing. They are the lab's
// emulator's, named metalfleet_lab_bmc_*: metal-bmc, the product's agent
// that talks to these BMCs, exports metalfleet_bmc_*, and one scrape
// config may well collect both.
type metrics struct {
	requests *prometheus.CounterVec
	actions  *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "metalfleet", Subsystem: "lab_bmc", Name: "requests_total",
			Help: "Redfish requests, by method, resource (service_root, system, reset, session, ..., unknown) and HTTP status code."},
			[]string{"method", "resource", "code"}),
		actions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "metalfleet", Subsystem: "lab_bmc", Name: "power_actions_total",
			Help: "Power actions run on the machine, by Redfish ResetType and result (ok, error)."},
			[]string{"action", "result"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.actions} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("redfish: metrics: %w", err)
		}
	}
	return m, nil
}

// knownMethod keeps the method label bounded whatever clients send.
func knownMethod(m string) bool {
	switch m {
	case "GET", "HEAD", "POST", "PATCH", "PUT", "DELETE", "OPTIONS":
		return true
	}
	return false
}

func (m *metrics) request(method, resource string, code int) {
	if m == nil {
		return
	}
	if !knownMethod(method) {
		method = "other"
	}
	m.requests.WithLabelValues(method, resource, strconv.Itoa(code)).Inc()
}

func (m *metrics) powerAction(action string, err error) {
	if m == nil {
		return
	}
	result := "ok"
	if err != nil {
		result = "error"
	}
	m.actions.WithLabelValues(action, result).Inc()
}
