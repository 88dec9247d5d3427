package machine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/metalfleet/metalfleet/central/internal/bmc"
	"github.com/metalfleet/metalfleet/central/internal/fsm"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// DefaultStuckInterval is how often Stuck looks for stuck machines: the
// timeouts are ten minutes and more, so a minute late is no harm.
const DefaultStuckInterval = time.Minute

// stuckBatch bounds the machines one pass handles (one transaction each);
// the oldest first, the rest on the next pass.
const stuckBatch = 100

// EventStuckCycle and EventStuckGaveUp are the notes Stuck writes in a
// machine's event log.
const (
	EventStuckCycle  = "Stuck power cycle"
	EventStuckGaveUp = "Stuck cycles exhausted"
)

// Stuck power-cycles machines stuck past their state's timeout through
// their BMC (docs/bmc.md, "Stuck machines"): a machine in a state with a
// timeout (fsm.Timeout) whose last event and last cycle are both older
// than it, that has a BMC (metal-bmc reported it), in a partition whose
// policy says so (bmc.Stuck). Each cycle is counted per episode: the
// state the machine is stuck in, until it reaches a stable state
// (transition clears the count) or is stuck in another state (a new
// count). After the partition's maximum it raises no more and the
// machine carries fsm.IssueStuckCyclesExhausted.
//
// Every replica runs one; the row lock taken with SKIP LOCKED and the
// stuck condition checked again under it make one episode's cycle raised
// once across replicas: the replica that holds the lock raises it and
// moves last_event_at and stuck_cycled_at, after which the machine is not
// stuck for another timeout.
type Stuck struct {
	st       *store.Store
	docs     bmc.Docs
	log      *slog.Logger
	interval time.Duration
	metrics  *stuckMetrics
}

