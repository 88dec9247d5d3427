package service

import (
	"context"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/tenancy"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type sizeReservationService struct {
	*API
	apiv1.UnimplementedSizeReservationServiceServer
}

func (s *sizeReservationService) Create(ctx context.Context, req *apiv1.SizeReservationServiceCreateRequest) (*apiv1.SizeReservationServiceCreateResponse, error) {
	r := req.GetSizeReservation()
	out, err := catalog.CreateSizeReservation(ctx, s.store, r)
	if err != nil {
		return nil, toStatus(err, named(catalog.SizeReservations, r.GetId()))
	}
	return &apiv1.SizeReservationServiceCreateResponse{SizeReservation: out}, nil
}

func (s *sizeReservationService) Get(ctx context.Context, req *apiv1.SizeReservationServiceGetRequest) (*apiv1.SizeReservationServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, catalog.SizeReservations, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.SizeReservationServiceGetResponse{SizeReservation: out}, nil
}

func (s *sizeReservationService) List(ctx context.Context, req *apiv1.SizeReservationServiceListRequest) (*apiv1.SizeReservationServiceListResponse, error) {
	all, err := catalog.ListSizeReservations(ctx, s.store.Pool(), req.GetProjectId())
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
	out, err := catalog.UpdateSizeReservation(ctx, s.store, r)
	if err != nil {
		return nil, toStatus(err, named(catalog.SizeReservations, r.GetId()))
	}
	return &apiv1.SizeReservationServiceUpdateResponse{SizeReservation: out}, nil
}

func (s *sizeReservationService) Delete(ctx context.Context, req *apiv1.SizeReservationServiceDeleteRequest) (*apiv1.SizeReservationServiceDeleteResponse, error) {
	if req.GetId() == "" {
		return nil, requiredKey(catalog.SizeReservations)
	}
	out, err := catalog.DeleteSizeReservation(ctx, s.store, req.GetId())
	if err != nil {
		return nil, toStatus(err, named(catalog.SizeReservations, req.GetId()))
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
