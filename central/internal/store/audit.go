package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/auth"
)

// Audit writes the audit row of the current call inside tx: every
// mutating call writes one in the transaction of its change.
func Audit(ctx context.Context, tx pgx.Tx, target, projectID string) error {
	c := auth.CallFrom(ctx)
	if c == nil {
		return errors.New("audit: no authenticated call in context")
	}
	return AuditMany(ctx, tx, projectID, []AuditEntry{{Call: c, Target: target}})
}

// AuditEntry is one call's audit row in AuditMany.
type AuditEntry struct {
	Call   *auth.Call
	Target string
}

// AuditMany writes the audit rows of calls served together (a batch, or
// one call) in one statement; they share the project ("" for none).
func AuditMany(ctx context.Context, tx pgx.Tx, projectID string, entries []AuditEntry) error {
	n := len(entries)
	ids, subjects, methods, requestIDs, targets := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	for i, e := range entries {
		if e.Call == nil {
			return errors.New("audit: no authenticated call")
		}
		ids[i], subjects[i], methods[i], requestIDs[i], targets[i] = uuid.NewString(), e.Call.Principal.TokenID, e.Call.Method, e.Call.RequestID, e.Target
	}
	if _, err := tx.Exec(ctx, `INSERT INTO audit (id, subject, method, request_id, target, project_id)
		SELECT id, subject, method, request_id, target, NULLIF($6, '') FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[])
			AS x (id, subject, method, request_id, target)`, ids, subjects, methods, requestIDs, targets, projectID); err != nil {
		return fmt.Errorf("write audit row: %w", err)
	}
	return nil
}
