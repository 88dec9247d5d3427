package labcli

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/metalfleet/metalfleet/lab/internal/lab"
)

// TestInstructionsAreCommands checks that every metal-lab command line
// that `up` prints for people parses as this CLI's command with valid
// flags and arguments: what a person copies must run.
func TestInstructionsAreCommands(t *testing.T) {
	bin := t.TempDir()
	l, err := lab.Open(lab.Config{TopologyFile: "../../topologies/mini.yaml", Root: "../../..", Bin: bin, StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	seen := 0
	for _, line := range strings.Split(l.Instructions(), "\n") {
		line, _, _ = strings.Cut(line, "#")
		args := strings.Fields(line)
		if len(args) == 0 || args[0] != filepath.Join(bin, "metal-lab") {
			continue
		}
		seen++
		cmd, rest, err := New().Find(args[1:])
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if err := cmd.ParseFlags(rest); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
			t.Errorf("%q: %v", strings.TrimSpace(line), err)
		}
	}
	if seen < 2 {
		t.Fatalf("want the status and down commands, found %d metal-lab lines in:\n%s", seen, l.Instructions())
	}
}
