package cli

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestContextRoundTrip(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "sub", "config.yaml")
	env := map[string]string{envConfig: path}
	run := func(args ...string) result {
		t.Helper()
		r := runCLI(t, env, "", args...)
		mustSucceed(t, r)
		return r
	}

	run("context", "set", "lab", "--api-url", "https://lab.example:8443", "--api-token", "lab-secret", "--ca-file", "/etc/metal/ca.pem")
	run("context", "set", "prod", "--api-url", "prod.example:8443")
	// set only touches the flags given.
	run("context", "set", "prod", "--api-token", "prod-secret")

	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if perm := st.Mode().Perm(); perm != 0o600 {
		t.Errorf("config file mode %o, want 600", perm)
	}
	got, err := readConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	want := &config{
		Current: "lab", // the first context becomes current
		Contexts: map[string]contextConfig{
			"lab":  {APIURL: "https://lab.example:8443", APIToken: "lab-secret", CAFile: "/etc/metal/ca.pem"},
			"prod": {APIURL: "prod.example:8443", APIToken: "prod-secret"},
		},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("config = %+v, want %+v", got, want)
	}
	raw, _ := os.ReadFile(path)
	checkGolden(t, "config_file", string(raw))

	checkGolden(t, "context_list", run("context", "list").stdout)
	if out := run("context", "show").stdout; strings.Contains(out, "lab-secret") {
		t.Errorf("context show prints the token:\n%s", out)
	} else {
		checkGolden(t, "context_show", out)
	}

	run("context", "use", "prod")
	if cfg, _ := readConfig(path); cfg.Current != "prod" {
		t.Errorf("current = %q after use prod", cfg.Current)
	}
	run("context", "delete", "prod")
	cfg, _ := readConfig(path)
	if cfg.Current != "" || len(cfg.Contexts) != 1 {
		t.Errorf("after deleting the current context: %+v", cfg)
	}

	for _, args := range [][]string{
		{"context", "use", "nope"},
		{"context", "delete", "nope"},
		{"context", "show", "nope"},
		{"context", "set", "bad", "--api-url", "http://x:1"},
	} {
		if r := runCLI(t, env, "", args...); r.code != 1 {
			t.Errorf("%v: exit %d, want 1", args, r.code)
		}
	}
}

func TestReadConfigErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if cfg, err := readConfig(filepath.Join(dir, "missing.yaml")); err != nil || cfg.Current != "" {
		t.Errorf("missing file: %+v, %v; want empty config", cfg, err)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("current: a\ncontexts:\n  a:\n    api_url: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := readConfig(bad); err == nil || !strings.Contains(err.Error(), "bad.yaml") {
		t.Errorf("unknown key: err = %v, want an error naming the file", err)
	}
}
