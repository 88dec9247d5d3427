package tenancy

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/store"
)

// Lookup is what the auth interceptor asks of tenancy, from the database
// on every call: whose token a bearer secret is (auth.TokenLookup, in
// token.go) and who owns the object an access rule names (auth.Resolver).
type Lookup struct{ st *store.Store }

// NewLookup returns the interceptor's lookup over st.
func NewLookup(st *store.Store) *Lookup { return &Lookup{st: st} }

// resolveQuery maps a resource named in an access rule to the query of
// its owner: (project id, tenant id, shared). A missing row means NotFound.
// It reads other aggregates' tables; it writes none.
func resolveQuery(resource string) (string, bool) {
	switch resource {
	case "project":
		return `SELECT id, tenant_id, FALSE FROM projects WHERE id = $1`, true
	case "tenant":
		return `SELECT '', id, FALSE FROM tenants WHERE id = $1`, true
	case "network":
		return `SELECT COALESCE(n.project_id, ''), COALESCE(p.tenant_id, ''), n.project_id IS NULL FROM networks n LEFT JOIN projects p ON p.id = n.project_id WHERE n.id = $1`, true
	case "ip":
		return `SELECT i.project_id, p.tenant_id, FALSE FROM ips i JOIN projects p ON p.id = i.project_id WHERE i.ip = $1`, true
	case "size_reservation":
		return `SELECT r.project_id, p.tenant_id, FALSE FROM size_reservations r JOIN projects p ON p.id = r.project_id WHERE r.id = $1`, true
	case "machine":
		// A machine known only from its BMC (not registered yet) belongs to
		// nobody: admins only.
		return `SELECT COALESCE(m.project_id, ''), COALESCE(p.tenant_id, ''), FALSE FROM machines m LEFT JOIN projects p ON p.id = m.project_id WHERE m.id = $1
			UNION ALL SELECT '', '', FALSE FROM machine_bmcs b WHERE b.machine_uuid = $1 AND NOT EXISTS (SELECT 1 FROM machines m WHERE m.id = $1)`, true
	}
	return "", false
}

// Resolve implements auth.Resolver.
func (l *Lookup) Resolve(ctx context.Context, resource, id string) (auth.Owner, error) {
	q, ok := resolveQuery(resource)
	if !ok {
		return auth.Owner{}, fmt.Errorf("no resolver for resource %q", resource)
	}
	if resource == "ip" {
		id = canonicalIP(id)
	}
	var o auth.Owner
	err := l.st.Pool().QueryRow(ctx, q, id).Scan(&o.ProjectID, &o.TenantID, &o.Shared)
	if errors.Is(err, pgx.ErrNoRows) {
		return o, auth.ErrNotFound
	}
	if err != nil {
		return o, fmt.Errorf("resolve %s %q: %w", resource, id, err)
	}
	return o, nil
}

// canonicalIP is an address as the ips table keys it, so that the rule
// for "fd00::0001" checks the owner of "fd00::1" that the IP service
// then reads (it normalises the same way).
func canonicalIP(s string) string {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().String()
	}
	return s
}
