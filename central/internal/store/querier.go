package store

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Querier is what reads and writes need: a transaction (pgx.Tx), usually,
// or the pool for reads outside one.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Nullable is s, or SQL NULL when s is empty.
func Nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// TextPairs reads rows of two text columns.
func TextPairs(rows pgx.Rows) ([][2]string, error) {
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) ([2]string, error) {
		var p [2]string
		err := r.Scan(&p[0], &p[1])
		return p, err
	})
}
