package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
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

// AuditInsert is the head of every statement that writes audit rows; the
// rows follow it as a query of (id, subject, method, request_id, target,
// project_id). A domain statement that writes its rows and their audit in
// one round trip (network's combined hand-outs) embeds it, so that the
// audit table's shape stays written here, by its owner.
const AuditInsert = `INSERT INTO audit (id, subject, method, request_id, target, project_id) `

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
	if _, err := tx.Exec(ctx, AuditInsert+`
		SELECT id, subject, method, request_id, target, NULLIF($6, '') FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[])
			AS x (id, subject, method, request_id, target)`, ids, subjects, methods, requestIDs, targets, projectID); err != nil {
		return fmt.Errorf("write audit row: %w", err)
	}
	return nil
}

// ListAudit reads up to limit audit rows, newest first; an
// empty subject or target matches every row.
func ListAudit(ctx context.Context, db Querier, subject, target string, limit uint32) ([]*apiv1.AuditEntry, error) {
	rows, err := db.Query(ctx, `SELECT id, at, subject, method, request_id, target, COALESCE(project_id, '') FROM audit
		WHERE ($1 = '' OR subject = $1) AND ($2 = '' OR target = $2) ORDER BY at DESC, id LIMIT $3`, subject, target, int64(limit))
	if err != nil {
		return nil, fmt.Errorf("read audit: %w", err)
	}
	defer rows.Close()
	var out []*apiv1.AuditEntry
	for rows.Next() {
		e := &apiv1.AuditEntry{}
		var at time.Time
		if err := rows.Scan(&e.Id, &at, &e.Subject, &e.Method, &e.RequestId, &e.Target, &e.ProjectId); err != nil {
			return nil, fmt.Errorf("read audit: %w", err)
		}
		e.At = timestamppb.New(at)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read audit: %w", err)
	}
	return out, nil
}
