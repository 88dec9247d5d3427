// Package storetest gives a domain package's tests a migrated store of
// their own on the package's PostgreSQL cluster (pgtest), so that each
// test package does not write the same open, migrate and close again.
package storetest

import (
	"context"
	"testing"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/pgtest"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Open returns a store on a new, migrated database of pg, closed when the
// test ends.
func Open(ctx context.Context, t testing.TB, pg *pgtest.Cluster) *store.Store {
	t.Helper()
	st, err := store.Open(ctx, pg.NewDatabase(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return st
}

// AdminCall is ctx carrying an admin editor's call of method, which the
// audit rows that every write leaves need.
func AdminCall(ctx context.Context, method string) context.Context {
	return auth.WithCall(ctx, &auth.Call{
		Principal: &auth.Principal{TokenID: "test", Admin: apiv1.Level_LEVEL_EDITOR},
		Method:    method, RequestID: "test",
	})
}
