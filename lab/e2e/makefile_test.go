package e2e

import (
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
)

// TestMakeHelpListsEveryTarget runs `make help` into a pipe, as a person
// piping it to less or grep does: every target the Makefile documents
// with "## " is listed (also those with digits, like lab-e2e), and there
// are no terminal colour codes.
func TestMakeHelpListsEveryTarget(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	documented := regexp.MustCompile(`(?m)^([^\s:#=]+):[^=\n]*## `).FindAllStringSubmatch(string(mk), -1)
	if len(documented) < 10 {
		t.Fatalf("found only %d documented targets in the Makefile", len(documented))
	}
	cmd := exec.Command("make", "-s", "--no-print-directory", "-C", "../..", "help")
	cmd.Env = append(os.Environ(), "NO_COLOR=")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("make help: %v", err)
	}
	if strings.Contains(string(out), "\x1b") {
		t.Errorf("make help into a pipe prints escape sequences:\n%q", out)
	}
	listed := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			listed[f[0]] = true
		}
	}
	for _, m := range documented {
		if !listed[m[1]] {
			t.Errorf("make help does not list %s", m[1])
		}
	}
}
