package auth

import (
	"strings"
	"testing"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

const (
	none   = apiv1.Level_LEVEL_UNSPECIFIED
	viewer = apiv1.Level_LEVEL_VIEWER
	editor = apiv1.Level_LEVEL_EDITOR
	owner  = apiv1.Level_LEVEL_OWNER
)

func TestProjectLevel(t *testing.T) {
	p := &Principal{
		Projects: map[string]apiv1.Level{"p1": owner, "p2": viewer},
		Tenants:  map[string]apiv1.Level{"t1": editor},
	}
	tests := []struct {
		project, tenant string
		want            apiv1.Level
	}{
		{"p1", "t9", owner},
		{"p2", "t1", editor}, // the tenant role lifts the project role
		{"p3", "t1", editor},
		{"p3", "t2", none},
	}
	for _, tt := range tests {
		if got := p.ProjectLevel(tt.project, tt.tenant); got != tt.want {
			t.Errorf("ProjectLevel(%s, %s) = %v, want %v", tt.project, tt.tenant, got, tt.want)
		}
	}
	admin := &Principal{Admin: owner}
	if admin.AdminLevel() != editor || admin.ProjectLevel("any", "") != editor || !admin.SeesAll() {
		t.Error("admin owner must count as admin editor everywhere")
	}
	if (&Principal{}).SeesAll() || (&Principal{}).Visible("p", "t") {
		t.Error("a principal without roles sees nothing")
	}
}

func TestNewSecret(t *testing.T) {
	a, ha := NewSecret()
	b, hb := NewSecret()
	if a == b || string(ha) == string(hb) {
		t.Fatal("two secrets alike")
	}
	if !strings.HasPrefix(a, TokenPrefix) || len(a) != len(TokenPrefix)+43 {
		t.Fatalf("secret %q: want %s + 43 base64url chars", a, TokenPrefix)
	}
	if string(Hash(a+"\n")) != string(ha) {
		t.Fatal("a trailing newline (as in admin.token) must not change the hash")
	}
}
