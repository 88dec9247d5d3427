// Package e2e runs the real binaries the way the README tells people to: a
// metal-central with its embedded PostgreSQL and TLS, driven by metalctl.
package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// build compiles the project's binaries into dir once per test run.
func build(t testing.TB, dir string) (central, ctl string) {
	t.Helper()
	central, ctl = filepath.Join(dir, "metal-central"), filepath.Join(dir, "metalctl")
	for out, pkg := range map[string]string{central: "../../central/cmd/metal-central", ctl: "../../metalctl/cmd/metalctl"} {
		cmd := exec.Command("go", "build", "-o", out, pkg)
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, b)
		}
	}
	return central, ctl
}

func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startCentral runs metal-central and waits for its "serving" line; extra
// flags come last, so they override the defaults here.
func startCentral(t testing.TB, bin, dataDir, listen string, extra ...string) *exec.Cmd {
	t.Helper()
	args := append([]string{"--data-dir", dataDir, "--listen", listen, "--metrics-listen", "", "--durable=false"}, extra...)
	cmd := exec.Command(bin, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(t.TempDir(), "central.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "is serving the API") {
				ready <- sc.Text()
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		b, _ := os.ReadFile(logf.Name())
		t.Fatalf("metal-central did not come up:\n%s", b)
	}
	return cmd
}

func stopCentral(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("metal-central exit: %v", err)
		}
	case <-time.After(40 * time.Second):
		_ = cmd.Process.Kill()
		t.Error("metal-central did not stop on SIGTERM")
	}
}

// dataDir returns a directory the postgres user can reach when we are root.
func dataDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "metalfleet-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, 0o711); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return filepath.Join(d, "central")
}

