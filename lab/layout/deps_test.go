package layout

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

const module = "github.com/metalfleet/metalfleet"

// parts are the top-level homes of the module's packages (DESIGN.md §1: the
// layout is fixed). Every agent under agents/ is a part of its own, so
// agents/pixie may not reach into agents/phonehome.
var parts = []string{"agents/*", "central", "installer", "lab", "metalctl", "proto", "sql"}

// depRule forbids imports of ours from the packages under from. An import is
// forbidden when it falls under deny, or, when allow is not nil, when it is
// neither under allow nor in the importer's own part. Paths are relative to
// the module and match whole path elements ("lab" matches lab/e2e, not
// labs/). The first rule a pair breaks is the one reported, so the specific
// rules come before the general ones.
type depRule struct {
	from   string
	except []string // importers the rule does not apply to
	deny   []string
	allow  []string
	why    string
}

var depRules = []depRule{
	{from: "proto", allow: []string{}, why: "proto/ imports nothing of ours"},
	{from: "agents", deny: []string{"central"}, why: "agents/ never import central/"},
	{from: "agents", allow: []string{"proto", "agents/agent"}, why: "agents/ import only proto/, the shared runtime agents/agent and their own packages"},
	{from: "installer", deny: []string{"central"}, why: "installer/ never imports central/"},
	{from: "installer", allow: []string{"proto", "agents/agent"}, why: "installer/ imports only proto/, the shared runtime agents/agent and its own packages"},
	{from: "metalctl", allow: []string{"proto"}, why: "metalctl/ talks to central only through proto/"},
	{from: "central", deny: []string{"agents", "installer", "metalctl", "lab"}, why: "central/ never imports agents/, installer/, metalctl/ or lab/"},
	{from: "", except: []string{"lab"}, deny: []string{"lab"}, why: "nothing imports lab/"},
	{from: "", except: []string{"sql", "central/internal/store"}, deny: []string{"sql"}, why: "only central's store reads sql/"},
}

// knownImports are rule breaks that exist today, each with why it is
// tolerated and what ends it. The test fails when one of them disappears,
// so that the list only ever shrinks.
var knownImports = map[[2]string]string{}

// under reports whether path is prefix or lies below it; "" is above all.
func under(path, prefix string) bool {
	return prefix == "" || path == prefix || strings.HasPrefix(path, prefix+"/")
}

func underAny(path string, prefixes []string) bool {
	for _, p := range prefixes {
		if under(path, p) {
			return true
		}
	}
	return false
}

// partOf is the part a package of ours belongs to, "" when none.
func partOf(path string) string {
	for _, p := range parts {
		if root, ok := strings.CutSuffix(p, "/*"); ok {
			if rest, ok := strings.CutPrefix(path, root+"/"); ok {
				first, _, _ := strings.Cut(rest, "/")
				return root + "/" + first
			}
			continue
		}
		if under(path, p) {
			return p
		}
	}
	return ""
}

// checkImport returns why from may not import to, "" when it may. Both are
// module-relative paths of ours.
func checkImport(from, to string) string {
	// Go enforces internal/ for builds already; checking it here as well
	// keeps the rule written down next to the others and covers tests.
	if i := strings.LastIndex(to+"/", "/internal/"); i >= 0 {
		if owner := to[:i]; !under(from, owner) {
			return fmt.Sprintf("%s/internal is private to %s", owner, owner)
		}
	}
	for _, r := range depRules {
		if !under(from, r.from) || underAny(from, r.except) {
			continue
		}
		if underAny(to, r.deny) {
			return r.why
		}
		if r.allow != nil && !underAny(to, r.allow) && partOf(to) != partOf(from) {
			return r.why
		}
	}
	return ""
}

// goPackage is the part of `go list -json` this test reads.
type goPackage struct {
	Dir        string
	ImportPath string
	GoFiles    []string
	CgoFiles   []string
	// IgnoredGoFiles are left out by build constraints on this machine
	// (and hold the _test.go files of other platforms too).
	IgnoredGoFiles []string
	Imports        []string
	TestImports    []string
	XTestImports   []string
	Error          *struct{ Err string }
}

// repoRoot is the module root, two levels up from this package.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root: %v", err)
	}
	return root
}

// listPackages runs go list over the whole module. Test imports are read
// too: the rules are there so each part can be tested on its own.
func listPackages(t *testing.T, root string) []goPackage {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), "go", "list", "-e", "-json=Dir,ImportPath,GoFiles,CgoFiles,IgnoredGoFiles,Imports,TestImports,XTestImports,Error", "./...")
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.Bytes())
	}
	var pkgs []goPackage
	for dec := json.NewDecoder(bytes.NewReader(out)); ; {
		var p goPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs = append(pkgs, p)
	}
	if len(pkgs) == 0 {
		t.Fatal("go list found no packages")
	}
	return pkgs
}

// ours returns path relative to the module and whether it is ours.
func ours(path string) (string, bool) {
	if path == module {
		return "", true
	}
	return strings.CutPrefix(path, module+"/")
}

