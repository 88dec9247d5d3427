package fleet

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// PixieDocument builds what the PXE services of a partition serve,
// reading in q, the fleet's transaction. What goes into it (the
// partition's boot settings, central's addresses and CA) is the domain's;
// the fleet only hands it to the agents.
type PixieDocument func(ctx context.Context, q store.Querier, partition string) (*agentv1.PixieDocument, error)

// RefreshPixies brings the documents of the partition's PXE services (all
// partitions when partition is "") up to date, in one transaction; a
// service whose document is already doc's is left alone, so its revision
// does not grow.
func (h *Hub) RefreshPixies(ctx context.Context, partition string, doc PixieDocument) error {
	return h.store.Tx(ctx, func(tx pgx.Tx) error { return h.refreshPixies(ctx, tx, partition, doc) })
}

// refreshPixies is RefreshPixies inside tx, for the fleet's own writes
// that a PXE service's document follows (a new PXE service).
func (h *Hub) refreshPixies(ctx context.Context, tx pgx.Tx, partition string, doc PixieDocument) error {
	rows, err := tx.Query(ctx, `SELECT id, partition_id FROM agents WHERE kind = $1 AND partition_id IS NOT NULL AND ($2 = '' OR partition_id = $2)`,
		KindName(agentv1.Kind_KIND_PIXIE), partition)
	if err != nil {
		return fmt.Errorf("list pixies: %w", err)
	}
	all, err := store.TextPairs(rows)
	if err != nil {
		return fmt.Errorf("list pixies: %w", err)
	}
	for _, x := range all {
		id, partition := x[0], x[1]
		want, err := doc(ctx, tx, partition)
		if err != nil {
			return err
		}
		if _, err := h.Change(ctx, tx, id, func(d *agentv1.Desired) (bool, error) {
			if proto.Equal(d.GetPixie(), want) {
				return false, nil
			}
			d.Pixie = want
			return true, nil
		}); err != nil {
			return err
		}
	}
	return nil
}
