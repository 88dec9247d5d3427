// Package store is central's only door to SQL: a pgx pool, transactions with
// retries, schema migrations and the row helpers the API services share.
//
// Every transaction is retried when it loses a serialization conflict
// (40001) or a deadlock (40P01): through crdbpgx.ExecuteTx on CockroachDB and
// a plain, commit-checked loop on PostgreSQL (see execute). The function
// given to Tx must therefore be safe to run more than once.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/cockroachdb/cockroach-go/v2/crdb/crdbpgxv5"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Store holds the connection pool.
type Store struct {
	pool      *pgxpool.Pool
	log       *slog.Logger
	cockroach bool
}

// Option configures Open.
type Option func(*pgxpool.Config)

// WithMaxConns caps the pool size.
func WithMaxConns(n int32) Option {
	return func(c *pgxpool.Config) { c.MaxConns = n }
}

// Open connects to url and checks the server answers. It does not migrate.
func Open(ctx context.Context, url string, log *slog.Logger, opts ...Option) (*Store, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	if cfg.MaxConns < 16 {
		cfg.MaxConns = 16
	}
	for _, o := range opts {
		o(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connect database: %w", err)
	}
	var version string
	if err := pool.QueryRow(ctx, "SELECT version()").Scan(&version); err != nil {
		pool.Close()
		return nil, fmt.Errorf("query database version: %w", err)
	}
	s := &Store{pool: pool, log: log, cockroach: isCockroach(version)}
	log.Info("database connected", "version", version)
	return s, nil
}

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Pool exposes the pool for read-only queries outside a transaction.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Cockroach reports whether the server is CockroachDB.
func (s *Store) Cockroach() bool { return s.cockroach }

// Tx runs fn in a transaction, retried on serialization failures.
func (s *Store) Tx(ctx context.Context, fn func(pgx.Tx) error) error {
	return s.execute(ctx, pgx.TxOptions{}, fn)
}

// SerializableTx runs fn at SERIALIZABLE isolation (CockroachDB's default, and
// on PostgreSQL what checks that read-then-write, such as prefix overlap, need).
func (s *Store) SerializableTx(ctx context.Context, fn func(pgx.Tx) error) error {
	return s.execute(ctx, pgx.TxOptions{IsoLevel: pgx.Serializable}, fn)
}

// maxRetries bounds how often a transaction that lost a serialization
// conflict or a deadlock is rerun.
const maxRetries = 20

// execute runs fn in a transaction and reruns it when the database says the
// transaction lost a conflict. On CockroachDB that is crdbpgx.ExecuteTx and
// its savepoint protocol, which CockroachDB needs. On PostgreSQL that
// protocol is wrong: the library treats RELEASE SAVEPOINT as the commit and
// ignores COMMIT's error, but PostgreSQL reports SERIALIZABLE conflicts at
// COMMIT, so a lost write skew would be reported as success (reproduced in
// TestSerializableWriteSkewIsRetried). There we run a plain transaction, check
// the commit, and rerun on 40001 (serialization failure) and 40P01 (deadlock
// victim); it also saves the SAVEPOINT and RELEASE round trips.
func (s *Store) execute(ctx context.Context, opts pgx.TxOptions, fn func(pgx.Tx) error) error {
	if s.cockroach {
		return crdbpgx.ExecuteTx(ctx, s.pool, opts, fn)
	}
	for attempt := 0; ; attempt++ {
		err := pgx.BeginTxFunc(ctx, s.pool, opts, fn)
		if err == nil || attempt >= maxRetries || !(IsCode(err, CodeSerializationFailure) || IsCode(err, CodeDeadlock)) {
			return err
		}
		s.log.Debug("transaction lost a conflict, retrying", "attempt", attempt+1, "err", err)
		// Full jitter keeps the losers of one conflict from meeting again.
		backoff := time.Duration(rand.Int64N(int64(time.Millisecond) << min(attempt, 6)))
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (after %d attempts: %w)", ctx.Err(), attempt+1, err)
		case <-time.After(backoff):
		}
	}
}

// SQLSTATE codes the services map to gRPC codes.
const (
	CodeUniqueViolation      = "23505"
	CodeForeignKeyViolation  = "23503"
	CodeCheckViolation       = "23514"
	CodeDeadlock             = "40P01"
	CodeSerializationFailure = "40001"
	CodeNumericOutOfRange    = "22003"
)

// IsCode reports whether err is a PostgreSQL error with one of the given SQLSTATEs.
func IsCode(err error, codes ...string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && slices.Contains(codes, pgErr.Code)
}

// IsNotFound reports whether err says that a read of one row found none
// (pgx.ErrNoRows), so that callers map it without knowing the driver.
func IsNotFound(err error) bool { return errors.Is(err, pgx.ErrNoRows) }

// Constraint returns the violated constraint's name, if err names one.
func Constraint(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.ConstraintName
	}
	return ""
}

func isCockroach(version string) bool {
	return len(version) >= 11 && version[:11] == "CockroachDB"
}