// TestDependencyRules checks every direct import of every package of the
// module, tests included. Direct imports are enough: each package of ours
// is checked itself, so a forbidden path through a middle package fails at
// the middle package's import.
func TestDependencyRules(t *testing.T) {
	seen := map[[2]string]bool{}
	var failures []string
	for _, p := range listPackages(t, repoRoot(t)) {
		from, ok := ours(p.ImportPath)
		if !ok {
			continue
		}
		if p.Error != nil {
			t.Errorf("go list %s: %s", from, p.Error.Err)
		}
		if partOf(from) == "" {
			failures = append(failures, fmt.Sprintf("%s is in no part: the top-level layout is fixed (DESIGN.md §1)", from))
		}
		for _, imp := range []struct {
			importer string
			paths    []string
		}{
			{from, p.Imports},
			{from + " (test)", append(append([]string{}, p.TestImports...), p.XTestImports...)},
		} {
			for _, path := range imp.paths {
				to, ok := ours(path)
				if !ok || to == from {
					continue // the external test package imports its own package
				}
				why := checkImport(from, to)
				if why == "" {
					continue
				}
				key := [2]string{imp.importer, to}
				if seen[key] {
					continue
				}
				seen[key] = true
				if reason, ok := knownImports[key]; ok {
					t.Logf("known: %s imports %s: %s; %s", imp.importer, to, why, reason)
					continue
				}
				failures = append(failures, fmt.Sprintf("%s imports %s: %s (DESIGN.md §1)", imp.importer, to, why))
			}
		}
	}
	for key := range knownImports {
		if !seen[key] {
			failures = append(failures, fmt.Sprintf("%s no longer imports %s: remove it from knownImports", key[0], key[1]))
		}
	}
	sort.Strings(failures)
	for _, f := range failures {
		t.Error(f)
	}
}

// TestDependencyRulesCatch keeps the rules honest: each pair below must be
// refused (or allowed) for the stated reason, whatever today's code does.
func TestDependencyRulesCatch(t *testing.T) {
	tests := []struct {
		from, to string
		want     string // a substring of the reason; "" means allowed
	}{
		{"proto/metalfleet/api/v1", "proto/metalfleet/agent/v1", ""},
		{"proto/metalfleet/api/v1", "central", "proto/ imports nothing of ours"},
		{"proto/metalfleet/agent/v1", "sql", "proto/ imports nothing of ours"},
		{"agents/agent", "proto/metalfleet/agent/v1", ""},
		{"agents/pixie/internal/pixie", "agents/agent", ""},
		{"agents/pixie/cmd/metal-pixie", "agents/pixie/internal/pixie", ""},
		{"agents/pixie/internal/pixie", "central/internal/fleet", "central/internal is private to central"},
		{"agents/pixie/internal/pixie", "central", "agents/ never import central/"},
		{"agents/pixie/internal/pixie", "agents/phonehome/cmd/metal-phonehome", "agents/ import only proto/"},
		{"agents/agent", "metalctl/cmd/metalctl", "agents/ import only proto/"},
		{"installer/internal/run", "agents/agent", ""},
		{"installer/internal/run", "installer/internal/disk", ""},
		{"installer/cmd/metal-installer", "central/cmd/metal-central", "installer/ never imports central/"},
		{"installer/internal/run", "agents/phonehome", "installer/ imports only proto/"},
		{"metalctl/internal/cli", "proto/metalfleet/api/v1", ""},
		{"metalctl/internal/cli", "agents/agent", "metalctl/ talks to central only through proto/"},
		{"central/internal/service", "agents/agent", "central/ never imports agents/"},
		{"central/internal/server", "installer/cmd/metal-installer", "central/ never imports"},
		{"central/cmd/metal-central", "metalctl/cmd/metalctl", "central/ never imports"},
		{"central/internal/service", "lab/e2e", "central/ never imports"},
		{"central/internal/service", "central/internal/store", ""},
		{"central/internal/store", "sql", ""},
		{"central/internal/service", "sql", "only central's store reads sql/"},
		{"lab/internal/fleetsim", "sql", "only central's store reads sql/"},
		{"lab/e2e", "agents/agent", ""},
		{"lab/e2e", "lab/internal/topo", ""},
		{"agents/agent", "lab/e2e", "agents/ import only proto/"},
		{"metalctl/internal/cli", "lab/image", "metalctl/ talks to central only through proto/"},
		{"sql", "lab/image", "nothing imports lab/"},
		{"lab/e2e", "agents/pixie/internal/pixie", "agents/pixie/internal is private to agents/pixie"},
	}
	for _, tt := range tests {
		t.Run(tt.from+"->"+tt.to, func(t *testing.T) {
			got := checkImport(tt.from, tt.to)
			if tt.want == "" && got != "" || !strings.Contains(got, tt.want) {
				t.Fatalf("checkImport(%q, %q) = %q, want %q", tt.from, tt.to, got, tt.want)
			}
		})
	}
}