// TestQuickstart runs the metalctl forms the README and the foundation issue
// promise, against a real central, and checks what they print and store.
func TestQuickstart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	central, ctl := build(t, t.TempDir())
	dir := dataDir(t)
	listen := freePort(t)
	cmd := startCentral(t, central, dir, listen)
	defer func() {
		if cmd != nil {
			stopCentral(t, cmd)
		}
	}()
	token, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "admin.token")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("admin.token mode: %v %v", fi.Mode(), err)
	}
	_, port, _ := net.SplitHostPort(listen)
	env := append(os.Environ(),
		"METALCTL_API_URL=localhost:"+port,
		"METALCTL_CA_FILE="+filepath.Join(dir, "ca.crt"),
		"METALCTL_API_TOKEN="+strings.TrimSpace(string(token)),
		"METALCTL_CONFIG="+filepath.Join(t.TempDir(), "config.yaml"),
	)
	run := func(args ...string) string {
		t.Helper()
		c := exec.CommandContext(context.Background(), ctl, args...)
		c.Env = env
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("metalctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	fail := func(wantCode string, args ...string) {
		t.Helper()
		c := exec.Command(ctl, args...)
		c.Env = env
		out, err := c.CombinedOutput()
		if err == nil || !strings.Contains(string(out), wantCode) {
			t.Fatalf("metalctl %s: want %s, got %v\n%s", strings.Join(args, " "), wantCode, err, out)
		}
	}

	run("partition", "create", "--id", "lab", "--description", "lab partition", "--allow-single-attach")
	run("size", "create", "--id", "s1", "--cores", "1-64", "--memory", "1GiB-1TiB", "--storage", "1GiB-100TiB")
	sum := "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
	run("image", "create", "--id", "debian-12", "--os", "debian", "--version", "12.0.0", "--url", "http://images.example/debian-12.tar.zst", "--sha256", sum)
	run("image", "create", "--id", "debian-12.10", "--os", "debian", "--version", "12.10.0", "--url", "http://images.example/debian-12.10.tar.zst", "--sha256", sum)
	if out := run("image", "latest", "--os", "debian", "-o", "template", "--template", "{{.id}}"); out != "debian-12.10" {
		t.Fatalf("image latest = %q, want debian-12.10 (semver, not string order)", out)
	}
	run("tenant", "create", "--id", "t1")
	project := run("project", "create", "--tenant", "t1", "--name", "p1")
	if !regexp.MustCompile(`^[0-9a-f-]{36}$`).MatchString(project) {
		t.Fatalf("project create printed %q, want just the id", project)
	}
	run("network", "create", "--id", "super-lab", "--partition", "lab", "--type", "super",
		"--prefix", "10.128.0.0/14", "--prefix", "fd00:10::/48", "--child-prefix-length", "22", "--child-prefix-length", "64")
	run("network", "allocate", "--project", project, "--partition", "lab", "--name", "n1")

	var nets []map[string]any
	if err := json.Unmarshal([]byte(run("network", "list", "-o", "json")), &nets); err != nil {
		t.Fatal(err)
	}
	var child map[string]any
	for _, n := range nets {
		if n["name"] == "n1" {
			child = n
		}
	}
	if child == nil {
		t.Fatalf("child network missing from %v", nets)
	}
	if got := fmt.Sprint(child["prefixes"]); got != "[10.128.0.0/22 fd00:10::/64]" {
		t.Fatalf("child prefixes = %s", got)
	}
	if child["vrf"] == nil {
		t.Fatal("child network has no VRF")
	}
	netID := child["id"].(string)
	run("ip", "allocate", "--project", project, "--network", netID)
	run("ip", "allocate", "--project", project, "--network", netID, "--ip", "10.128.0.77", "--static")
	fail("AlreadyExists", "ip", "allocate", "--project", project, "--network", netID, "--ip", "10.128.0.77")
	// No server has PXE-booted yet: nothing to list, nothing to allocate.
	if out := run("machine", "list"); !strings.HasPrefix(out, "ID") || strings.Contains(out, "\n") {
		t.Fatalf("machine list without machines = %q, want the header only", out)
	}
	fail("ResourceExhausted", "machine", "create", "--project", project, "--partition", "lab", "--size", "s1",
		"--image", "debian-12", "--networks", netID, "--hostname", "web-0")
	run("machine", "issues")
	var ips []map[string]any
	if err := json.Unmarshal([]byte(run("ip", "list", "-o", "json")), &ips); err != nil {
		t.Fatal(err)
	}
	if len(ips) != 2 || ips[0]["ip"] != "10.128.0.1" || ips[1]["ip"] != "10.128.0.77" || ips[1]["type"] != "static" {
		t.Fatalf("ips = %v", ips)
	}

	// The agent fleet: enroll shows the credential once, agents are named
	// by kind/identity, and configure changes the desired document.
	var enrolled struct {
		Agent  map[string]any `json:"agent"`
		Secret string         `json:"secret"`
	}
	if err := json.Unmarshal([]byte(run("agent", "enroll", "--kind", "switch", "--identity", "leaf01", "--partition", "lab", "-o", "json")), &enrolled); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(enrolled.Secret, "mfa_") || enrolled.Agent["kind"] != "switch" {
		t.Fatalf("agent enroll printed %+v", enrolled)
	}
	run("agent", "configure", "switch/leaf01", "--log-level", "debug", "--label", "rack=r01")
	if out := run("agent", "describe", "switch/leaf01", "--template", "{{.agent.desired_revision}} {{.agent.desired.settings.log_level}} {{.agent.desired.settings.labels.rack}}"); out != "2 debug r01" {
		t.Fatalf("agent describe after configure = %q, want revision 2 with the new settings", out)
	}
	if out := run("agent", "list", "--kind", "switch", "--no-headers"); !strings.Contains(out, "leaf01") || !strings.Contains(out, "never") {
		t.Fatalf("agent list = %q", out)
	}
	if out := run("boot-token", "create", "--partition", "lab", "--template", "{{.secret}}"); !strings.HasPrefix(out, "mfb_") || strings.Contains(out, "\n") {
		t.Fatalf("boot-token create printed %q, want just the secret", out)
	}

	viewer := run("token", "create", "--project", project, "--role", "viewer")
	if !strings.HasPrefix(viewer, "mft_") || strings.Contains(viewer, "\n") {
		t.Fatalf("token create printed %q, want just the secret", viewer)
	}
	// The viewer sees its project's network but cannot change anything.
	env = append(env, "METALCTL_API_TOKEN="+viewer)
	if out := run("network", "describe", netID, "-o", "json"); !strings.Contains(out, "10.128.0.0/22") {
		t.Fatalf("viewer describe: %s", out)
	}
	fail("PermissionDenied", "ip", "allocate", "--project", project, "--network", netID)
	fail("PermissionDenied", "partition", "create", "--id", "x")

	for _, noun := range []string{"partition", "size", "image", "tenant", "project", "network", "ip", "token", "machine"} {
		out := run(noun, "list", "-o", "json")
		var v []any
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			t.Fatalf("%s list -o json is not a JSON list: %v\n%s", noun, err, out)
		}
	}

	// Restart: same data dir, same admin token, data kept.
	stopCentral(t, cmd)
	cmd = startCentral(t, central, dir, listen)
	token2, _ := os.ReadFile(filepath.Join(dir, "admin.token"))
	if string(token2) != string(token) {
		t.Fatal("admin token changed across restart")
	}
	env = append(env, "METALCTL_API_TOKEN="+strings.TrimSpace(string(token)))
	if out := run("ip", "list"); !strings.Contains(out, "10.128.0.77") {
		t.Fatalf("after restart: %s", out)
	}
}
