package service

import (
	"context"

	"github.com/metalfleet/metalfleet/central/internal/store"
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
	out, err := store.ListAudit(ctx, s.store.Pool(), req.GetSubject(), req.GetTarget(), limit)
	if err != nil {
		return nil, toStatus(err, "audit")
	}
	return &apiv1.AuditServiceListResponse{Entries: out}, nil
}
