package fabric

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/field"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// SetPort shuts port of switch id down (up false) or brings it back up,
// derives the switch's document and writes the audit row, in one
// transaction. A port the switch did not report is an InvalidArgument on
// field "port"; an unknown switch is not found.
func SetPort(ctx context.Context, st *store.Store, docs Docs, id, port string, up bool) (*apiv1.Switch, error) {
	err := st.Tx(ctx, func(tx pgx.Tx) error {
		sw, err := Table.GetForUpdate(ctx, tx, id)
		if err != nil {
			return err
		}
		found := false
		for _, p := range sw.GetPorts() {
			if p.GetName() == port {
				p.Shut, found = !up, true
			}
		}
		if !found {
			var v field.Violations
			v.Add("port", "switch %s reported no port %q", id, port)
			return v.Err("")
		}
		sw.Meta = nil
		if err := save(ctx, tx, sw); err != nil {
			return err
		}
		if err := Derive(ctx, tx, docs, []string{id}); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "switch/"+id, "")
	})
	if err != nil {
		return nil, err
	}
	sw, err := Table.Get(ctx, st.Pool(), id)
	if err != nil {
		return nil, fmt.Errorf("read switch %s: %w", id, err)
	}
	return sw, nil
}
