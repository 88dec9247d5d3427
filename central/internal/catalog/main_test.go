package catalog_test

import (
	"context"
	"os"
	"testing"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/pgtest"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m, &pg)) }

// newStore is a migrated database of its own and the context of an
// admin's call, which the audit rows need.
func newStore(t testing.TB) (context.Context, *store.Store) {
	t.Helper()
	ctx := auth.WithCall(context.Background(), &auth.Call{
		Principal: &auth.Principal{TokenID: "test", Admin: apiv1.Level_LEVEL_EDITOR},
		Method:    "/test", RequestID: "test",
	})
	st, err := store.Open(ctx, pg.NewDatabase(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return ctx, st
}
