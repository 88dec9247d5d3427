package fleet

import (
	"time"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Thresholds derive liveliness from the last contact with an agent.
type Thresholds struct {
	// Alive: contact within this long. Three default heartbeats plus the
	// flush interval, so one lost heartbeat does not flap.
	Alive time.Duration
	// Dead: no contact for longer than this. In between, and for agents
	// never heard from, liveliness is unknown: a network partition and a
	// dead machine look the same for a while.
	Dead time.Duration
}

// DefaultThresholds match DefaultConfig's heartbeat.
func DefaultThresholds() Thresholds {
	return Thresholds{Alive: 70 * time.Second, Dead: 5 * time.Minute}
}

// Liveliness of an agent last heard from at last (nil: never).
func (t Thresholds) Liveliness(last *time.Time, now time.Time) apiv1.Liveliness {
	if last == nil {
		return apiv1.Liveliness_LIVELINESS_UNKNOWN
	}
	switch age := now.Sub(*last); {
	case age <= t.Alive:
		return apiv1.Liveliness_LIVELINESS_ALIVE
	case age > t.Dead:
		return apiv1.Liveliness_LIVELINESS_DEAD
	default:
		return apiv1.Liveliness_LIVELINESS_UNKNOWN
	}
}

// Liveliness of an agent last heard from at last, by the hub's thresholds.
func (h *Hub) Liveliness(last *time.Time) apiv1.Liveliness {
	return h.cfg.Liveliness.Liveliness(last, time.Now())
}
