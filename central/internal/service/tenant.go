package service

import (
	"context"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type tenantService struct {
	*API
	apiv1.UnimplementedTenantServiceServer
}

var tenants = store.Table[*apiv1.Tenant]{Name: "tenants", New: func() *apiv1.Tenant { return &apiv1.Tenant{} }}

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
	out, err := create(ctx, s.API, tenants, req.GetTenant().GetId(), "", req.GetTenant())
	if err != nil {
		return nil, err
	}
	return &apiv1.TenantServiceCreateResponse{Tenant: out}, nil
}

func (s *tenantService) Get(ctx context.Context, req *apiv1.TenantServiceGetRequest) (*apiv1.TenantServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, tenants, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.TenantServiceGetResponse{Tenant: out}, nil
}

func (s *tenantService) List(ctx context.Context, _ *apiv1.TenantServiceListRequest) (*apiv1.TenantServiceListResponse, error) {
	all, err := tenants.List(ctx, s.store.Pool(), "TRUE")
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
	out, err := replace(ctx, s.API, tenants, req.GetTenant().GetId(), "", req.GetTenant())
	if err != nil {
		return nil, err
	}
	return &apiv1.TenantServiceUpdateResponse{Tenant: out}, nil
}

func (s *tenantService) Delete(ctx context.Context, req *apiv1.TenantServiceDeleteRequest) (*apiv1.TenantServiceDeleteResponse, error) {
	out, err := remove(ctx, s.API, tenants, req.GetId(), "")
	if err != nil {
		return nil, err
	}
	return &apiv1.TenantServiceDeleteResponse{Tenant: out}, nil
}

type projectService struct {
	*API
	apiv1.UnimplementedProjectServiceServer
}

var projects = store.Table[*apiv1.Project]{Name: "projects", New: func() *apiv1.Project { return &apiv1.Project{} }}

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
	p.Id = uuid.NewString()
	out, err := create(ctx, s.API, projects, p.GetId(), p.GetId(), p, store.Col{Name: "tenant_id", Val: p.GetTenantId()}, store.Col{Name: "name", Val: p.GetName()})
	if status.Code(err) == codes.AlreadyExists {
		return nil, status.Errorf(codes.AlreadyExists, "tenant %q already has a project named %q", p.GetTenantId(), p.GetName())
	}
	if err != nil {
		return nil, err
	}
	return &apiv1.ProjectServiceCreateResponse{Project: out}, nil
}

func (s *projectService) Get(ctx context.Context, req *apiv1.ProjectServiceGetRequest) (*apiv1.ProjectServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, projects, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.ProjectServiceGetResponse{Project: out}, nil
}

func (s *projectService) List(ctx context.Context, req *apiv1.ProjectServiceListRequest) (*apiv1.ProjectServiceListResponse, error) {
	all, err := projects.List(ctx, s.store.Pool(), "($1 = '' OR tenant_id = $1) AND ($2 = '' OR name = $2)", req.GetTenantId(), req.GetName())
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

// Update changes name, description and labels; a project never moves tenants.
func (s *projectService) Update(ctx context.Context, req *apiv1.ProjectServiceUpdateRequest) (*apiv1.ProjectServiceUpdateResponse, error) {
	p := req.GetProject()
	if err := validateProject(p); err != nil {
		return nil, err
	}
	cur, err := fetch(ctx, s.API, projects, p.GetId())
	if err != nil {
		return nil, err
	}
	if cur.GetTenantId() != p.GetTenantId() {
		var v violations
		v.add("project.tenant_id", "cannot change (is %q)", cur.GetTenantId())
		return nil, v.err()
	}
	out, err := replace(ctx, s.API, projects, p.GetId(), p.GetId(), p, store.Col{Name: "name", Val: p.GetName()})
	if err != nil {
		return nil, err
	}
	return &apiv1.ProjectServiceUpdateResponse{Project: out}, nil
}

func (s *projectService) Delete(ctx context.Context, req *apiv1.ProjectServiceDeleteRequest) (*apiv1.ProjectServiceDeleteResponse, error) {
	out, err := remove(ctx, s.API, projects, req.GetId(), req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.ProjectServiceDeleteResponse{Project: out}, nil
}
