package tenancy_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/store"
	"github.com/metalfleet/metalfleet/central/internal/storetest"
	"github.com/metalfleet/metalfleet/central/internal/tenancy"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

const (
	viewer = apiv1.Level_LEVEL_VIEWER
	editor = apiv1.Level_LEVEL_EDITOR
	owner  = apiv1.Level_LEVEL_OWNER
)

// env is a migrated database with an admin token, tenant t1 and its
// project p1, and tenant t2 and its project p2.
type env struct {
	st     *store.Store
	look   *tenancy.Lookup
	admin  *auth.Principal
	p1, p2 string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := t.Context()
	st := storetest.Open(ctx, t, pg)
	e := &env{st: st, look: tenancy.NewLookup(st)}
	var secret string
	err := st.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		secret, err = tenancy.MintToken(ctx, tx, &apiv1.Token{AdminRole: editor}, time.Hour)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	e.admin = e.principal(t, secret)
	ctx = e.as(t, e.admin)
	for _, tn := range []string{"t1", "t2"} {
		if _, err := tenancy.CreateTenant(ctx, st, &apiv1.Tenant{Id: tn}); err != nil {
			t.Fatal(err)
		}
		p, err := tenancy.CreateProject(ctx, st, &apiv1.Project{TenantId: tn, Name: "p"})
		if err != nil {
			t.Fatal(err)
		}
		if tn == "t1" {
			e.p1 = p.GetId()
		} else {
			e.p2 = p.GetId()
		}
	}
	return e
}

// as is a context of a call by p, as the interceptor makes it.
func (e *env) as(t *testing.T, p *auth.Principal) context.Context {
	return auth.WithCall(t.Context(), &auth.Call{Principal: p, Method: "/test", RequestID: t.Name()})
}

func (e *env) principal(t *testing.T, secret string) *auth.Principal {
	t.Helper()
	p, err := e.look.Principal(t.Context(), secret)
	if err != nil {
		t.Fatalf("principal: %v", err)
	}
	return p
}

// mint creates a token by parent with the given project roles and
// lifetime (0: the default) and returns its secret and principal.
func (e *env) mint(t *testing.T, parent *auth.Principal, roles map[string]apiv1.Level, life time.Duration) (string, *auth.Principal) {
	t.Helper()
	secret, err := tenancy.CreateToken(e.as(t, parent), e.st, parent, &apiv1.Token{ProjectRoles: roles}, life)
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	return secret, e.principal(t, secret)
}

func (e *env) expiry(t *testing.T, id string) time.Time {
	t.Helper()
	tok, err := tenancy.GetToken(t.Context(), e.st.Pool(), id)
	if err != nil {
		t.Fatal(err)
	}
	return tok.GetExpiresAt().AsTime()
}

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("code %v (%v), want %v", got, err, want)
	}
}

func wantField(t *testing.T, err error, field string) {
	t.Helper()
	wantCode(t, err, codes.InvalidArgument)
	for _, d := range status.Convert(err).Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				if v.GetField() == field {
					return
				}
			}
		}
	}
	t.Fatalf("%v names no field %s", err, field)
}

// Revoking a token revokes its children and grandchildren at once and
// leaves its parent and siblings working; a descendant that missed the
// revoking UPDATE is refused all the same.
func TestRevokeCascadesThreeGenerations(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	roles := map[string]apiv1.Level{e.p1: owner}
	aSecret, a := e.mint(t, e.admin, roles, 0)
	bSecret, b := e.mint(t, a, roles, 0)
	cSecret, c := e.mint(t, b, roles, 0)
	dSecret, _ := e.mint(t, c, roles, 0)
	sibSecret, _ := e.mint(t, a, roles, 0)

	if _, err := tenancy.RevokeToken(e.as(t, a), e.st, a, b.TokenID); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]string{"b": bSecret, "c": cSecret, "d": dSecret} {
		if _, err := e.look.Principal(t.Context(), s); !errors.Is(err, auth.ErrUnauthenticated) {
			t.Errorf("%s after revoking b: %v, want unauthenticated", name, err)
		}
	}
	for name, s := range map[string]string{"a": aSecret, "sibling": sibSecret} {
		if _, err := e.look.Principal(t.Context(), s); err != nil {
			t.Errorf("%s after revoking b: %v", name, err)
		}
	}
	all, err := tenancy.ListTokens(t.Context(), e.st.Pool(), e.admin)
	if err != nil {
		t.Fatal(err)
	}
	var revoked []string
	for _, tok := range all {
		if tok.GetRevokedAt() != nil {
			revoked = append(revoked, tok.GetId())
		}
	}
	if len(revoked) != 3 || !slices.Contains(revoked, b.TokenID) || !slices.Contains(revoked, c.TokenID) {
		t.Errorf("revoked %v, want b, c and c's child", revoked)
	}

	// As if c had been minted after the revoking UPDATE ran.
	if _, err := e.st.Pool().Exec(t.Context(), `UPDATE tokens SET revoked_at = NULL WHERE id = $1`, c.TokenID); err != nil {
		t.Fatal(err)
	}
	if _, err := e.look.Principal(t.Context(), cSecret); !errors.Is(err, auth.ErrUnauthenticated) {
		t.Errorf("c with a revoked parent: %v, want unauthenticated", err)
	}
}

