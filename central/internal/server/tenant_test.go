package server_test

import (
	"slices"
	"testing"

	"google.golang.org/grpc/codes"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func TestTenantsAndProjects(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := e.as(t, e.admin)
	tenants, projects := e.api.Tenant, e.api.Project

	// Tenants.
	t3 := ok(tenants.Create(ctx, &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: "t3", Name: "Three", Labels: map[string]string{"tier": "gold"}}}))(t).GetTenant()
	wantGeneration(t, t3, 1)
	if got := ok(tenants.Get(ctx, &apiv1.TenantServiceGetRequest{Id: "t3"}))(t).GetTenant(); got.GetName() != "Three" || got.GetLabels()["tier"] != "gold" {
		t.Fatalf("Get = %v", got)
	}
	ids := func(c *caller) []string {
		var out []string
		for _, x := range ok(tenants.List(e.as(t, c), &apiv1.TenantServiceListRequest{}))(t).GetTenants() {
			out = append(out, x.GetId())
		}
		return out
	}
	if got := ids(e.admin); !slices.Equal(got, []string{"t1", "t2", "t3"}) {
		t.Fatalf("List as admin = %v", got)
	}
	if got := ids(e.t1Viewer); !slices.Equal(got, []string{"t1"}) {
		t.Fatalf("List as t1 viewer = %v", got)
	}
	if got := ids(e.p1Owner); len(got) != 0 {
		t.Fatalf("List as p1 owner (no tenant role) = %v", got)
	}
	t3.Name = "Drei"
	t3.Meta = nil
	if got := ok(tenants.Update(ctx, &apiv1.TenantServiceUpdateRequest{Tenant: t3}))(t).GetTenant(); got.GetName() != "Drei" || got.GetMeta().GetGeneration() != 2 {
		t.Fatalf("Update = %v", got)
	}

	// Projects.
	pa := ok(projects.Create(ctx, &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: "t3", Name: "web", Description: "frontend"}}))(t).GetProject()
	wantGeneration(t, pa, 1)
	if len(pa.GetId()) != 36 || pa.GetTenantId() != "t3" {
		t.Fatalf("Create = %v", pa)
	}
	// The same name in another tenant is fine.
	ok(projects.Create(ctx, &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: "t2", Name: "web"}}))(t)
	if got := ok(projects.Get(ctx, &apiv1.ProjectServiceGetRequest{Id: pa.GetId()}))(t).GetProject(); got.GetName() != "web" || got.GetDescription() != "frontend" {
		t.Fatalf("Get = %v", got)
	}
	count := func(req *apiv1.ProjectServiceListRequest) int {
		return len(ok(projects.List(ctx, req))(t).GetProjects())
	}
	for _, tt := range []struct {
		req  *apiv1.ProjectServiceListRequest
		want int
	}{
		{&apiv1.ProjectServiceListRequest{}, 4},
		{&apiv1.ProjectServiceListRequest{TenantId: "t3"}, 1},
		{&apiv1.ProjectServiceListRequest{Name: "web"}, 2},
		{&apiv1.ProjectServiceListRequest{TenantId: "t2", Name: "web"}, 1},
		{&apiv1.ProjectServiceListRequest{TenantId: "t9"}, 0},
	} {
		if got := count(tt.req); got != tt.want {
			t.Errorf("List(%v) = %d projects, want %d", tt.req, got, tt.want)
		}
	}
	pa.Name = "www"
	pa.Meta = nil
	if got := ok(projects.Update(ctx, &apiv1.ProjectServiceUpdateRequest{Project: pa}))(t).GetProject(); got.GetName() != "www" || got.GetMeta().GetGeneration() != 2 {
		t.Fatalf("Update = %v", got)
	}
	// The project owner may rename it too.
	ok(projects.Update(e.as(t, e.p1Owner), &apiv1.ProjectServiceUpdateRequest{Project: &apiv1.Project{Id: e.p1, TenantId: "t1", Name: "p1", Description: "renamed by its owner"}}))(t)

	// A project with a size reservation cannot go, nor can a tenant with projects.
	ok(e.api.Partition.Create(ctx, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "fra1"}}))(t)
	ok(e.api.Size.Create(ctx, &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: "c1", Constraints: []*apiv1.SizeConstraint{cores(1, 2)}}}))(t)
	ok(e.api.SizeReservation.Create(ctx, &apiv1.SizeReservationServiceCreateRequest{SizeReservation: &apiv1.SizeReservation{Id: "r", SizeId: "c1", PartitionId: "fra1", ProjectId: pa.GetId(), Amount: 1}}))(t)

	missing := "00000000-0000-0000-0000-000000000000"
	e.rejectAll(t, e.admin, []reject{
		{name: "tenant create nil", field: "tenant", call: call(tenants.Create, &apiv1.TenantServiceCreateRequest{})},
		{name: "tenant create bad id", field: "tenant.id", call: call(tenants.Create, &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: "T4"}})},
		{name: "tenant create label key", field: `tenant.labels[""]`, call: call(tenants.Create, &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: "t4", Labels: map[string]string{"": "x"}}})},
		{name: "tenant create duplicate", code: codes.AlreadyExists, call: call(tenants.Create, &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: "t3"}})},
		{name: "tenant get missing", code: codes.NotFound, call: call(tenants.Get, &apiv1.TenantServiceGetRequest{Id: "t9"})},
		{name: "tenant get empty id", field: "id", call: call(tenants.Get, &apiv1.TenantServiceGetRequest{})},
		{name: "tenant update missing", code: codes.NotFound, call: call(tenants.Update, &apiv1.TenantServiceUpdateRequest{Tenant: &apiv1.Tenant{Id: "t9"}})},
		{name: "tenant update nil", field: "tenant.id", call: call(tenants.Update, &apiv1.TenantServiceUpdateRequest{})},
		{name: "tenant delete missing", code: codes.NotFound, call: call(tenants.Delete, &apiv1.TenantServiceDeleteRequest{Id: "t9"})},
		{name: "tenant delete with projects", code: codes.FailedPrecondition, call: call(tenants.Delete, &apiv1.TenantServiceDeleteRequest{Id: "t3"})},
		{name: "project create nil", field: "project.tenant_id", call: call(projects.Create, &apiv1.ProjectServiceCreateRequest{})},
		{name: "project create with id", field: "project.id", call: call(projects.Create, &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{Id: missing, TenantId: "t3", Name: "x"}})},
		{name: "project create bad name", field: "project.name", call: call(projects.Create, &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: "t3", Name: "Web App"}})},
		{name: "project create duplicate name", code: codes.AlreadyExists, call: call(projects.Create, &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: "t3", Name: "www"}})},
		{name: "project create unknown tenant", code: codes.NotFound, call: call(projects.Create, &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: "t9", Name: "x"}})},
		{name: "project get missing", code: codes.NotFound, call: call(projects.Get, &apiv1.ProjectServiceGetRequest{Id: missing})},
		{name: "project update missing", code: codes.NotFound, call: call(projects.Update, &apiv1.ProjectServiceUpdateRequest{Project: &apiv1.Project{Id: missing, TenantId: "t3", Name: "x"}})},
		{name: "project update moves tenant", field: "project.tenant_id", call: call(projects.Update, &apiv1.ProjectServiceUpdateRequest{Project: &apiv1.Project{Id: pa.GetId(), TenantId: "t2", Name: "www"}})},
		{name: "project update to a taken name", code: codes.AlreadyExists, call: call(projects.Update, &apiv1.ProjectServiceUpdateRequest{Project: &apiv1.Project{Id: e.p2, TenantId: "t2", Name: "web"}})},
		{name: "project delete missing", code: codes.NotFound, call: call(projects.Delete, &apiv1.ProjectServiceDeleteRequest{Id: missing})},
		{name: "project delete in use", code: codes.FailedPrecondition, call: call(projects.Delete, &apiv1.ProjectServiceDeleteRequest{Id: pa.GetId()})},
	})

	ok(e.api.SizeReservation.Delete(ctx, &apiv1.SizeReservationServiceDeleteRequest{Id: "r"}))(t)
	ok(projects.Delete(ctx, &apiv1.ProjectServiceDeleteRequest{Id: pa.GetId()}))(t)
	_, err := projects.Get(ctx, &apiv1.ProjectServiceGetRequest{Id: pa.GetId()})
	wantCode(t, err, codes.NotFound)
	ok(tenants.Delete(ctx, &apiv1.TenantServiceDeleteRequest{Id: "t3"}))(t)
	_, err = tenants.Get(ctx, &apiv1.TenantServiceGetRequest{Id: "t3"})
	wantCode(t, err, codes.NotFound)
}
