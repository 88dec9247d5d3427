// Package store is central's only door to SQL: a pgx pool, transactions with
// retries, schema migrations and the row helpers the API services share.
//
// Every transaction goes through crdbpgx.ExecuteTx so that serialization
// failures (40001) are retried on PostgreSQL and CockroachDB alike; the
// function given to Tx must therefore be safe to run more than once.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

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

// maxDeadlockRetries bounds how often a deadlock victim is rerun.
const maxDeadlockRetries = 10

// execute wraps crdbpgx.ExecuteTx, which retries 40001, and also reruns
// PostgreSQL's deadlock victims (40P01): row locks taken in data-dependent
// order (IPAM ranges being split while others are taken) can form rare
// cycles, and the victim's transaction was rolled back entirely.
func (s *Store) execute(ctx context.Context, opts pgx.TxOptions, fn func(pgx.Tx) error) error {
	for attempt := 0; ; attempt++ {
		err := crdbpgx.ExecuteTx(ctx, s.pool, opts, fn)
		if err == nil || !IsCode(err, CodeDeadlock) || attempt >= maxDeadlockRetries {
			return err
		}
		s.log.Debug("deadlock victim, retrying transaction", "attempt", attempt+1)
	}
}

// SQLSTATE codes the services map to gRPC codes.
const (
	CodeUniqueViolation     = "23505"
	CodeForeignKeyViolation = "23503"
	CodeCheckViolation      = "23514"
	CodeDeadlock            = "40P01"
	CodeNumericOutOfRange   = "22003"
)

// IsCode reports whether err is a PostgreSQL error with the given SQLSTATE.
func IsCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

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
