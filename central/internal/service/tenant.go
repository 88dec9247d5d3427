package service

import (
	"context"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/tenancy"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type tenantService struct {
	*API
	apiv1.UnimplementedTenantServiceServer
}

func validateTenant(t *apiv1.Tenant) error {
	var v violations
	if t == nil {
		v.add("tenant", "required")
		return v.err()
	}
	v.id("tenant.id", t.GetId())
	v.text("tenant.name", t.GetName(), 128)
	v.text("tenant.description", t.GetDescription(), 1024)
	v.labels("tenant.labels", t.GetLabels())
	return v.err()
}

func (s *tenantService) Create(ctx context.Context, req *apiv1.TenantServiceCreateRequest) (*apiv1.TenantServiceCreateResponse, error) {
	if err := validateTenant(req.GetTenant()); err != nil {
		return nil, err
	}
	out, err := tenancy.CreateTenant(ctx, s.store, req.GetTenant())
	if err != nil {
		return nil, toStatus(err, "tenant "+quote(req.GetTenant().GetId()))
	}
	return &apiv1.TenantServiceCreateResponse{Tenant: out}, nil
}

func (s *tenantService) Get(ctx context.Context, req *apiv1.TenantServiceGetRequest) (*apiv1.TenantServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, tenancy.Tenants, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.TenantServiceGetResponse{Tenant: out}, nil
}

func (s *tenantService) List(ctx context.Context, _ *apiv1.TenantServiceListRequest) (*apiv1.TenantServiceListResponse, error) {
	all, err := tenancy.Tenants.List(ctx, s.store.Pool(), "TRUE")
	if err != nil {
		return nil, toStatus(err, "tenants")
	}
	p := auth.PrincipalFrom(ctx)
	var out []*apiv1.Tenant
	for _, t := range all {
		if p.TenantLevel(t.GetId()) >= apiv1.Level_LEVEL_VIEWER {
			out = append(out, t)
		}
	}
	return &apiv1.TenantServiceListResponse{Tenants: out}, nil
}

func (s *tenantService) Update(ctx context.Context, req *apiv1.TenantServiceUpdateRequest) (*apiv1.TenantServiceUpdateResponse, error) {
	if err := validateTenant(req.GetTenant()); err != nil {
		return nil, err
	}
	out, err := tenancy.UpdateTenant(ctx, s.store, req.GetTenant())
	if err != nil {
		return nil, toStatus(err, "tenant "+quote(req.GetTenant().GetId()))
	}
	return &apiv1.TenantServiceUpdateResponse{Tenant: out}, nil
}

func (s *tenantService) Delete(ctx context.Context, req *apiv1.TenantServiceDeleteRequest) (*apiv1.TenantServiceDeleteResponse, error) {
	if req.GetId() == "" {
		return nil, requiredKey(tenancy.Tenants)
	}
	out, err := tenancy.DeleteTenant(ctx, s.store, req.GetId())
	if err != nil {
		return nil, toStatus(err, "tenant "+quote(req.GetId()))
	}
	return &apiv1.TenantServiceDeleteResponse{Tenant: out}, nil
}

type projectService struct {
	*API
	apiv1.UnimplementedProjectServiceServer
}

func validateProject(p *apiv1.Project) error {
	var v violations
	if p == nil {
		v.add("project", "required")
		return v.err()
	}
	v.id("project.tenant_id", p.GetTenantId())
	v.id("project.name", p.GetName())
	v.text("project.description", p.GetDescription(), 1024)
	v.labels("project.labels", p.GetLabels())
	return v.err()
}

func (s *projectService) Create(ctx context.Context, req *apiv1.ProjectServiceCreateRequest) (*apiv1.ProjectServiceCreateResponse, error) {
	p := req.GetProject()
	if err := validateProject(p); err != nil {
		return nil, err
	}
	if p.GetId() != "" {
		var v violations
		v.add("project.id", "must be empty: the server chooses project ids")
		return nil, v.err()
	}
	out, err := tenancy.CreateProject(ctx, s.store, p)
	if err != nil {
		return nil, toStatus(err, "project "+quote(p.GetId()))
	}
	return &apiv1.ProjectServiceCreateResponse{Project: out}, nil
}

func (s *projectService) Get(ctx context.Context, req *apiv1.ProjectServiceGetRequest) (*apiv1.ProjectServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, tenancy.Projects, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.ProjectServiceGetResponse{Project: out}, nil
}

func (s *projectService) List(ctx context.Context, req *apiv1.ProjectServiceListRequest) (*apiv1.ProjectServiceListResponse, error) {
	all, err := tenancy.Projects.List(ctx, s.store.Pool(), "($1 = '' OR tenant_id = $1) AND ($2 = '' OR name = $2)", req.GetTenantId(), req.GetName())
	if err != nil {
		return nil, toStatus(err, "projects")
	}
	p := auth.PrincipalFrom(ctx)
	var out []*apiv1.Project
	for _, pr := range all {
		if p.Visible(pr.GetId(), pr.GetTenantId()) {
			out = append(out, pr)
		}
	}
	return &apiv1.ProjectServiceListResponse{Projects: out}, nil
}

// Update changes name, description and labels; a project never moves
// tenants (tenancy refuses that).
func (s *projectService) Update(ctx context.Context, req *apiv1.ProjectServiceUpdateRequest) (*apiv1.ProjectServiceUpdateResponse, error) {
	p := req.GetProject()
	if err := validateProject(p); err != nil {
		return nil, err
	}
	if p.GetId() == "" {
		return nil, requiredKey(tenancy.Projects)
	}
	out, err := tenancy.UpdateProject(ctx, s.store, p)
	if err != nil {
		return nil, toStatus(err, "project "+quote(p.GetId()))
	}
	return &apiv1.ProjectServiceUpdateResponse{Project: out}, nil
}

func (s *projectService) Delete(ctx context.Context, req *apiv1.ProjectServiceDeleteRequest) (*apiv1.ProjectServiceDeleteResponse, error) {
	if req.GetId() == "" {
		return nil, requiredKey(tenancy.Projects)
	}
	out, err := tenancy.DeleteProject(ctx, s.store, req.GetId())
	if err != nil {
		return nil, toStatus(err, "project "+quote(req.GetId()))
	}
	return &apiv1.ProjectServiceDeleteResponse{Project: out}, nil
}
