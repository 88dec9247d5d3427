package service

import (
	"context"

	"github.com/google/uuid"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/store"
	"github.com/metalfleet/metalfleet/central/internal/tenancy"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type sizeReservationService struct {
	*API
	apiv1.UnimplementedSizeReservationServiceServer
}

var sizeReservations = store.Table[*apiv1.SizeReservation]{Name: "size_reservations", New: func() *apiv1.SizeReservation { return &apiv1.SizeReservation{} }}

// maxReservationAmount bounds a reservation's machine count: more than any
// partition holds, and far inside the amount column's INT.
const maxReservationAmount = 100000

func validateSizeReservation(r *apiv1.SizeReservation, create bool) error {
	var v violations
	if r == nil {
		v.add("size_reservation", "required")
		return v.err()
	}
	if create {
		v.optionalID("size_reservation.id", r.GetId())
	} else {
		// Ids are client-chosen or server-made UUIDs; both match the id pattern.
		v.id("size_reservation.id", r.GetId())
	}
	v.id("size_reservation.size_id", r.GetSizeId())
	v.id("size_reservation.partition_id", r.GetPartitionId())
	v.uuid("size_reservation.project_id", r.GetProjectId())
	if r.GetAmount() == 0 || r.GetAmount() > maxReservationAmount {
		v.add("size_reservation.amount", "must be 1-%d", maxReservationAmount)
	}
	v.text("size_reservation.description", r.GetDescription(), 1024)
	v.labels("size_reservation.labels", r.GetLabels())
	return v.err()
}

func reservationCols(r *apiv1.SizeReservation) []store.Col {
	return []store.Col{{Name: "size_id", Val: r.GetSizeId()}, {Name: "partition_id", Val: r.GetPartitionId()}, {Name: "project_id", Val: r.GetProjectId()}, {Name: "amount", Val: int64(r.GetAmount())}}
}

func (s *sizeReservationService) Create(ctx context.Context, req *apiv1.SizeReservationServiceCreateRequest) (*apiv1.SizeReservationServiceCreateResponse, error) {
	r := req.GetSizeReservation()
	if err := validateSizeReservation(r, true); err != nil {
		return nil, err
	}
	if r.GetId() == "" {
		r.Id = uuid.NewString()
	}
	out, err := create(ctx, s.API, sizeReservations, r.GetId(), r.GetProjectId(), r, reservationCols(r)...)
	if err != nil {
		return nil, err
	}
	return &apiv1.SizeReservationServiceCreateResponse{SizeReservation: out}, nil
}

func (s *sizeReservationService) Get(ctx context.Context, req *apiv1.SizeReservationServiceGetRequest) (*apiv1.SizeReservationServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, sizeReservations, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.SizeReservationServiceGetResponse{SizeReservation: out}, nil
}

func (s *sizeReservationService) List(ctx context.Context, req *apiv1.SizeReservationServiceListRequest) (*apiv1.SizeReservationServiceListResponse, error) {
	all, err := sizeReservations.List(ctx, s.store.Pool(), "($1 = '' OR project_id = $1)", req.GetProjectId())
	if err != nil {
		return nil, toStatus(err, "size reservations")
	}
	out, err := visible(ctx, s.API, all, (*apiv1.SizeReservation).GetProjectId, false)
	if err != nil {
		return nil, err
	}
	return &apiv1.SizeReservationServiceListResponse{SizeReservations: out}, nil
}

func (s *sizeReservationService) Update(ctx context.Context, req *apiv1.SizeReservationServiceUpdateRequest) (*apiv1.SizeReservationServiceUpdateResponse, error) {
	r := req.GetSizeReservation()
	if err := validateSizeReservation(r, false); err != nil {
		return nil, err
	}
	out, err := replace(ctx, s.API, sizeReservations, r.GetId(), r.GetProjectId(), r, reservationCols(r)...)
	if err != nil {
		return nil, err
	}
	return &apiv1.SizeReservationServiceUpdateResponse{SizeReservation: out}, nil
}

func (s *sizeReservationService) Delete(ctx context.Context, req *apiv1.SizeReservationServiceDeleteRequest) (*apiv1.SizeReservationServiceDeleteResponse, error) {
	// The audit row names the project the reservation belonged to.
	cur, err := fetch(ctx, s.API, sizeReservations, req.GetId())
	if err != nil {
		return nil, err
	}
	out, err := remove(ctx, s.API, sizeReservations, req.GetId(), cur.GetProjectId())
	if err != nil {
		return nil, err
	}
	return &apiv1.SizeReservationServiceDeleteResponse{SizeReservation: out}, nil
}

// visible keeps the items whose project the caller may see. Items without a
// project are kept when unowned is true (shared networks) and otherwise only
// for callers who see everything (unallocated machines).
func visible[T any](ctx context.Context, a *API, items []T, project func(T) string, unowned bool) ([]T, error) {
	vis, err := a.visibleProjects(ctx)
	if err != nil {
		return nil, err
	}
	var out []T
	for _, it := range items {
		p := project(it)
		if vis.all || (p == "" && unowned) || (p != "" && vis.sees(p)) {
			out = append(out, it)
		}
	}
	return out, nil
}

// visibility answers which projects the caller may list objects of.
type visibility struct {
	all      bool
	projects map[string]bool
}

func (v visibility) sees(projectID string) bool { return v.all || v.projects[projectID] }

// visibleProjects resolves the caller's tenant roles to project ids once per list call.
func (a *API) visibleProjects(ctx context.Context) (visibility, error) {
	p := auth.PrincipalFrom(ctx)
	if p.SeesAll() {
		return visibility{all: true}, nil
	}
	vis := visibility{projects: map[string]bool{}}
	for id, l := range p.Projects {
		if l >= apiv1.Level_LEVEL_VIEWER {
			vis.projects[id] = true
		}
	}
	var tenants []string
	for id, l := range p.Tenants {
		if l >= apiv1.Level_LEVEL_VIEWER {
			tenants = append(tenants, id)
		}
	}
	if len(tenants) > 0 {
		ids, err := tenancy.TenantProjects(ctx, a.store.Pool(), tenants)
		if err != nil {
			return vis, toStatus(err, "projects")
		}
		for _, id := range ids {
			vis.projects[id] = true
		}
	}
	return vis, nil
}
