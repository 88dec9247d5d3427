package store_test

import (
	"context"
	"os"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/pgtest"
	"github.com/metalfleet/metalfleet/central/internal/store"
	schema "github.com/metalfleet/metalfleet/sql"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m, &pg)) }

func open(t *testing.T, url string) *store.Store {
	t.Helper()
	st, err := store.Open(context.Background(), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	return st
}

func TestMigrateEmptyThenUpToDate(t *testing.T) {
	ctx := context.Background()
	url := pg.NewDatabase(t)
	st := open(t, url)
	steps, err := store.LoadMigrations(schema.Common(), 0)
	if err != nil || len(steps) == 0 {
		t.Fatalf("load migrations: %v (%d)", err, len(steps))
	}
	want := steps[len(steps)-1].Version
	for i := 0; i < 2; i++ { // empty database, then an up-to-date one
		if err := st.Migrate(ctx); err != nil {
			t.Fatalf("migrate run %d: %v", i, err)
		}
		v, err := st.SchemaVersion(ctx)
		if err != nil || v != want {
			t.Fatalf("run %d: schema version %d, %v; want %d", i, v, err, want)
		}
		var rows int
		if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&rows); err != nil || rows != len(steps) {
			t.Fatalf("run %d: %d migration rows, %v; want %d", i, rows, err, len(steps))
		}
	}
	// The schema's tables are there and the lock was released.
	var locks int
	if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM schema_lock`).Scan(&locks); err != nil || locks != 0 {
		t.Fatalf("schema_lock rows after migrate = %d, %v", locks, err)
	}
	if _, err := st.Pool().Exec(ctx, `SELECT 1 FROM partitions, ips, pools, pool_free, tokens, audit LIMIT 0`); err != nil {
		t.Fatalf("schema tables missing: %v", err)
	}
}

// Replicas starting together must apply each migration exactly once.
func TestMigrateConcurrentReplicas(t *testing.T) {
	ctx := context.Background()
	url := pg.NewDatabase(t)
	const replicas = 6
	var wg sync.WaitGroup
	errs := make(chan error, replicas)
	for i := 0; i < replicas; i++ {
		st := open(t, url)
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- st.Migrate(ctx)
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	st := open(t, url)
	steps, _ := store.LoadMigrations(schema.Common(), 0)
	var rows int
	if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM schema_migrations`).Scan(&rows); err != nil || rows != len(steps) {
		t.Fatalf("%d migration rows, %v; want %d", rows, err, len(steps))
	}
}

func TestLoadMigrationsRejectsBadNames(t *testing.T) {
	tests := []struct {
		name  string
		files fstest.MapFS
		ok    bool
	}{
		{"ordered", fstest.MapFS{"0002_b.sql": {}, "0001_a.sql": {}}, true},
		{"no number", fstest.MapFS{"init.sql": {}}, false},
		{"bad number", fstest.MapFS{"x1_init.sql": {}}, false},
		{"duplicate", fstest.MapFS{"0001_a.sql": {}, "1_b.sql": {}}, false},
		{"ignores other files", fstest.MapFS{"README.md": {}, "0001_a.sql": {}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := store.LoadMigrations(tt.files, 0)
			if (err == nil) != tt.ok {
				t.Fatalf("err = %v, want ok=%v", err, tt.ok)
			}
			for i := 1; i < len(m); i++ {
				if m[i-1].Version >= m[i].Version {
					t.Fatalf("not ordered: %v", m)
				}
			}
		})
	}
}

// A failing migration leaves nothing behind: its DDL and its bookkeeping row
// roll back together.
func TestMigrationIsAtomic(t *testing.T) {
	ctx := context.Background()
	st := open(t, pg.NewDatabase(t))
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	bad := []store.Migration{{Version: 9999, Name: "bad", SQL: `CREATE TABLE half (id INT); SELECT no_such_function();`}}
	if err := st.Apply(ctx, bad); err == nil {
		t.Fatal("bad migration applied")
	}
	var exists bool
	if err := st.Pool().QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM information_schema.tables WHERE table_name = 'half')`).Scan(&exists); err != nil || exists {
		t.Fatalf("half-applied migration left table: %v %v", exists, err)
	}
	if v, _ := st.SchemaVersion(ctx); v == 9999 {
		t.Fatal("failed migration recorded")
	}
}

// Two doctors on call, each going off call only if the other stays: under
// SERIALIZABLE one of the two transactions must lose (PostgreSQL says so at
// COMMIT), be rerun, and then see it must stay. A store that took the lost
// commit for success would leave nobody on call.
func TestSerializableWriteSkewIsRetried(t *testing.T) {
	ctx := context.Background()
	st := open(t, pg.NewDatabase(t))
	if _, err := st.Pool().Exec(ctx, `CREATE TABLE oncall (id INT PRIMARY KEY, on_call BOOL NOT NULL);
		INSERT INTO oncall VALUES (1, TRUE), (2, TRUE)`); err != nil {
		t.Fatal(err)
	}
	for round := 0; round < 5; round++ {
		if _, err := st.Pool().Exec(ctx, `UPDATE oncall SET on_call = TRUE`); err != nil {
			t.Fatal(err)
		}
		var read sync.WaitGroup
		read.Add(2)
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		for id := 1; id <= 2; id++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				first := true
				errs <- st.SerializableTx(ctx, func(tx pgx.Tx) error {
					var n int
					if err := tx.QueryRow(ctx, `SELECT count(*) FROM oncall WHERE on_call`).Scan(&n); err != nil {
						return err
					}
					if first {
						// Both read before either writes: the skew.
						first = false
						read.Done()
						read.Wait()
					}
					if n < 2 {
						return nil
					}
					_, err := tx.Exec(ctx, `UPDATE oncall SET on_call = FALSE WHERE id = $1`, id)
					return err
				})
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
		}
		var onCall int
		if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM oncall WHERE on_call`).Scan(&onCall); err != nil {
			t.Fatal(err)
		}
		if onCall != 1 {
			t.Fatalf("round %d: %d on call, want exactly 1 (a lost serialization conflict was reported as success)", round, onCall)
		}
	}
}
