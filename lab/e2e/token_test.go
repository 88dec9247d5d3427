package e2e

import (
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestTokenLineage drives the real metal-central with metalctl through the
// token rules: a short-lived token cannot mint a long-lived one (refused,
// naming expires_in and the parent's expiry), and revoking a token stops the
// tokens minted from it, children and grandchildren, on the next call.
func TestTokenLineage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	central, ctl := build(t, t.TempDir())
	dir := dataDir(t)
	listen := freePort(t)
	cmd := startCentral(t, central, dir, listen)
	defer stopCentral(t, cmd)
	admin, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(listen)
	base := append(os.Environ(),
		"METALCTL_API_URL=localhost:"+port,
		"METALCTL_CA_FILE="+filepath.Join(dir, "ca.crt"),
		"METALCTL_CONFIG="+filepath.Join(t.TempDir(), "config.yaml"),
	)
	ctlAs := func(token string, args ...string) (string, error) {
		c := exec.Command(ctl, args...)
		c.Env = append(base, "METALCTL_API_TOKEN="+token)
		out, err := c.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	run := func(token string, args ...string) string {
		t.Helper()
		out, err := ctlAs(token, args...)
		if err != nil {
			t.Fatalf("metalctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}
	fail := func(token, wantCode string, args ...string) string {
		t.Helper()
		out, err := ctlAs(token, args...)
		if err == nil || !strings.Contains(out, wantCode) {
			t.Fatalf("metalctl %s: want %s, got %v\n%s", strings.Join(args, " "), wantCode, err, out)
		}
		return out
	}
	type minted struct {
		Token struct {
			ID        string `json:"id"`
			ExpiresAt string `json:"expires_at"`
		} `json:"token"`
		Secret string `json:"secret"`
	}
	mint := func(by string, args ...string) minted {
		t.Helper()
		var m minted
		out := run(by, append([]string{"token", "create", "-o", "json"}, args...)...)
		if err := json.Unmarshal([]byte(out), &m); err != nil || m.Secret == "" || m.Token.ID == "" {
			t.Fatalf("token create printed %q: %v", out, err)
		}
		return m
	}
	expiry := func(m minted) time.Time {
		t.Helper()
		at, err := time.Parse(time.RFC3339Nano, m.Token.ExpiresAt)
		if err != nil {
			t.Fatal(err)
		}
		return at
	}
	root := strings.TrimSpace(string(admin))
	run(root, "tenant", "create", "--id", "t1")
	project := run(root, "project", "create", "--tenant", "t1", "--name", "p1")

	// A token with two minutes left cannot mint one for a month.
	short := mint(root, "--project", project, "--role", "owner", "--expires", "2m")
	out := fail(short.Secret, "InvalidArgument", "token", "create", "--project", project, "--role", "viewer", "--expires", "720h")
	if !strings.Contains(out, "expires_in") || !strings.Contains(out, expiry(short).UTC().Format(time.RFC3339)) {
		t.Fatalf("refusal does not name expires_in and the parent's expiry %s:\n%s", short.Token.ExpiresAt, out)
	}
	// Within the parent's lifetime it may; without --expires the default 8 h is cut to the parent's.
	mint(short.Secret, "--project", project, "--role", "viewer", "--expires", "1m")
	child := mint(short.Secret, "--project", project, "--role", "editor")
	if expiry(child).After(expiry(short)) {
		t.Fatalf("child expires %s after its parent %s", child.Token.ExpiresAt, short.Token.ExpiresAt)
	}

	// Revoking the parent stops its child and grandchild at once.
	grandchild := mint(child.Secret, "--project", project, "--role", "viewer")
	for _, s := range []string{child.Secret, grandchild.Secret} {
		run(s, "project", "describe", project)
	}
	run(root, "token", "revoke", short.Token.ID)
	for _, s := range []string{short.Secret, child.Secret, grandchild.Secret} {
		fail(s, "Unauthenticated", "token", "whoami")
		fail(s, "Unauthenticated", "project", "describe", project)
	}
	// The revoking admin is unaffected and sees the whole lineage revoked.
	var list []map[string]any
	if err := json.Unmarshal([]byte(run(root, "token", "list", "-o", "json")), &list); err != nil {
		t.Fatal(err)
	}
	revoked := map[string]bool{}
	for _, tok := range list {
		revoked[tok["id"].(string)] = tok["revoked_at"] != nil
	}
	for _, m := range []minted{short, child, grandchild} {
		if !revoked[m.Token.ID] {
			t.Errorf("token list shows %s not revoked: %v", m.Token.ID, list)
		}
	}
}
