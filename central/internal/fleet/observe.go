package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// observation is what an agent reported since the last flush; later
// reports overwrite earlier ones, so heartbeats of thousands of agents
// become one UPDATE per flush interval instead of one per heartbeat.
type observation struct {
	at      time.Time
	applied int64 // -1: not reported
	health  string
	message string
	healthy bool // health and message were reported
	facts   *string
}

// observer batches contact and observed state of this replica's agents.
type observer struct {
	st      *store.Store
	log     *slog.Logger
	replica string
	metrics *metrics

	mu      sync.Mutex
	pending map[string]*observation
}

func newObserver(st *store.Store, log *slog.Logger, replica string, m *metrics) *observer {
	return &observer{st: st, log: log, replica: replica, metrics: m, pending: map[string]*observation{}}
}

func (o *observer) entry(id string) *observation {
	e := o.pending[id]
	if e == nil {
		e = &observation{applied: -1}
		o.pending[id] = e
	}
	e.at = time.Now()
	return e
}

// touch records contact without news (a stream that ended).
func (o *observer) touch(id string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.entry(id)
}

func (o *observer) contact(id string, applied uint64) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.entry(id).applied = int64(applied)
}

// hello records a new stream: its contact, the revision the agent runs
// and its facts.
func (o *observer) hello(id string, h *agentv1.Hello) {
	facts := encodeFacts(h.GetFacts())
	o.mu.Lock()
	defer o.mu.Unlock()
	e := o.entry(id)
	e.applied = int64(h.GetLastAppliedRevision())
	if facts != nil {
		e.facts = facts
	}
}

// encodeFacts returns nil for no facts; facts were validated, so they
// always encode.
func encodeFacts(f *agentv1.Facts) *string {
	if f == nil {
		return nil
	}
	b, err := protojson.Marshal(f)
	if err != nil {
		return nil
	}
	s := string(b)
	return &s
}

func (o *observer) report(id string, r *agentv1.Report) {
	facts := encodeFacts(r.GetFacts())
	o.mu.Lock()
	defer o.mu.Unlock()
	e := o.entry(id)
	e.applied = int64(r.GetAppliedRevision())
	if r.GetHealth() != agentv1.Health_HEALTH_UNSPECIFIED {
		e.healthy = true
		e.health = healthName(r.GetHealth())
		e.message = r.GetMessage()
	}
	if facts != nil {
		e.facts = facts
	}
}

func healthName(h agentv1.Health) string {
	if h == agentv1.Health_HEALTH_UNSPECIFIED {
		return ""
	}
	return agentv1.Health_name[int32(h)][len("HEALTH_"):]
}

func (o *observer) run(ctx context.Context, interval time.Duration) {
	every(ctx, interval, o.flush, func(err error) {
		o.metrics.flushErrors.Inc()
		o.log.Warn("write observed state; retrying next flush", "err", err)
	})
}

// flush writes everything pending; what fails to be written is kept for
// the next flush unless a newer observation replaced it meanwhile. An
// observation older than the stored contact is skipped: an agent that
// moved to another replica has newer state there, and the old replica's
// last word (its stream ended) must not overwrite it.
func (o *observer) flush(ctx context.Context) error {
	o.mu.Lock()
	batch := o.pending
	o.pending = make(map[string]*observation, len(batch))
	o.mu.Unlock()
	if len(batch) == 0 {
		return nil
	}
	const chunk = 5000
	var (
		ids                []string
		at                 []time.Time
		applied            []int64
		healthy            []bool
		health, msgs, fact []*string
		firstErr           error
	)
	write := func() {
		if len(ids) == 0 {
			return
		}
		_, err := o.st.Pool().Exec(ctx, `UPDATE agents AS a SET
				last_contact = v.at,
				applied_revision = CASE WHEN v.applied >= 0 THEN LEAST(v.applied, a.desired_revision) ELSE a.applied_revision END,
				health = CASE WHEN v.healthy THEN v.health ELSE a.health END,
				message = CASE WHEN v.healthy THEN v.message ELSE a.message END,
				facts = COALESCE(v.facts::JSONB, a.facts),
				replica = $8
			FROM (SELECT * FROM unnest($1::TEXT[], $2::TIMESTAMPTZ[], $3::INT8[], $4::BOOL[], $5::TEXT[], $6::TEXT[], $7::TEXT[]))
				AS v (id, at, applied, healthy, health, message, facts)
			WHERE a.id = v.id AND (a.last_contact IS NULL OR a.last_contact <= v.at)`, ids, at, applied, healthy, health, msgs, fact, o.replica)
		if err != nil {
			if firstErr == nil {
				firstErr = fmt.Errorf("write observed state of %d agents: %w", len(ids), err)
			}
			o.requeue(batch, ids)
		}
		ids, at, applied, healthy, health, msgs, fact = ids[:0], at[:0], applied[:0], healthy[:0], health[:0], msgs[:0], fact[:0]
	}
	for id, e := range batch {
		h, m := e.health, e.message
		ids = append(ids, id)
		at = append(at, e.at)
		applied = append(applied, e.applied)
		healthy = append(healthy, e.healthy)
		health = append(health, &h)
		msgs = append(msgs, &m)
		fact = append(fact, e.facts)
		if len(ids) == chunk {
			write()
		}
	}
	write()
	return firstErr
}

func (o *observer) requeue(batch map[string]*observation, ids []string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, id := range ids {
		if _, newer := o.pending[id]; !newer {
			o.pending[id] = batch[id]
		}
	}
}