// Others' tokens: not found to whoever may not see them, refused to
// admin viewers, revocable by admin editors.
func TestRevokeOthers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, a := e.mint(t, e.admin, map[string]apiv1.Level{e.p1: owner}, 0)
	_, b := e.mint(t, e.admin, map[string]apiv1.Level{e.p1: owner}, 0)
	vSecret, err := tenancy.CreateToken(e.as(t, e.admin), e.st, e.admin, &apiv1.Token{AdminRole: viewer}, 0)
	if err != nil {
		t.Fatal(err)
	}
	adminViewer := e.principal(t, vSecret)

	_, err = tenancy.RevokeToken(e.as(t, a), e.st, a, b.TokenID)
	wantCode(t, err, codes.NotFound)
	_, err = tenancy.RevokeToken(e.as(t, adminViewer), e.st, adminViewer, b.TokenID)
	wantCode(t, err, codes.PermissionDenied)
	_, err = tenancy.RevokeToken(e.as(t, e.admin), e.st, e.admin, "no-such-token")
	wantCode(t, err, codes.NotFound)
	out, err := tenancy.RevokeToken(e.as(t, e.admin), e.st, e.admin, b.TokenID)
	if err != nil || out.GetRevokedAt() == nil || out.GetId() != b.TokenID {
		t.Fatalf("admin revokes b: %v, %v", out, err)
	}
	// Revoking again keeps the first revocation's time.
	var first time.Time
	if err := e.st.Pool().QueryRow(t.Context(), `SELECT revoked_at FROM tokens WHERE id = $1`, b.TokenID).Scan(&first); err != nil {
		t.Fatal(err)
	}
	if _, err := tenancy.RevokeToken(e.as(t, e.admin), e.st, e.admin, b.TokenID); err != nil {
		t.Fatal(err)
	}
	var again time.Time
	if err := e.st.Pool().QueryRow(t.Context(), `SELECT revoked_at FROM tokens WHERE id = $1`, b.TokenID).Scan(&again); err != nil {
		t.Fatal(err)
	}
	if !again.Equal(first) {
		t.Errorf("revoked_at moved from %v to %v", first, again)
	}
}