// NewStuck returns the stuck-machine reconciler; docs receives the
// partitions' metal-bmc documents (nil: tests without a fleet), interval
// is how often Run looks (0: DefaultStuckInterval).
func NewStuck(st *store.Store, docs bmc.Docs, log *slog.Logger, interval time.Duration) *Stuck {
	if interval <= 0 {
		interval = DefaultStuckInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Stuck{st: st, docs: docs, log: log, interval: interval, metrics: newStuckMetrics()}
}

// Collector exports the reconciler's metrics.
func (s *Stuck) Collector() prometheus.Collector { return s.metrics }

// Run reconciles every interval until ctx ends.
func (s *Stuck) Run(ctx context.Context) {
	every(ctx, s.interval, s.log, "stuck machines", func(ctx context.Context) error {
		_, err := s.Reconcile(ctx)
		return err
	})
}

// every runs pass at once and then every interval until ctx ends,
// logging its errors as what.
func every(ctx context.Context, interval time.Duration, log *slog.Logger, what string, pass func(context.Context) error) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if err := pass(ctx); err != nil && ctx.Err() == nil {
			log.Error(what, "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// StuckResult is what one Reconcile did.
type StuckResult struct {
	// Cycled are the machines a power cycle was raised for.
	Cycled []string
	// Exhausted are the machines central gave up on in this pass.
	Exhausted []string
}

// timeouts lists the states with a timeout and their timeouts in seconds,
// for the queries (the one source is fsm.Timeout).
func timeouts() ([]string, []int64) {
	var states []string
	var secs []int64
	for _, st := range fsm.States() {
		if t := fsm.Timeout(st); t > 0 {
			states = append(states, string(st))
			secs = append(secs, int64(t/time.Second))
		}
	}
	return states, secs
}

// stuckWhere is the stuck rule on machine m joined with t (state,
// timeout): in a state with a timeout, nothing heard and nothing cycled
// for longer, a BMC known, not given up on in this state, not locked (an
// operator's lock means hands off: a machine under maintenance is not
// rebooted behind the operator's back), and a partition that does not
// refuse cycling (a partition without settings cycles:
// bmc.DefaultStuckMaxCycles and on).
const stuckWhere = `m.partition_id IS NOT NULL AND m.last_event_at IS NOT NULL AND m.state <> 'locked'
	AND GREATEST(m.last_event_at, COALESCE(m.stuck_cycled_at, m.last_event_at)) < now() - t.secs * INTERVAL '1 second'
	AND NOT (m.stuck_exhausted AND m.stuck_state = m.provisioning)
	AND EXISTS (SELECT 1 FROM machine_bmcs b WHERE b.machine_uuid = m.id)
	AND NOT EXISTS (SELECT 1 FROM partition_bmc p WHERE p.partition_id = m.partition_id AND NOT p.stuck_cycle)`

// Reconcile handles the machines stuck now, each in its own transaction
// (one machine's failure does not hold up the others).
func (s *Stuck) Reconcile(ctx context.Context) (StuckResult, error) {
	var res StuckResult
	states, secs := timeouts()
	rows, err := s.st.Pool().Query(ctx, `SELECT m.id FROM machines m
		JOIN unnest($1::TEXT[], $2::BIGINT[]) AS t (state, secs) ON t.state = m.provisioning
		WHERE `+stuckWhere+`
		ORDER BY GREATEST(m.last_event_at, COALESCE(m.stuck_cycled_at, m.last_event_at)), m.id LIMIT $3`, states, secs, stuckBatch)
	if err != nil {
		return res, fmt.Errorf("find stuck machines: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return res, fmt.Errorf("find stuck machines: %w", err)
	}
	var errs []error
	for _, id := range ids {
		if ctx.Err() != nil {
			return res, ctx.Err()
		}
		out, err := s.one(ctx, id, states, secs)
		if err != nil {
			errs = append(errs, fmt.Errorf("stuck machine %s: %w", id, err))
			continue
		}
		switch out {
		case stuckCycled:
			res.Cycled = append(res.Cycled, id)
			s.metrics.cycles.Inc()
		case stuckExhausted:
			res.Exhausted = append(res.Exhausted, id)
			s.metrics.exhausted.Inc()
		}
	}
	return res, errors.Join(errs...)
}

type stuckOutcome int

const (
	stuckNothing stuckOutcome = iota
	stuckCycled
	stuckExhausted
)

// one handles machine id in one transaction: it locks the row only if
// it is still stuck and no other replica holds it (SKIP LOCKED; under
// the lock PostgreSQL checks the condition against the newest row), then
// raises the cycle or gives up, with the count and the event.
func (s *Stuck) one(ctx context.Context, id string, states []string, secs []int64) (stuckOutcome, error) {
	var out stuckOutcome
	err := s.st.Tx(ctx, func(tx pgx.Tx) error {
		out = stuckNothing
		var (
			partition, state, stuckState string
			cycles                       int
			installed                    bool
			timeout, sinceMS             int64
		)
		err := tx.QueryRow(ctx, `SELECT m.partition_id, m.provisioning, m.installed, m.stuck_state, m.stuck_cycles, t.secs,
				(EXTRACT(EPOCH FROM now() - m.last_event_at) * 1000)::BIGINT
			FROM machines m JOIN unnest($2::TEXT[], $3::BIGINT[]) AS t (state, secs) ON t.state = m.provisioning
			WHERE m.id = $1 AND `+stuckWhere+`
			FOR UPDATE OF m SKIP LOCKED`, id, states, secs).
			Scan(&partition, &state, &installed, &stuckState, &cycles, &timeout, &sinceMS)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil // no longer stuck, or another replica has it
		}
		if err != nil {
			return fmt.Errorf("lock: %w", err)
		}
		policy, err := bmc.Stuck(ctx, tx, partition)
		if err != nil {
			return err
		}
		if !policy.Cycle {
			return nil
		}
		if stuckState != state {
			cycles = 0 // stuck in another state than the one counted: a new episode
		}
		st := fsm.State(state)
		since := time.Duration(sinceMS) * time.Millisecond
		limit := time.Duration(timeout) * time.Second
		log := s.log.With("machine", id, "partition", partition, "state", state, "for", since.Round(time.Second), "cycles", cycles)
		if cycles >= policy.MaxCycles {
			if _, err := tx.Exec(ctx, `UPDATE machines SET stuck_state = $2, stuck_cycles = $3, stuck_exhausted = TRUE, updated_at = now()
				WHERE id = $1`, id, state, cycles); err != nil {
				return fmt.Errorf("give up: %w", err)
			}
			if err := Record(ctx, tx, Event{Machine: id, Type: EventStuckGaveUp, Message: fmt.Sprintf(
				"%s, no event for %s (longer than %s), after %d power cycles: no more cycles (partition %s allows %d)",
				state, since.Round(time.Second), limit, cycles, partition, policy.MaxCycles)}); err != nil {
				return err
			}
			log.Warn("stuck machine: power cycles exhausted, giving up", "max", policy.MaxCycles)
			out = stuckExhausted
			return nil
		}
		in := bmc.Intent{Power: &agentv1.BmcPowerIntent{Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE}}
		boot := "its own boot order"
		if fsm.PXEWhenStuck(st, installed) {
			in.Boot = &agentv1.BmcBootIntent{Device: agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE, Persistent: true}
			boot = "PXE"
		}
		m, err := bmc.Raise(ctx, tx, s.docs, id, partition, in)
		if errors.Is(err, bmc.ErrNotAddressable) {
			return nil // no BMC can report it; the EXISTS above makes this rare
		}
		if err != nil {
			return err
		}
		cycles++
		if _, err := tx.Exec(ctx, `UPDATE machines SET stuck_state = $2, stuck_cycles = $3, stuck_cycled_at = now(), stuck_exhausted = FALSE,
			updated_at = now() WHERE id = $1`, id, state, cycles); err != nil {
			return fmt.Errorf("count cycle: %w", err)
		}
		if err := Record(ctx, tx, Event{Machine: id, Type: EventStuckCycle, Message: fmt.Sprintf(
			"%s, no event for %s (longer than %s): power cycle %d of %d through the BMC (generation %d), booting %s",
			state, since.Round(time.Second), limit, cycles, policy.MaxCycles, m.GetPower().GetGeneration(), boot)}); err != nil {
			return err
		}
		log.Info("stuck machine: power cycle raised", "cycle", cycles, "max", policy.MaxCycles, "boot", boot, "generation", m.GetPower().GetGeneration())
		out = stuckCycled
		return nil
	})
	return out, err
}

// stuckMetrics are the reconciler's counters; one set per replica.
type stuckMetrics struct {
	cycles, exhausted prometheus.Counter
}

func newStuckMetrics() *stuckMetrics {
	const ns, sub = "metalfleet", "stuck"
	return &stuckMetrics{
		cycles: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "cycles_total",
			Help: "Power cycles this replica raised for machines stuck past their state's timeout."}),
		exhausted: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Subsystem: sub, Name: "exhausted_total",
			Help: "Stuck machines this replica gave up on after their partition's maximum of power cycles."}),
	}
}

// Describe implements prometheus.Collector.
func (m *stuckMetrics) Describe(ch chan<- *prometheus.Desc) {
	m.cycles.Describe(ch)
	m.exhausted.Describe(ch)
}

// Collect implements prometheus.Collector.
func (m *stuckMetrics) Collect(ch chan<- prometheus.Metric) {
	m.cycles.Collect(ch)
	m.exhausted.Collect(ch)
}
