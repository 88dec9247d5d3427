package fleet

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/store"
)

// Hints wake the replica that holds an agent's stream after its desired
// document changed. A hint carries only the agent id; the replica re-reads
// the document. Hints may be lost; resync heals that.
type Hints interface {
	// Notify is called inside the transaction that changed agent id's
	// document; the hint must not be visible before that commits.
	Notify(ctx context.Context, tx pgx.Tx, id string) error
	// Listen calls want for each hinted agent id until ctx ends, and lost
	// whenever hints may have been missed (e.g. after a reconnect).
	Listen(ctx context.Context, want func(id string), lost func())
}

// notifyChannel is the PostgreSQL channel of agent document hints.
const notifyChannel = "metalfleet_agents"

// NotifyHints uses PostgreSQL LISTEN/NOTIFY; NOTIFY is transactional, so a
// hint is delivered exactly when its change commits, to every replica.
type NotifyHints struct {
	st  *store.Store
	log *slog.Logger
}

// NewNotifyHints returns PostgreSQL hints on st.
func NewNotifyHints(st *store.Store, log *slog.Logger) *NotifyHints {
	return &NotifyHints{st: st, log: log}
}

// Notify implements Hints.
func (n *NotifyHints) Notify(ctx context.Context, tx pgx.Tx, id string) error {
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, $2)`, notifyChannel, id); err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	return nil
}

// NotifyMany hints many agents in one statement.
func (n *NotifyHints) NotifyMany(ctx context.Context, tx pgx.Tx, ids []string) error {
	if _, err := tx.Exec(ctx, `SELECT pg_notify($1, id) FROM unnest($2::TEXT[]) AS id`, notifyChannel, ids); err != nil {
		return fmt.Errorf("notify: %w", err)
	}
	return nil
}

// Listen implements Hints on one dedicated connection, reconnecting with
// backoff when it breaks.
func (n *NotifyHints) Listen(ctx context.Context, want func(string), lost func()) {
	b := backoff{min: 100 * time.Millisecond, max: 5 * time.Second}
	for ctx.Err() == nil {
		err := n.listenOnce(ctx, want, lost, &b)
		if ctx.Err() != nil {
			return
		}
		n.log.Warn("hint listener lost its connection; reconnecting", "err", err)
		if !sleep(ctx, b.next()) {
			return
		}
	}
}

func (n *NotifyHints) listenOnce(ctx context.Context, want func(string), lost func(), b *backoff) error {
	pc, err := n.st.Pool().Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire: %w", err)
	}
	// The listening connection leaves the pool for good: it is busy
	// waiting for notifications and must not serve queries.
	c := pc.Hijack()
	defer c.Close(context.WithoutCancel(ctx))
	if _, err := c.Exec(ctx, "LISTEN "+notifyChannel); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	b.reset()
	// Hints sent while no one listened are gone: compare everything.
	lost()
	for {
		nt, err := c.WaitForNotification(ctx)
		if err != nil {
			return fmt.Errorf("wait for notification: %w", err)
		}
		want(nt.Payload)
	}
}

// PollHints finds changed documents by polling desired_at, for engines
// without LISTEN/NOTIFY (CockroachDB). A window larger than the interval
// covers transactions that commit a little after their timestamp.
type PollHints struct {
	st       *store.Store
	interval time.Duration
}

// NewPollHints polls every interval.
func NewPollHints(st *store.Store, interval time.Duration) *PollHints {
	return &PollHints{st: st, interval: interval}
}

// Notify implements Hints: the poll sees the committed row.
func (p *PollHints) Notify(context.Context, pgx.Tx, string) error { return nil }

// NotifyMany implements manyNotifier: polling needs no hints.
func (p *PollHints) NotifyMany(context.Context, pgx.Tx, []string) error { return nil }

// Listen implements Hints.
func (p *PollHints) Listen(ctx context.Context, want func(string), lost func()) {
	t := time.NewTicker(p.interval)
	defer t.Stop()
	window := p.interval + 5*time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		rows, err := p.st.Pool().Query(ctx, `SELECT id FROM agents WHERE desired_at > $1`, time.Now().Add(-window))
		if err != nil {
			lost()
			continue
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			lost()
			continue
		}
		for _, id := range ids {
			want(id)
		}
	}
}
