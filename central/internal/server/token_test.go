package server_test

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

const (
	viewer = apiv1.Level_LEVEL_VIEWER
	editor = apiv1.Level_LEVEL_EDITOR
	owner  = apiv1.Level_LEVEL_OWNER
)

func TestTokens(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	api := e.api.Token
	whoami := func(c *caller) *apiv1.Token {
		t.Helper()
		return ok(api.Whoami(e.as(t, c), &apiv1.TokenServiceWhoamiRequest{}))(t).GetToken()
	}

	t.Run("whoami", func(t *testing.T) {
		me := whoami(e.p1Owner)
		if me.GetId() != e.p1Owner.tokenID || me.GetProjectRoles()[e.p1] != owner || len(me.GetTenantRoles()) != 0 ||
			me.GetAdminRole() != apiv1.Level_LEVEL_UNSPECIFIED || me.GetCreatedBy() != e.admin.tokenID || me.GetDescription() != "p1-owner" {
			t.Fatalf("Whoami = %v", me)
		}
		// Default lifetime 8h.
		if d := time.Until(me.GetExpiresAt().AsTime()); d < 7*time.Hour || d > 8*time.Hour {
			t.Fatalf("default lifetime ends in %v", d)
		}
		if a := whoami(e.admin); a.GetAdminRole() != editor || a.GetCreatedBy() != "" {
			t.Fatalf("admin Whoami = %v", a)
		}
	})

	t.Run("create", func(t *testing.T) {
		resp := ok(api.Create(e.as(t, e.p1Owner), &apiv1.TokenServiceCreateRequest{
			Description: "ci", ProjectRoles: map[string]apiv1.Level{e.p1: editor}, ExpiresIn: durationpb.New(time.Hour),
		}))(t)
		if !strings.HasPrefix(resp.GetSecret(), "mft_") || len(resp.GetSecret()) != 4+43 {
			t.Fatalf("secret %q does not look like mft_<43>", resp.GetSecret())
		}
		tok := resp.GetToken()
		if _, err := uuid.Parse(tok.GetId()); err != nil || tok.GetCreatedBy() != e.p1Owner.tokenID || tok.GetProjectRoles()[e.p1] != editor {
			t.Fatalf("Create = %v", tok)
		}
		if d := time.Until(tok.GetExpiresAt().AsTime()); d < 59*time.Minute || d > time.Hour {
			t.Fatalf("expires in %v, want 1h", d)
		}
		// The secret is not stored, only its hash.
		if n := e.count(t, `SELECT count(*) FROM tokens WHERE spec::TEXT LIKE '%' || $1 || '%' OR encode(secret_hash, 'escape') LIKE '%' || $1 || '%'`, resp.GetSecret()); n != 0 {
			t.Fatal("secret stored in clear")
		}
		c := &caller{name: "ci", token: resp.GetSecret(), tokenID: tok.GetId()}
		if got := whoami(c); got.GetId() != tok.GetId() {
			t.Fatalf("new token's Whoami = %v", got)
		}
		// It works as an editor of p1.
		ok(e.api.Project.Get(e.as(t, c), &apiv1.ProjectServiceGetRequest{Id: e.p1}))(t)
	})

	t.Run("invalid", func(t *testing.T) {
		p1 := map[string]apiv1.Level{e.p1: viewer}
		e.rejectAll(t, e.admin, []reject{
			{name: "no roles", field: "project_roles", call: call(api.Create, &apiv1.TokenServiceCreateRequest{Description: "x"})},
			{name: "too short", field: "expires_in", call: call(api.Create, &apiv1.TokenServiceCreateRequest{ProjectRoles: p1, ExpiresIn: durationpb.New(10 * time.Second)})},
			{name: "too long", field: "expires_in", call: call(api.Create, &apiv1.TokenServiceCreateRequest{ProjectRoles: p1, ExpiresIn: durationpb.New(400 * 24 * time.Hour)})},
			{name: "negative", field: "expires_in", call: call(api.Create, &apiv1.TokenServiceCreateRequest{ProjectRoles: p1, ExpiresIn: durationpb.New(-time.Hour)})},
			{name: "project not a uuid", field: `project_roles["p1"]`, call: call(api.Create, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{"p1": viewer}})},
			{name: "project role unspecified", field: `project_roles["` + e.p1 + `"]`, call: call(api.Create, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p1: 0}})},
			{name: "tenant bad id", field: `tenant_roles["T1"]`, call: call(api.Create, &apiv1.TokenServiceCreateRequest{TenantRoles: map[string]apiv1.Level{"T1": viewer}})},
			{name: "long description", field: "description", call: call(api.Create, &apiv1.TokenServiceCreateRequest{ProjectRoles: p1, Description: strings.Repeat("d", 1025)})},
			{name: "revoke missing", code: codes.NotFound, call: call(api.Revoke, &apiv1.TokenServiceRevokeRequest{Id: uuid.NewString()})},
		})
	})

	t.Run("list", func(t *testing.T) {
		// Admins see every token; others their own and those they made.
		child := e.mint(t, "child", e.p1Viewer, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p1: viewer}})
		ids := func(c *caller) []string {
			var out []string
			for _, tok := range ok(api.List(e.as(t, c), &apiv1.TokenServiceListRequest{}))(t).GetTokens() {
				out = append(out, tok.GetId())
			}
			slices.Sort(out)
			return out
		}
		all := ids(e.admin)
		for _, c := range []*caller{e.admin, e.p1Owner, e.p1Viewer, e.p2Editor, e.t1Viewer, child} {
			if !slices.Contains(all, c.tokenID) {
				t.Errorf("admin's List lacks %s", c.name)
			}
		}
		if got, want := ids(e.p1Viewer), sorted(e.p1Viewer.tokenID, child.tokenID); !slices.Equal(got, want) {
			t.Errorf("p1 viewer's List = %v, want itself and its child %v", got, want)
		}
		if got := ids(e.p2Editor); !slices.Equal(got, []string{e.p2Editor.tokenID}) {
			t.Errorf("p2 editor's List = %v", got)
		}
		if got := ids(child); !slices.Equal(got, []string{child.tokenID}) {
			t.Errorf("child's List = %v", got)
		}
	})

	t.Run("revoke", func(t *testing.T) {
		sub := e.mint(t, "sub", e.p1Owner, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p1: viewer}})
		whoami(sub)
		// Others cannot see it, let alone revoke it; an admin viewer sees but may not.
		_, err := api.Revoke(e.as(t, e.p2Editor), &apiv1.TokenServiceRevokeRequest{Id: sub.tokenID})
		wantCode(t, err, codes.NotFound)
		_, err = api.Revoke(e.as(t, e.p1Viewer), &apiv1.TokenServiceRevokeRequest{Id: sub.tokenID})
		wantCode(t, err, codes.NotFound)
		adminViewer := e.mint(t, "admin-viewer", e.admin, &apiv1.TokenServiceCreateRequest{AdminRole: viewer})
		_, err = api.Revoke(e.as(t, adminViewer), &apiv1.TokenServiceRevokeRequest{Id: sub.tokenID})
		wantCode(t, err, codes.PermissionDenied)
		whoami(sub)

		// Its creator can.
		rev := ok(api.Revoke(e.as(t, e.p1Owner), &apiv1.TokenServiceRevokeRequest{Id: sub.tokenID}))(t).GetToken()
		if rev.GetId() != sub.tokenID || rev.GetRevokedAt() == nil {
			t.Fatalf("Revoke = %v", rev)
		}
		_, err = api.Whoami(e.as(t, sub), &apiv1.TokenServiceWhoamiRequest{})
		wantCode(t, err, codes.Unauthenticated)
		_, err = e.api.Project.Get(e.as(t, sub), &apiv1.ProjectServiceGetRequest{Id: e.p1})
		wantCode(t, err, codes.Unauthenticated)
		var listed *apiv1.Token
		for _, tok := range ok(api.List(e.as(t, e.p1Owner), &apiv1.TokenServiceListRequest{}))(t).GetTokens() {
			if tok.GetId() == sub.tokenID {
				listed = tok
			}
		}
		if listed == nil || listed.GetRevokedAt() == nil {
			t.Fatalf("revoked token listed as %v", listed)
		}
		// Revoking twice keeps the first time and still answers.
		again := ok(api.Revoke(e.as(t, e.admin), &apiv1.TokenServiceRevokeRequest{Id: sub.tokenID}))(t).GetToken()
		if again.GetRevokedAt() == nil {
			t.Fatalf("second Revoke = %v", again)
		}

		// A token may revoke itself.
		self := e.mint(t, "self", e.admin, &apiv1.TokenServiceCreateRequest{TenantRoles: map[string]apiv1.Level{e.t2: viewer}})
		ok(api.Revoke(e.as(t, self), &apiv1.TokenServiceRevokeRequest{Id: self.tokenID}))(t)
		_, err = api.Whoami(e.as(t, self), &apiv1.TokenServiceWhoamiRequest{})
		wantCode(t, err, codes.Unauthenticated)

		// An admin editor revokes anyone's.
		victim := e.mint(t, "victim", e.p2Editor, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p2: viewer}})
		ok(api.Revoke(e.as(t, e.admin), &apiv1.TokenServiceRevokeRequest{Id: victim.tokenID}))(t)
		_, err = api.Whoami(e.as(t, victim), &apiv1.TokenServiceWhoamiRequest{})
		wantCode(t, err, codes.Unauthenticated)
	})

	t.Run("expired", func(t *testing.T) {
		old := e.mint(t, "old", e.admin, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p2: viewer}})
		whoami(old)
		e.exec(t, `UPDATE tokens SET expires_at = now() - INTERVAL '1 second' WHERE id = $1`, old.tokenID)
		_, err := api.Whoami(e.as(t, old), &apiv1.TokenServiceWhoamiRequest{})
		wantCode(t, err, codes.Unauthenticated)
	})

	t.Run("garbage and missing", func(t *testing.T) {
		for _, c := range []*caller{e.none, e.garbage, {name: "empty bearer", token: " "}, {name: "admin with junk", token: e.admin.token + "x"}} {
			_, err := api.Whoami(e.as(t, c), &apiv1.TokenServiceWhoamiRequest{})
			wantCode(t, err, codes.Unauthenticated)
		}
	})
}

