// Package tenancy is who may do what: the only writer of tenants, projects
// and tokens. It keeps tenants and their projects, mints tokens under the
// rules every token obeys (no role the minter lacks, no role on an object
// that does not exist, no life beyond the minter's, a bounded lineage),
// revokes a token with everything minted from it, and answers the auth
// interceptor through Lookup: whose secret a request carries and who owns
// the object it names. The callers validate requests and map errors.
package tenancy

import (
	"context"
	"fmt"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/field"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Tenants reads tenants as stored; only this package writes them.
var Tenants = store.Table[*apiv1.Tenant]{Name: "tenants", New: func() *apiv1.Tenant { return &apiv1.Tenant{} }}

// Projects reads projects as stored; only this package writes them.
var Projects = store.Table[*apiv1.Project]{Name: "projects", New: func() *apiv1.Project { return &apiv1.Project{} }}

// CreateTenant stores a new tenant (validated by the caller) with its audit row.
func CreateTenant(ctx context.Context, st *store.Store, t *apiv1.Tenant) (*apiv1.Tenant, error) {
	return Tenants.Create(ctx, st, t.GetId(), "", t)
}

// UpdateTenant overwrites a tenant with its audit row.
func UpdateTenant(ctx context.Context, st *store.Store, t *apiv1.Tenant) (*apiv1.Tenant, error) {
	return Tenants.Replace(ctx, st, t.GetId(), "", t)
}

// DeleteTenant removes a tenant with its audit row; one with projects
// stays (the projects' foreign key).
func DeleteTenant(ctx context.Context, st *store.Store, id string) (*apiv1.Tenant, error) {
	return Tenants.Remove(ctx, st, id, "")
}

// CreateProject stores a new project (validated by the caller, without an
// id) under an id chosen here, with its audit row. A tenant's project
// names are unique.
func CreateProject(ctx context.Context, st *store.Store, p *apiv1.Project) (*apiv1.Project, error) {
	p.Id = uuid.NewString()
	out, err := Projects.Create(ctx, st, p.GetId(), p.GetId(), p, store.Col{Name: "tenant_id", Val: p.GetTenantId()}, store.Col{Name: "name", Val: p.GetName()})
	if store.IsCode(err, store.CodeUniqueViolation) {
		// The id is fresh: the name is what is taken.
		return nil, status.Errorf(codes.AlreadyExists, "tenant %q already has a project named %q", p.GetTenantId(), p.GetName())
	}
	return out, err
}

// UpdateProject changes a project's name, description and labels, with
// its audit row; a project never moves tenants, so p must name the
// tenant it has.
func UpdateProject(ctx context.Context, st *store.Store, p *apiv1.Project) (*apiv1.Project, error) {
	var out *apiv1.Project
	err := st.Tx(ctx, func(tx pgx.Tx) error {
		cur, err := Projects.GetForUpdate(ctx, tx, p.GetId())
		if err != nil {
			return err
		}
		if cur.GetTenantId() != p.GetTenantId() {
			v := field.Violations{Clip: auth.ClipEcho}
			v.Add("project.tenant_id", "cannot change (is %q)", cur.GetTenantId())
			return v.Err("")
		}
		if out, err = Projects.Update(ctx, tx, p.GetId(), p, store.Col{Name: "name", Val: p.GetName()}); err != nil {
			return err
		}
		return store.Audit(ctx, tx, Projects.Kind()+"/"+p.GetId(), p.GetId())
	})
	return out, err
}

// DeleteProject removes a project with its audit row; one that anything
// still belongs to stays (their foreign keys).
func DeleteProject(ctx context.Context, st *store.Store, id string) (*apiv1.Project, error) {
	return Projects.Remove(ctx, st, id, id)
}

// TenantProjects returns the ids of the projects of the given tenants: a
// tenant role reaches every project of the tenant.
func TenantProjects(ctx context.Context, db store.Querier, tenants []string) ([]string, error) {
	rows, err := db.Query(ctx, `SELECT id FROM projects WHERE tenant_id = ANY($1)`, tenants)
	if err != nil {
		return nil, fmt.Errorf("read projects of tenants: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("read projects of tenants: %w", err)
	}
	return ids, nil
}