// A token never outlives the token that mints it: a lifetime asked for
// beyond the parent's expiry is refused naming it, the default is cut to
// it, and MintToken cuts whatever it is given.
func TestExpiryCappedByParent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	roles := map[string]apiv1.Level{e.p1: viewer}
	_, parent := e.mint(t, e.admin, roles, 5*time.Minute)
	parentExp := e.expiry(t, parent.TokenID)

	before := count(t, e, `SELECT count(*) FROM tokens`)
	_, err := tenancy.CreateToken(e.as(t, parent), e.st, parent, &apiv1.Token{ProjectRoles: roles}, time.Hour)
	wantField(t, err, "expires_in")
	if msg := status.Convert(err).Message(); !strings.Contains(msg, parentExp.UTC().Format(time.RFC3339)) {
		t.Errorf("message %q does not name the parent's expiry", msg)
	}
	if after := count(t, e, `SELECT count(*) FROM tokens`); after != before {
		t.Error("a refused mint stored a token")
	}

	_, child := e.mint(t, parent, roles, 0)
	if got := e.expiry(t, child.TokenID); got.After(parentExp) {
		t.Errorf("default lifetime: child expires %v, after its parent's %v", got, parentExp)
	}
	_, short := e.mint(t, parent, roles, 2*time.Minute)
	if got := e.expiry(t, short.TokenID); got.After(parentExp) || got.Before(time.Now()) {
		t.Errorf("two minutes: child expires %v, parent %v", got, parentExp)
	}

	var id string
	err = e.st.Tx(t.Context(), func(tx pgx.Tx) error {
		tok := &apiv1.Token{ProjectRoles: roles, CreatedBy: child.TokenID}
		_, err := tenancy.MintToken(t.Context(), tx, tok, tenancy.MaxTokenLifetime)
		id = tok.GetId()
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if got, max := e.expiry(t, id), e.expiry(t, child.TokenID); got.After(max) {
		t.Errorf("MintToken: grandchild expires %v, after its parent's %v", got, max)
	}
}

// A token is at most 31 mints away from its root.
func TestLineageDepth(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	parent := e.admin.TokenID
	mint := func() error {
		return e.st.Tx(t.Context(), func(tx pgx.Tx) error {
			tok := &apiv1.Token{AdminRole: viewer, CreatedBy: parent}
			if _, err := tenancy.MintToken(t.Context(), tx, tok, time.Minute); err != nil {
				return err
			}
			parent = tok.GetId()
			return nil
		})
	}
	for i := 1; i <= 31; i++ {
		if err := mint(); err != nil {
			t.Fatalf("mint %d: %v", i, err)
		}
	}
	wantCode(t, mint(), codes.FailedPrecondition)
	var ancestors []string
	if err := e.st.Pool().QueryRow(t.Context(), `SELECT ancestors FROM tokens WHERE id = $1`, parent).Scan(&ancestors); err != nil {
		t.Fatal(err)
	}
	if len(ancestors) != 31 || ancestors[0] != e.admin.TokenID {
		t.Errorf("deepest token's ancestors %v, want 31 from the root", ancestors)
	}
}

// A minted token's roles are within its minter's and name projects and
// tenants that exist.
func TestTokenRoles(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	_, p1Owner := e.mint(t, e.admin, map[string]apiv1.Level{e.p1: owner}, 0)
	tenantSecret, err := tenancy.CreateToken(e.as(t, e.admin), e.st, e.admin, &apiv1.Token{TenantRoles: map[string]apiv1.Level{"t2": editor}}, 0)
	if err != nil {
		t.Fatal(err)
	}
	t2Editor := e.principal(t, tenantSecret)
	missing := "00000000-0000-0000-0000-000000000000"

	tests := []struct {
		name   string
		caller *auth.Principal
		tok    *apiv1.Token
		code   codes.Code
		field  string
	}{
		{name: "lower role on own project", caller: p1Owner, tok: &apiv1.Token{ProjectRoles: map[string]apiv1.Level{e.p1: editor}}},
		{name: "admin role", caller: p1Owner, tok: &apiv1.Token{AdminRole: viewer}, code: codes.PermissionDenied},
		{name: "another project", caller: p1Owner, tok: &apiv1.Token{ProjectRoles: map[string]apiv1.Level{e.p2: viewer}}, code: codes.NotFound},
		{name: "a tenant role", caller: p1Owner, tok: &apiv1.Token{TenantRoles: map[string]apiv1.Level{"t1": viewer}}, code: codes.PermissionDenied},
		{name: "project through its tenant", caller: t2Editor, tok: &apiv1.Token{ProjectRoles: map[string]apiv1.Level{e.p2: editor}}},
		{name: "above the tenant role", caller: t2Editor, tok: &apiv1.Token{ProjectRoles: map[string]apiv1.Level{e.p2: owner}}, code: codes.PermissionDenied},
		{name: "missing project", caller: e.admin, tok: &apiv1.Token{ProjectRoles: map[string]apiv1.Level{missing: viewer}}, field: `project_roles["` + missing + `"]`},
		{name: "missing tenant", caller: e.admin, tok: &apiv1.Token{TenantRoles: map[string]apiv1.Level{"t9": viewer}}, field: `tenant_roles["t9"]`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := tenancy.CreateToken(e.as(t, tt.caller), e.st, tt.caller, tt.tok, 0)
			if tt.field != "" {
				wantField(t, err, tt.field)
				return
			}
			wantCode(t, err, tt.code)
			if err == nil && tt.tok.GetCreatedBy() != tt.caller.TokenID {
				t.Errorf("created by %q, want the caller %q", tt.tok.GetCreatedBy(), tt.caller.TokenID)
			}
		})
	}
}

