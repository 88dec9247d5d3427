package machine

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
)

// checkReservations refuses an allocation that would eat into machines
// other projects have reserved. The reservations of the size and partition
// are locked, so concurrent allocations count one after the other; sizes
// without reservations take no lock at all.
func (ms *Machines) checkReservations(ctx context.Context, tx pgx.Tx, partition, size, project string) error {
	reserved, err := countsBy(tx.Query(ctx, `SELECT project_id, amount FROM size_reservations WHERE partition_id = $1 AND size_id = $2 ORDER BY id FOR UPDATE`, partition, size))
	if err != nil {
		return fmt.Errorf("read reservations: %w", err)
	}
	if len(reserved) == 0 {
		return nil
	}
	projects := make([]string, 0, len(reserved))
	for p := range reserved {
		projects = append(projects, p)
	}
	used, err := countsBy(tx.Query(ctx, `SELECT project_id, count(*) FROM machines WHERE partition_id = $1 AND size_id = $2 AND project_id = ANY($3) GROUP BY project_id`, partition, size, projects))
	if err != nil {
		return fmt.Errorf("count reserved use: %w", err)
	}
	if reserved[project]-used[project] > 0 {
		return nil // the project takes from its own reservation
	}
	held := 0
	for p, n := range reserved {
		if p != project {
			held += max(0, n-used[p])
		}
	}
	var free int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM machines m JOIN agents a ON a.id = m.agent_id
		WHERE m.partition_id = $1 AND m.size_id = $2 AND m.project_id IS NULL AND m.state = 'available'
		AND m.provisioning = 'Waiting' AND a.last_contact > $3`, partition, size, time.Now().Add(-ms.aliveWithin)).Scan(&free); err != nil {
		return fmt.Errorf("count free machines: %w", err)
	}
	if free-held <= 0 {
		return status.Errorf(codes.ResourceExhausted, "no machine of size %s in partition %s is free: %d waiting, %d held for reservations of other projects", auth.Quote(size), auth.Quote(partition), free, held)
	}
	return nil
}

// countsBy sums rows of (key, count) by key.
func countsBy(rows pgx.Rows, err error) (map[string]int, error) {
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	_, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (struct{}, error) {
		var k string
		var n int
		err := r.Scan(&k, &n)
		out[k] += n
		return struct{}{}, err
	})
	return out, err
}

// hasReservations reports whether the size has reservations in the partition.
func hasReservations(ctx context.Context, tx pgx.Tx, partition, size string) (bool, error) {
	var held bool
	if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM size_reservations WHERE partition_id = $1 AND size_id = $2)`,
		partition, size).Scan(&held); err != nil {
		return false, fmt.Errorf("read reservations: %w", err)
	}
	return held, nil
}
