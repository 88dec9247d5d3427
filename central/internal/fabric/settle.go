package fabric

import (
	"context"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/store"
)

// Revisions are the document revisions the switches linked to machine
// must apply for the change just derived in tx to be on the wire: switch
// id → the revision of its document now. A switch without an agent has
// no document and is left out.
func Revisions(ctx context.Context, tx pgx.Tx, machine string) (map[string]int64, error) {
	ids, err := switchesOf(ctx, tx, []string{machine})
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	if len(ids) == 0 {
		return out, nil
	}
	rows, err := tx.Query(ctx, `SELECT identity, desired_revision FROM agents WHERE kind = 'switch' AND identity = ANY($1)`, ids)
	if err != nil {
		return nil, fmt.Errorf("switch documents of machine %s: %w", machine, err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var rev int64
		if err := rows.Scan(&id, &rev); err != nil {
			return nil, fmt.Errorf("switch documents of machine %s: %w", machine, err)
		}
		out[id] = rev
	}
	return out, rows.Err()
}

// Unsettled are the switches of want (switch id → revision) that have not
// reported that revision (or a newer one) applied, sorted. A switch that
// is gone is settled: nothing waits for it.
func Unsettled(ctx context.Context, q store.Querier, want map[string]int64) ([]string, error) {
	if len(want) == 0 {
		return nil, nil
	}
	ids := make([]string, 0, len(want))
	for id := range want {
		ids = append(ids, id)
	}
	rows, err := q.Query(ctx, `SELECT id, COALESCE((spec->'sync'->>'appliedRevision')::BIGINT, 0) FROM switches WHERE id = ANY($1)`, ids)
	if err != nil {
		return nil, fmt.Errorf("switch sync status: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		var applied int64
		if err := rows.Scan(&id, &applied); err != nil {
			return nil, fmt.Errorf("switch sync status: %w", err)
		}
		if applied < want[id] {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out, rows.Err()
}