// Projects keep their tenant, a tenant's project names are unique, and a
// tenant role reaches the tenant's projects.
func TestProjects(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := e.as(t, e.admin)
	_, err := tenancy.CreateProject(ctx, e.st, &apiv1.Project{TenantId: "t1", Name: "p"})
	wantCode(t, err, codes.AlreadyExists)
	if want := `tenant "t1" already has a project named "p"`; status.Convert(err).Message() != want {
		t.Errorf("duplicate name: %q, want %q", status.Convert(err).Message(), want)
	}
	_, err = tenancy.UpdateProject(ctx, e.st, &apiv1.Project{Id: e.p1, TenantId: "t2", Name: "p"})
	wantField(t, err, "project.tenant_id")
	_, err = tenancy.UpdateProject(ctx, e.st, &apiv1.Project{Id: "00000000-0000-0000-0000-000000000000", TenantId: "t1", Name: "p"})
	if !errors.Is(err, pgx.ErrNoRows) {
		t.Errorf("update missing: %v, want no rows", err)
	}
	out, err := tenancy.UpdateProject(ctx, e.st, &apiv1.Project{Id: e.p1, TenantId: "t1", Name: "web", Description: "frontend"})
	if err != nil || out.GetName() != "web" || out.GetMeta().GetGeneration() != 2 {
		t.Fatalf("update: %v, %v", out, err)
	}
	if n := count(t, e, `SELECT count(*) FROM projects WHERE id = $1 AND name = 'web'`, e.p1); n != 1 {
		t.Error("the name column did not follow the spec")
	}
	if n := count(t, e, `SELECT count(*) FROM audit WHERE target = $1 AND project_id = $2`, "project/"+e.p1, e.p1); n != 2 {
		t.Errorf("%d audit rows of project p1, want create and update", n)
	}

	ids, err := tenancy.TenantProjects(t.Context(), e.st.Pool(), []string{"t2", "t9"})
	if err != nil || !slices.Equal(ids, []string{e.p2}) {
		t.Errorf("TenantProjects(t2, t9) = %v, %v; want [%s]", ids, err, e.p2)
	}
	_, err = tenancy.DeleteTenant(ctx, e.st, "t2")
	if !store.IsCode(err, store.CodeForeignKeyViolation) {
		t.Errorf("delete a tenant with a project: %v", err)
	}
}

// The owner of each kind of object an access rule may name.
func TestResolve(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, q := range []string{
		`INSERT INTO networks (id, type, spec) VALUES ('internet', 'external', '{}')`,
		`INSERT INTO ips (ip, pool_id, unit, network_id, project_id, type, spec) VALUES ('fd00::1', 'pool', 1, 'internet', '` + e.p2 + `', 'static', '{}')`,
	} {
		if _, err := e.st.Pool().Exec(t.Context(), q); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		resource, id string
		want         auth.Owner
		err          error
	}{
		{"project", e.p1, auth.Owner{ProjectID: e.p1, TenantID: "t1"}, nil},
		{"tenant", "t2", auth.Owner{TenantID: "t2"}, nil},
		{"network", "internet", auth.Owner{Shared: true}, nil},
		{"ip", "fd00::0001", auth.Owner{ProjectID: e.p2, TenantID: "t2"}, nil},
		{"project", "00000000-0000-0000-0000-000000000000", auth.Owner{}, auth.ErrNotFound},
		{"machine", "m1", auth.Owner{}, auth.ErrNotFound},
	}
	for _, tt := range tests {
		got, err := e.look.Resolve(t.Context(), tt.resource, tt.id)
		if !errors.Is(err, tt.err) || got != tt.want {
			t.Errorf("Resolve(%s, %s) = %+v, %v; want %+v, %v", tt.resource, tt.id, got, err, tt.want, tt.err)
		}
	}
	if _, err := e.look.Resolve(t.Context(), "switch", "s1"); err == nil || errors.Is(err, auth.ErrNotFound) {
		t.Errorf("unknown resource: %v, want an error that is not NotFound", err)
	}
}

func count(t *testing.T, e *env, q string, args ...any) int {
	t.Helper()
	var n int
	if err := e.st.Pool().QueryRow(t.Context(), q, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
