package labcli

import (
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/lab/internal/fleetsim"
	"github.com/metalfleet/metalfleet/lab/internal/lab"
)

// TestInstructionsAreCommands checks that every metal-lab command line
// that `up` prints for people parses as this CLI's command with valid
// flags and arguments: what a person copies must run.
func TestInstructionsAreCommands(t *testing.T) {
	for _, tc := range []struct {
		topology string
		// want are words the instructions must hold for this topology.
		want []string
	}{
		{topology: "mini.yaml", want: []string{"--networks internet"}},
		// A fabric's machine goes into a tenant network of its own.
		{topology: "fabric.yaml", want: []string{"network allocate --project", "--networks $N", "switch list"}},
	} {
		t.Run(tc.topology, func(t *testing.T) {
			l := instructionsOf(t, tc.topology)
			for _, w := range tc.want {
				if !strings.Contains(l, w) {
					t.Errorf("instructions lack %q:\n%s", w, l)
				}
			}
		})
	}
}

// instructionsOf returns what `up` prints for a topology of
// lab/topologies after checking its metal-lab command lines.
func instructionsOf(t *testing.T, topology string) string {
	t.Helper()
	bin := t.TempDir()
	l, err := lab.Open(lab.Config{TopologyFile: filepath.Join("../../topologies", topology), Root: "../../..", Bin: bin, StateDir: t.TempDir()})
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
	return l.Instructions()
}

func TestFleetGuard(t *testing.T) {
	ok := fleetsim.Result{Connect: 10 * time.Second, Down: 5 * time.Second, Converge: 17 * time.Second,
		ReturnTLS: agent.HandshakeCounts{Resumed: 95, Full: 5}}
	for _, tc := range []struct {
		name      string
		r         fleetsim.Result
		restarted bool
		ratio     float64
		share     float64
		wantErr   string
	}{
		{name: "within both bounds", r: ok, restarted: true, ratio: 1.5, share: 0.9},
		{name: "return too slow", r: ok, restarted: true, ratio: 1.1, wantErr: "1.20 times its cold connect"},
		{name: "too few resumed", r: ok, restarted: true, share: 0.99, wantErr: "95% of the returning handshakes"},
		{name: "no checks asked", r: ok, restarted: true},
		{name: "no restart, ratio not checked", r: fleetsim.Result{Connect: time.Second}, ratio: 1.5, share: 0.9},
		{name: "agents gave up", r: fleetsim.Result{GaveUp: 3}, wantErr: "3 agents gave up"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := guard(tc.r, tc.restarted, tc.ratio, tc.share)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one containing %q", err, tc.wantErr)
			}
		})
	}
}
