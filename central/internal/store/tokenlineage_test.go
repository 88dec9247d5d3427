package store_test

import (
	"context"
	"slices"
	"testing"

	"github.com/metalfleet/metalfleet/central/internal/store"
	schema "github.com/metalfleet/metalfleet/sql"
)

// Tokens minted before the lineage column existed get their lineage from
// created_by, so that revoking an old token reaches its old descendants.
func TestTokenLineageBackfill(t *testing.T) {
	ctx := context.Background()
	st := open(t, pg.NewDatabase(t))
	steps, err := store.LoadMigrations(schema.Common(), 0)
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(steps, func(m store.Migration) bool { return m.Name == "token_lineage" })
	if i < 0 {
		t.Fatal("no token_lineage migration")
	}
	if err := st.Apply(ctx, steps[:i]); err != nil {
		t.Fatal(err)
	}
	// root → a → b, root → c; orphan's creator is gone.
	for _, tok := range []struct{ id, by string }{{"root", ""}, {"a", "root"}, {"b", "a"}, {"c", "root"}, {"orphan", "gone"}} {
		var by *string
		if tok.by != "" {
			by = &tok.by
		}
		if _, err := st.Pool().Exec(ctx, `INSERT INTO tokens (id, secret_hash, spec, expires_at, created_by) VALUES ($1, $2, '{}', now() + INTERVAL '1 hour', $3)`,
			tok.id, []byte(tok.id), by); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"root": {}, "a": {"root"}, "b": {"root", "a"}, "c": {"root"}, "orphan": {"gone"}}
	for id, w := range want {
		var got []string
		if err := st.Pool().QueryRow(ctx, `SELECT ancestors FROM tokens WHERE id = $1`, id).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, w) {
			t.Errorf("%s: ancestors %v, want %v", id, got, w)
		}
	}
}
