package server_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// TestTokenLifetimeNeverOutlivesParent: a minted token never outlives the
// token that mints it. A lifetime asked for beyond the parent's expiry is
// refused naming expires_in and that expiry; without one asked for, the
// default 8 h is cut to what the parent has left.
func TestTokenLifetimeNeverOutlivesParent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p1 := map[string]apiv1.Level{e.p1: viewer}
	short := e.mint(t, "five-minutes", e.admin, &apiv1.TokenServiceCreateRequest{ProjectRoles: p1, ExpiresIn: durationpb.New(5 * time.Minute)})
	expiry := func(c *caller) time.Time {
		t.Helper()
		return ok(e.api.Token.Whoami(e.as(t, c), &apiv1.TokenServiceWhoamiRequest{}))(t).GetToken().GetExpiresAt().AsTime()
	}
	parentExp := expiry(short)

	tests := []struct {
		name string
		in   *durationpb.Duration
		want codes.Code
	}{
		{"366 days", durationpb.New(366 * 24 * time.Hour), codes.InvalidArgument},
		{"one hour", durationpb.New(time.Hour), codes.InvalidArgument},
		{"six minutes", durationpb.New(6 * time.Minute), codes.InvalidArgument},
		{"two minutes", durationpb.New(2 * time.Minute), codes.OK},
		{"default", nil, codes.OK},
		{"zero means default", durationpb.New(0), codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.count(t, `SELECT count(*) FROM tokens`)
			resp, err := e.api.Token.Create(e.as(t, short), &apiv1.TokenServiceCreateRequest{ProjectRoles: p1, ExpiresIn: tt.in})
			wantCode(t, err, tt.want)
			if tt.want != codes.OK {
				wantField(t, err, "expires_in")
				// The operator learns when the parent ends.
				if msg := status.Convert(err).Message(); !strings.Contains(msg, parentExp.UTC().Format(time.RFC3339)) {
					t.Errorf("message %q does not name the parent's expiry %s", msg, parentExp.UTC().Format(time.RFC3339))
				}
				if after := e.count(t, `SELECT count(*) FROM tokens`); after != before {
					t.Fatal("refused mint stored a token")
				}
				return
			}
			child := &caller{name: tt.name, token: resp.GetSecret(), tokenID: resp.GetToken().GetId()}
			got := expiry(child)
			if got.After(parentExp) || !resp.GetToken().GetExpiresAt().AsTime().Equal(got) {
				t.Fatalf("child expires %v (answered %v), parent %v", got, resp.GetToken().GetExpiresAt().AsTime(), parentExp)
			}
			var stored time.Time
			if err := e.db.QueryRow(t.Context(), `SELECT expires_at FROM tokens WHERE id = $1`, child.tokenID).Scan(&stored); err != nil {
				t.Fatal(err)
			}
			if stored.After(parentExp) {
				t.Fatalf("stored expiry %v after the parent's %v", stored, parentExp)
			}
			// Nor does a grandchild, minted with the default lifetime.
			if g := expiry(e.mint(t, "grandchild", child, &apiv1.TokenServiceCreateRequest{ProjectRoles: p1})); g.After(got) {
				t.Fatalf("grandchild expires %v after its parent %v", g, got)
			}
		})
	}
}

// TestTokenRevocationCascades: revoking a token revokes every token minted
// from it, directly or further down, at once; its ancestors and siblings
// keep working.
func TestTokenRevocationCascades(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	p1 := func(l apiv1.Level) *apiv1.TokenServiceCreateRequest {
		return &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p1: l}}
	}
	works := func(c *caller) error {
		_, err := e.api.Project.Get(e.as(t, c), &apiv1.ProjectServiceGetRequest{Id: e.p1})
		return err
	}
	// admin → a → b → c, a → a2; admin → sibling.
	a := e.mint(t, "a", e.admin, p1(owner))
	b := e.mint(t, "b", a, p1(editor))
	c := e.mint(t, "c", b, p1(viewer))
	a2 := e.mint(t, "a2", a, p1(viewer))
	sibling := e.mint(t, "sibling", e.admin, p1(viewer))

	tests := []struct {
		name    string
		revoke  *caller
		by      *caller
		dead    []*caller
		working []*caller
	}{
		{"middle by its creator", b, a, []*caller{b, c}, []*caller{e.admin, a, a2, sibling}},
		{"root by an admin", a, e.admin, []*caller{a, a2, b, c}, []*caller{e.admin, sibling}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ok(e.api.Token.Revoke(e.as(t, tt.by), &apiv1.TokenServiceRevokeRequest{Id: tt.revoke.tokenID}))(t)
			for _, d := range tt.dead {
				wantCode(t, works(d), codes.Unauthenticated)
				// Revoked in the table too, so that List says so.
				if n := e.count(t, `SELECT count(*) FROM tokens WHERE id = $1 AND revoked_at IS NOT NULL`, d.tokenID); n != 1 {
					t.Errorf("%s not marked revoked", d.name)
				}
			}
			for _, w := range tt.working {
				if err := works(w); err != nil {
					t.Errorf("%s: %v", w.name, err)
				}
			}
		})
	}

	// A revoked token can mint nothing more.
	_, err := e.api.Token.Create(e.as(t, c), p1(viewer))
	wantCode(t, err, codes.Unauthenticated)
}

