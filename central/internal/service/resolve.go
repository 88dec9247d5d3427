package service

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/auth"
)

// resolveQueries map a resource named in an access rule to its owner:
// (project id, tenant id, shared). A missing row means NotFound.
var resolveQueries = map[string]string{
	"project":          `SELECT id, tenant_id, FALSE FROM projects WHERE id = $1`,
	"tenant":           `SELECT '', id, FALSE FROM tenants WHERE id = $1`,
	"network":          `SELECT COALESCE(n.project_id, ''), COALESCE(p.tenant_id, ''), n.project_id IS NULL FROM networks n LEFT JOIN projects p ON p.id = n.project_id WHERE n.id = $1`,
	"ip":               `SELECT i.project_id, p.tenant_id, FALSE FROM ips i JOIN projects p ON p.id = i.project_id WHERE i.ip = $1`,
	"size_reservation": `SELECT r.project_id, p.tenant_id, FALSE FROM size_reservations r JOIN projects p ON p.id = r.project_id WHERE r.id = $1`,
	"machine":          `SELECT COALESCE(m.project_id, ''), COALESCE(p.tenant_id, ''), FALSE FROM machines m LEFT JOIN projects p ON p.id = m.project_id WHERE m.id = $1`,
}

// Resolve implements auth.Resolver.
func (a *API) Resolve(ctx context.Context, resource, id string) (auth.Owner, error) {
	q, ok := resolveQueries[resource]
	if !ok {
		return auth.Owner{}, fmt.Errorf("no resolver for resource %q", resource)
	}
	if resource == "ip" {
		id = canonicalIP(id)
	}
	var o auth.Owner
	err := a.store.Pool().QueryRow(ctx, q, id).Scan(&o.ProjectID, &o.TenantID, &o.Shared)
	if errors.Is(err, pgx.ErrNoRows) {
		return o, auth.ErrNotFound
	}
	if err != nil {
		return o, fmt.Errorf("resolve %s %q: %w", resource, id, err)
	}
	return o, nil
}