func sorted(s ...string) []string {
	slices.Sort(s)
	return s
}

// TestTokenNarrowing: a token can only mint tokens with roles it holds itself.
func TestTokenNarrowing(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	adminViewer := e.mint(t, "admin-viewer", e.admin, &apiv1.TokenServiceCreateRequest{AdminRole: viewer})
	t1Editor := e.mint(t, "t1-editor", e.admin, &apiv1.TokenServiceCreateRequest{TenantRoles: map[string]apiv1.Level{e.t1: editor}})
	proj := func(id string, l apiv1.Level) *apiv1.TokenServiceCreateRequest {
		return &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{id: l}}
	}
	ten := func(id string, l apiv1.Level) *apiv1.TokenServiceCreateRequest {
		return &apiv1.TokenServiceCreateRequest{TenantRoles: map[string]apiv1.Level{id: l}}
	}
	missing := "00000000-0000-0000-0000-000000000000"
	tests := []struct {
		name string
		by   *caller
		req  *apiv1.TokenServiceCreateRequest
		want codes.Code
	}{
		{"p1 viewer mints p1 viewer", e.p1Viewer, proj(e.p1, viewer), codes.OK},
		{"p1 viewer mints p1 editor", e.p1Viewer, proj(e.p1, editor), codes.PermissionDenied},
		{"p1 viewer mints p1 owner", e.p1Viewer, proj(e.p1, owner), codes.PermissionDenied},
		{"p1 viewer mints p2 viewer", e.p1Viewer, proj(e.p2, viewer), codes.NotFound},
		{"p1 viewer mints for a missing project", e.p1Viewer, proj(missing, viewer), codes.NotFound},
		{"p1 viewer mints t1 viewer", e.p1Viewer, ten(e.t1, viewer), codes.PermissionDenied},
		{"p1 viewer mints admin viewer", e.p1Viewer, &apiv1.TokenServiceCreateRequest{AdminRole: viewer}, codes.PermissionDenied},
		{"p1 owner mints p1 viewer", e.p1Owner, proj(e.p1, viewer), codes.OK},
		{"p1 owner mints p1 owner", e.p1Owner, proj(e.p1, owner), codes.OK},
		{"p1 owner mints p2 editor", e.p1Owner, proj(e.p2, editor), codes.NotFound},
		{"p1 owner mints p1 viewer and p2 viewer", e.p1Owner, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p1: viewer, e.p2: viewer}}, codes.NotFound},
		{"p1 owner mints t1 viewer", e.p1Owner, ten(e.t1, viewer), codes.PermissionDenied},
		{"p2 editor mints p1 viewer", e.p2Editor, proj(e.p1, viewer), codes.NotFound},
		{"p2 editor mints p2 editor", e.p2Editor, proj(e.p2, editor), codes.OK},
		{"t1 viewer mints p1 viewer (via tenant)", e.t1Viewer, proj(e.p1, viewer), codes.OK},
		{"t1 viewer mints p1 editor", e.t1Viewer, proj(e.p1, editor), codes.PermissionDenied},
		{"t1 viewer mints t1 viewer", e.t1Viewer, ten(e.t1, viewer), codes.OK},
		{"t1 viewer mints t1 editor", e.t1Viewer, ten(e.t1, editor), codes.PermissionDenied},
		{"t1 viewer mints t2 viewer", e.t1Viewer, ten(e.t2, viewer), codes.PermissionDenied},
		{"t1 viewer mints p2 viewer", e.t1Viewer, proj(e.p2, viewer), codes.NotFound},
		{"t1 editor mints p1 editor", t1Editor, proj(e.p1, editor), codes.OK},
		{"t1 editor mints p1 owner", t1Editor, proj(e.p1, owner), codes.PermissionDenied},
		{"admin viewer mints p1 viewer", adminViewer, proj(e.p1, viewer), codes.OK},
		{"admin viewer mints p1 editor", adminViewer, proj(e.p1, editor), codes.PermissionDenied},
		{"admin viewer mints admin editor", adminViewer, &apiv1.TokenServiceCreateRequest{AdminRole: editor}, codes.PermissionDenied},
		{"admin mints admin editor", e.admin, &apiv1.TokenServiceCreateRequest{AdminRole: editor}, codes.OK},
		{"admin mints t2 owner", e.admin, ten(e.t2, owner), codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.count(t, `SELECT count(*) FROM tokens`)
			resp, err := e.api.Token.Create(e.as(t, tt.by), tt.req)
			wantCode(t, err, tt.want)
			after := e.count(t, `SELECT count(*) FROM tokens`)
			if tt.want != codes.OK {
				if after != before {
					t.Fatalf("refused mint stored a token")
				}
				return
			}
			if after != before+1 {
				t.Fatalf("%d tokens stored", after-before)
			}
			// The minted token holds exactly what was asked.
			c := &caller{name: "minted", token: resp.GetSecret(), tokenID: resp.GetToken().GetId()}
			who := ok(e.api.Token.Whoami(e.as(t, c), &apiv1.TokenServiceWhoamiRequest{}))(t).GetToken()
			if who.GetAdminRole() != tt.req.GetAdminRole() || len(who.GetProjectRoles()) != len(tt.req.GetProjectRoles()) || len(who.GetTenantRoles()) != len(tt.req.GetTenantRoles()) {
				t.Fatalf("minted %v for %v", who, tt.req)
			}
		})
	}
	// The narrowed token really is narrower: a p1 viewer's child cannot write p1.
	child := e.mint(t, "child", e.p1Viewer, proj(e.p1, viewer))
	_, err := e.api.Project.Update(e.as(t, child), &apiv1.ProjectServiceUpdateRequest{Project: &apiv1.Project{Id: e.p1, TenantId: e.t1, Name: "p1"}})
	wantCode(t, err, codes.PermissionDenied)
}
