// Package fabric is the switch fabric: the only writer of switches. Today
// it holds the switches as the API shows them; their ports, VRFs and BGP
// sessions join them here. The callers validate requests and map errors.
package fabric

import (
	"context"

	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Table reads switches as stored; only this package writes them.
var Table = store.Table[*apiv1.Switch]{Name: "switches", New: func() *apiv1.Switch { return &apiv1.Switch{} }}

// List reads the switches of partition (all when ""), ordered by id.
func List(ctx context.Context, db store.Querier, partition string) ([]*apiv1.Switch, error) {
	return Table.List(ctx, db, "($1 = '' OR partition_id = $1)", partition)
}
