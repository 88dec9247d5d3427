package catalog_test

import (
	"context"
	"os"
	"testing"

	"github.com/metalfleet/metalfleet/central/internal/pgtest"
	"github.com/metalfleet/metalfleet/central/internal/store"
	"github.com/metalfleet/metalfleet/central/internal/storetest"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m, &pg)) }

// newStore is a migrated database of its own and the context of an
// admin's call, which the audit rows need.
func newStore(t testing.TB) (context.Context, *store.Store) {
	t.Helper()
	ctx := storetest.AdminCall(context.Background(), "/test")
	st := storetest.Open(ctx, t, pg)
	return ctx, st
}
