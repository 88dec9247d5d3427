package service

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type auditService struct {
	*API
	apiv1.UnimplementedAuditServiceServer
}

func (s *auditService) List(ctx context.Context, req *apiv1.AuditServiceListRequest) (*apiv1.AuditServiceListResponse, error) {
	limit := req.GetLimit()
	switch {
	case limit == 0:
		limit = 100
	case limit > 1000:
		var v violations
		v.add("limit", "at most 1000")
		return nil, v.err()
	}
	rows, err := s.store.Pool().Query(ctx, `SELECT id, at, subject, method, request_id, target, COALESCE(project_id, '') FROM audit
		WHERE ($1 = '' OR subject = $1) AND ($2 = '' OR target = $2) ORDER BY at DESC, id LIMIT $3`, req.GetSubject(), req.GetTarget(), int64(limit))
	if err != nil {
		return nil, toStatus(err, "audit")
	}
	defer rows.Close()
	var out []*apiv1.AuditEntry
	for rows.Next() {
		e := &apiv1.AuditEntry{}
		var at time.Time
		if err := rows.Scan(&e.Id, &at, &e.Subject, &e.Method, &e.RequestId, &e.Target, &e.ProjectId); err != nil {
			return nil, toStatus(err, "audit")
		}
		e.At = timestamppb.New(at)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, toStatus(err, "audit")
	}
	return &apiv1.AuditServiceListResponse{Entries: out}, nil
}
