package fleet

import (
	"context"
	"maps"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// SettingsChange is what an admin changes of an agent's settings
// (agentv1.Settings, part of its desired document).
type SettingsChange struct {
	// LogLevel, when set, becomes the agent's log level.
	LogLevel *string
	// Labels become the agent's labels when ReplaceLabels is set.
	Labels        map[string]string
	ReplaceLabels bool
	// ReportFacts asks the agent to report its facts again.
	ReportFacts bool
}

// apply changes s and reports whether it did: settings that already are
// what the change asks for leave the document, and its revision, alone.
func (c SettingsChange) apply(s *agentv1.Settings) bool {
	changed := false
	if c.LogLevel != nil && s.GetLogLevel() != *c.LogLevel {
		s.LogLevel, changed = *c.LogLevel, true
	}
	if c.ReplaceLabels && !maps.Equal(s.GetLabels(), c.Labels) {
		s.Labels, changed = c.Labels, true
	}
	if c.ReportFacts {
		s.ReportFactsGeneration++
		changed = true
	}
	return changed
}

// ConfigureAgent changes the settings of the agent r names, with its
// audit row, in one transaction, and returns the agent as stored. An
// agent that does not exist is ErrNoAgent.
func (h *Hub) ConfigureAgent(ctx context.Context, r Ref, c SettingsChange) (*apiv1.Agent, error) {
	var out *apiv1.Agent
	err := h.store.Tx(ctx, func(tx pgx.Tx) error {
		ag, err := h.GetAgent(ctx, tx, r, true)
		if err != nil {
			return err
		}
		if _, err := h.Change(ctx, tx, ag.GetId(), func(d *agentv1.Desired) (bool, error) {
			return c.apply(d.GetSettings()), nil
		}); err != nil {
			return err
		}
		if out, err = h.GetAgent(ctx, tx, Ref{ID: ag.GetId()}, false); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "agent/"+ag.GetId(), "")
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
