package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	schema "github.com/metalfleet/metalfleet/sql"
)

// migrationLease is how long a replica may hold the migration lock without
// renewing it; a replica that dies mid-migration blocks others at most this long.
const migrationLease = 2 * time.Minute

// Migration is one ordered schema step.
type Migration struct {
	Version int
	Name    string
	SQL     string
}

// Migrate applies every pending migration. Replicas starting together agree
// through a lease row in schema_lock instead of advisory locks, which
// CockroachDB lacks; each migration runs in its own transaction together with
// the row that records it, so a step is applied entirely or not at all.
func (s *Store) Migrate(ctx context.Context) error {
	steps, err := s.Migrations()
	if err != nil {
		return err
	}
	return s.Apply(ctx, steps)
}

// Migrations are the migrations Migrate applies to this store's database:
// the common ones, and on CockroachDB its own after them.
func (s *Store) Migrations() ([]Migration, error) {
	steps, err := LoadMigrations(schema.Common(), 0)
	if err != nil {
		return nil, err
	}
	if s.cockroach {
		crdb, err := LoadMigrations(schema.Cockroach(), 10000)
		if err != nil {
			return nil, err
		}
		steps = append(steps, crdb...)
	}
	return steps, nil
}

// Apply applies the given migrations that are not applied yet, in order,
// under the migration lock.
func (s *Store) Apply(ctx context.Context, steps []Migration) error {
	if err := s.bootstrapMigrationTables(ctx); err != nil {
		return err
	}
	holder := uuid.NewString()
	if err := s.acquireMigrationLock(ctx, holder); err != nil {
		return err
	}
	defer func() {
		// Release with a fresh context: the caller's may be cancelled already.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := s.pool.Exec(rctx, `DELETE FROM schema_lock WHERE id = 1 AND holder = $1`, holder); err != nil {
			s.log.Warn("release migration lock", "err", err)
		}
	}()
	applied := map[int]bool{}
	rows, err := s.pool.Query(ctx, `SELECT version FROM schema_migrations`)
	if err != nil {
		return fmt.Errorf("read applied migrations: %w", err)
	}
	versions, err := pgx.CollectRows(rows, pgx.RowTo[int64])
	if err != nil {
		return fmt.Errorf("read applied migrations: %w", err)
	}
	for _, v := range versions {
		applied[int(v)] = true
	}
	for _, m := range steps {
		if applied[m.Version] {
			continue
		}
		if err := s.renewMigrationLock(ctx, holder); err != nil {
			return err
		}
		start := time.Now()
		err := s.Tx(ctx, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.Version, m.Name)
			return err
		})
		if err != nil {
			return fmt.Errorf("apply migration %04d_%s: %w", m.Version, m.Name, err)
		}
		s.log.Info("migration applied", "version", m.Version, "name", m.Name, "took", time.Since(start))
	}
	return nil
}

// SchemaVersion returns the newest applied migration version (0 if none).
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	var v *int64
	if err := s.pool.QueryRow(ctx, `SELECT max(version) FROM schema_migrations`).Scan(&v); err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	if v == nil {
		return 0, nil
	}
	return int(*v), nil
}

// SQLSTATE codes of a concurrent CREATE TABLE IF NOT EXISTS that lost.
const (
	codeDuplicateTable  = "42P07"
	codeDuplicateObject = "42710"
)

func (s *Store) bootstrapMigrationTables(ctx context.Context) error {
	stmts := []string{
		`CREATE TABLE IF NOT EXISTS schema_migrations (
			version    BIGINT PRIMARY KEY,
			name       TEXT NOT NULL,
			applied_at TIMESTAMPTZ NOT NULL DEFAULT now())`,
		`CREATE TABLE IF NOT EXISTS schema_lock (
			id         INT PRIMARY KEY,
			holder     TEXT NOT NULL,
			expires_at TIMESTAMPTZ NOT NULL)`,
	}
	for _, stmt := range stmts {
		// Two replicas creating the same table at once can collide in
		// PostgreSQL's catalog even with IF NOT EXISTS (a unique violation
		// on pg_type, or the table or its row type "already exists"); the
		// loser just tries again and then finds the table.
		var err error
		for attempt := 0; attempt < 5; attempt++ {
			if _, err = s.pool.Exec(ctx, stmt); err == nil || !IsCode(err, CodeUniqueViolation, codeDuplicateTable, codeDuplicateObject) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			return fmt.Errorf("create migration tables: %w", err)
		}
	}
	return nil
}

func (s *Store) acquireMigrationLock(ctx context.Context, holder string) error {
	wait := 50 * time.Millisecond
	for {
		tag, err := s.pool.Exec(ctx, `
			INSERT INTO schema_lock (id, holder, expires_at) VALUES (1, $1, now() + $2::INTERVAL)
			ON CONFLICT (id) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
			WHERE schema_lock.expires_at < now()`, holder, migrationLease.String())
		if err != nil {
			return fmt.Errorf("acquire migration lock: %w", err)
		}
		if tag.RowsAffected() == 1 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for migration lock held by another replica: %w", ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, time.Second)
	}
}

func (s *Store) renewMigrationLock(ctx context.Context, holder string) error {
	tag, err := s.pool.Exec(ctx, `UPDATE schema_lock SET expires_at = now() + $2::INTERVAL WHERE id = 1 AND holder = $1`,
		holder, migrationLease.String())
	if err != nil {
		return fmt.Errorf("renew migration lock: %w", err)
	}
	if tag.RowsAffected() != 1 {
		return errors.New("migration lock lost: lease expired and another replica took it")
	}
	return nil
}

// LoadMigrations reads NNNN_name.sql files from fsys; offset separates engine-specific sets.
func LoadMigrations(fsys fs.FS, offset int) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var out []Migration
	seen := map[int]string{}
	for _, e := range entries {
		if e.IsDir() || path.Ext(e.Name()) != ".sql" {
			continue
		}
		base := strings.TrimSuffix(e.Name(), ".sql")
		num, name, ok := strings.Cut(base, "_")
		if !ok {
			return nil, fmt.Errorf("migration %q: want NNNN_name.sql", e.Name())
		}
		v, err := strconv.Atoi(num)
		if err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %q: bad version number", e.Name())
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("migrations %q and %q share version %d", prev, e.Name(), v)
		}
		seen[v] = e.Name()
		body, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("read migration %q: %w", e.Name(), err)
		}
		out = append(out, Migration{Version: v + offset, Name: name, SQL: string(body)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}
