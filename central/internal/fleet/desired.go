package fleet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// decode reads a stored document; fields a newer replica added are skipped.
func decode(b []byte) (*agentv1.Desired, error) {
	d := &agentv1.Desired{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, d); err != nil {
		return nil, fmt.Errorf("decode desired document: %w", err)
	}
	return d, nil
}

// Change edits agent id's desired document inside tx. change gets a copy
// and reports whether it changed anything; if so the revision grows by one
// and the agent's replica is hinted on commit. It returns the document now
// in effect.
func (h *Hub) Change(ctx context.Context, tx pgx.Tx, id string, change func(*agentv1.Desired) (bool, error)) (*agentv1.Desired, error) {
	var raw []byte
	var rev uint64
	err := tx.QueryRow(ctx, `SELECT desired, desired_revision FROM agents WHERE id = $1 FOR NO KEY UPDATE`, id).Scan(&raw, &rev)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNoAgent
	}
	if err != nil {
		return nil, fmt.Errorf("read desired document: %w", err)
	}
	cur, err := decode(raw)
	if err != nil {
		return nil, err
	}
	next := proto.Clone(cur).(*agentv1.Desired)
	if next.Settings == nil {
		next.Settings = &agentv1.Settings{}
	}
	changed, err := change(next)
	if err != nil || !changed {
		return cur, err
	}
	now := time.Now()
	next.Revision = rev + 1
	next.ChangedAt = timestamppb.New(now)
	doc, err := protojson.Marshal(next)
	if err != nil {
		return nil, fmt.Errorf("encode desired document: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE agents SET desired = $2, desired_revision = $3, desired_at = $4, updated_at = $4 WHERE id = $1`,
		id, doc, next.Revision, now); err != nil {
		return nil, fmt.Errorf("write desired document: %w", err)
	}
	if err := h.hints.Notify(ctx, tx, id); err != nil {
		return nil, err
	}
	return next, nil
}

// fetchLoop serves hints: woken by the first, it lets more arrive for a
// moment, then reads all their documents in few queries and offers them to
// the local streams.
func (h *Hub) fetchLoop(ctx context.Context) {
	const chunk = 1000
	for {
		select {
		case <-ctx.Done():
			return
		case <-h.wantWake:
		}
		if !sleep(ctx, h.cfg.HintBatch) {
			return
		}
		ids := h.takeWanted()
		for i := 0; i < len(ids); i += chunk {
			part := ids[i:min(i+chunk, len(ids))]
			if err := h.fetch(ctx, part); err != nil && ctx.Err() == nil {
				h.log.Warn("read desired documents; resync will retry", "agents", len(part), "err", err)
			}
		}
	}
}

func (h *Hub) fetch(ctx context.Context, ids []string) error {
	rows, err := h.store.Pool().Query(ctx, `SELECT id, desired, token_hash FROM agents WHERE id = ANY($1)`, ids)
	if err != nil {
		return fmt.Errorf("read desired documents: %w", err)
	}
	defer rows.Close()
	seen := make(map[string]bool, len(ids))
	for rows.Next() {
		var id string
		var raw, hash []byte
		if err := rows.Scan(&id, &raw, &hash); err != nil {
			return fmt.Errorf("read desired documents: %w", err)
		}
		seen[id] = true
		c := h.conns.get(id)
		if c == nil {
			continue
		}
		if !c.holds(hash) {
			c.close(errCredentialGone)
			continue
		}
		d, err := decode(raw)
		if err != nil {
			h.log.Error("stored desired document unreadable", "agent", id, "err", err)
			continue
		}
		h.offer(c, d)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read desired documents: %w", err)
	}
	for _, id := range ids {
		if !seen[id] {
			if c := h.conns.get(id); c != nil {
				c.close(errCredentialGone)
			}
		}
	}
	return nil
}

// manyNotifier hints many agents in one statement.
type manyNotifier interface {
	NotifyMany(ctx context.Context, tx pgx.Tx, ids []string) error
}

// ChangeMany is Change for many agents in one transaction with a fixed
// number of statements, for batched domain changes (allocations). Rows are
// locked in id order, so concurrent batches cannot deadlock each other.
// change gets each agent's id and a copy of its document. Unknown ids are
// ErrNoAgent.
func (h *Hub) ChangeMany(ctx context.Context, tx pgx.Tx, ids []string, change func(id string, d *agentv1.Desired) (bool, error)) error {
	rows, err := tx.Query(ctx, `SELECT id, desired, desired_revision FROM agents WHERE id = ANY($1) ORDER BY id FOR NO KEY UPDATE`, ids)
	if err != nil {
		return fmt.Errorf("read desired documents: %w", err)
	}
	type cur struct {
		raw []byte
		rev uint64
	}
	found := make(map[string]cur, len(ids))
	for rows.Next() {
		var id string
		var c cur
		if err := rows.Scan(&id, &c.raw, &c.rev); err != nil {
			rows.Close()
			return fmt.Errorf("read desired documents: %w", err)
		}
		found[id] = c
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read desired documents: %w", err)
	}
	now := time.Now()
	var upIDs, docs []string
	var revs []int64
	for _, id := range ids {
		c, ok := found[id]
		if !ok {
			return fmt.Errorf("agent %s: %w", id, ErrNoAgent)
		}
		d, err := decode(c.raw)
		if err != nil {
			return err
		}
		if d.Settings == nil {
			d.Settings = &agentv1.Settings{}
		}
		changed, err := change(id, d)
		if err != nil {
			return err
		}
		if !changed {
			continue
		}
		d.Revision, d.ChangedAt = c.rev+1, timestamppb.New(now)
		doc, err := protojson.Marshal(d)
		if err != nil {
			return fmt.Errorf("encode desired document: %w", err)
		}
		upIDs, docs, revs = append(upIDs, id), append(docs, string(doc)), append(revs, int64(d.Revision))
	}
	if len(upIDs) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `UPDATE agents a SET desired = u.doc::JSONB, desired_revision = u.rev, desired_at = $4, updated_at = $4
		FROM unnest($1::TEXT[], $2::TEXT[], $3::BIGINT[]) AS u (id, doc, rev) WHERE a.id = u.id`, upIDs, docs, revs, now); err != nil {
		return fmt.Errorf("write desired documents: %w", err)
	}
	if m, ok := h.hints.(manyNotifier); ok {
		return m.NotifyMany(ctx, tx, upIDs)
	}
	for _, id := range upIDs {
		if err := h.hints.Notify(ctx, tx, id); err != nil {
			return err
		}
	}
	return nil
}