// A child minted while its ancestor was being revoked can miss the cascading
// UPDATE (it was not there yet); authentication still refuses it because an
// ancestor is revoked.
func TestTokenRevokedAncestorRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	req := &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p1: viewer}}
	parent := e.mint(t, "parent", e.admin, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p1: owner}})
	child := e.mint(t, "child", parent, req)
	grandchild := e.mint(t, "grandchild", child, req)
	ok(e.api.Token.Revoke(e.as(t, e.admin), &apiv1.TokenServiceRevokeRequest{Id: parent.tokenID}))(t)
	// As if both had been minted after the revoking UPDATE ran.
	e.exec(t, `UPDATE tokens SET revoked_at = NULL WHERE id = ANY ($1)`, []string{child.tokenID, grandchild.tokenID})
	for _, c := range []*caller{child, grandchild} {
		_, err := e.api.Token.Whoami(e.as(t, c), &apiv1.TokenServiceWhoamiRequest{})
		wantCode(t, err, codes.Unauthenticated)
	}
}

// TestTokenRolesNeverWiden: a minted token never holds more than its
// parent: admin and project roles, and through a chain of mints.
func TestTokenRolesNeverWiden(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	adminViewer := e.mint(t, "admin-viewer", e.admin, &apiv1.TokenServiceCreateRequest{AdminRole: viewer})
	p1Editor := e.mint(t, "p1-editor", e.admin, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p1: editor}})
	// A narrowed child of an owner cannot mint its way back up.
	narrowed := e.mint(t, "narrowed", e.p1Owner, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p1: viewer}})
	proj := func(id string, l apiv1.Level) *apiv1.TokenServiceCreateRequest {
		return &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{id: l}}
	}
	ten := func(id string, l apiv1.Level) *apiv1.TokenServiceCreateRequest {
		return &apiv1.TokenServiceCreateRequest{TenantRoles: map[string]apiv1.Level{id: l}}
	}
	adm := func(l apiv1.Level) *apiv1.TokenServiceCreateRequest {
		return &apiv1.TokenServiceCreateRequest{AdminRole: l}
	}
	tests := []struct {
		name string
		by   *caller
		req  *apiv1.TokenServiceCreateRequest
		want codes.Code
	}{
		{"admin viewer mints admin viewer", adminViewer, adm(viewer), codes.OK},
		{"admin viewer mints admin editor", adminViewer, adm(editor), codes.PermissionDenied},
		{"admin viewer mints t1 viewer", adminViewer, ten(e.t1, viewer), codes.OK},
		{"admin viewer mints t1 editor", adminViewer, ten(e.t1, editor), codes.PermissionDenied},
		{"admin viewer mints p2 owner", adminViewer, proj(e.p2, owner), codes.PermissionDenied},
		{"admin viewer mints admin viewer and p1 editor", adminViewer, &apiv1.TokenServiceCreateRequest{AdminRole: viewer, ProjectRoles: map[string]apiv1.Level{e.p1: editor}}, codes.PermissionDenied},
		{"p1 owner mints admin viewer", e.p1Owner, adm(viewer), codes.PermissionDenied},
		{"t1 viewer mints admin viewer", e.t1Viewer, adm(viewer), codes.PermissionDenied},
		{"p1 editor mints p1 editor", p1Editor, proj(e.p1, editor), codes.OK},
		{"p1 editor mints p1 owner", p1Editor, proj(e.p1, owner), codes.PermissionDenied},
		{"p1 editor mints t1 viewer", p1Editor, ten(e.t1, viewer), codes.PermissionDenied},
		{"p1 editor mints p1 viewer and t1 viewer", p1Editor, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p1: viewer}, TenantRoles: map[string]apiv1.Level{e.t1: viewer}}, codes.PermissionDenied},
		{"p2 editor mints p2 owner", e.p2Editor, proj(e.p2, owner), codes.PermissionDenied},
		{"narrowed child mints p1 viewer", narrowed, proj(e.p1, viewer), codes.OK},
		{"narrowed child mints p1 editor", narrowed, proj(e.p1, editor), codes.PermissionDenied},
		{"narrowed child mints p1 owner", narrowed, proj(e.p1, owner), codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.count(t, `SELECT count(*) FROM tokens`)
			_, err := e.api.Token.Create(e.as(t, tt.by), tt.req)
			wantCode(t, err, tt.want)
			if after := e.count(t, `SELECT count(*) FROM tokens`); tt.want != codes.OK && after != before {
				t.Fatal("refused mint stored a token")
			}
		})
	}
}

// A lineage is at most 31 mints long: authentication checks every ancestor.
func TestTokenLineageDepth(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	req := func() *apiv1.TokenServiceCreateRequest {
		return &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p1: viewer}}
	}
	// The admin token is the root; e.mint fails the test on any refusal.
	c := e.admin
	for range 31 {
		c = e.mint(t, "link", c, req())
	}
	whoami := ok(e.api.Token.Whoami(e.as(t, c), &apiv1.TokenServiceWhoamiRequest{}))(t)
	if whoami.GetToken().GetId() != c.tokenID {
		t.Fatalf("Whoami = %v", whoami)
	}
	_, err := e.api.Token.Create(e.as(t, c), req())
	wantCode(t, err, codes.FailedPrecondition)
}
