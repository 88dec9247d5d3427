package lab

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestUpLeavesARunningLabAlone: up on a lab that is up changes nothing —
// no teardown, no new state, its daemons keep running — and says so;
// a lab whose daemons are all gone is not up.
func TestUpLeavesARunningLabAlone(t *testing.T) {
	daemon := exec.Command("sleep", "300")
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = daemon.Process.Kill(); _ = daemon.Wait() })
	st, err := startTime(daemon.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	top := testTopology(t)
	dir := t.TempDir()
	created := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		state   State
		running bool
	}{
		{"up with a daemon running", State{Up: true, Created: created, Procs: []Proc{{Name: "central", PID: daemon.Process.Pid, Start: st}}}, true},
		{"up, daemons gone", State{Up: true, Created: created, Procs: []Proc{{Name: "central", PID: daemon.Process.Pid, Start: st + 1}}}, false},
		{"half built", State{Created: created, Procs: []Proc{{Name: "central", PID: daemon.Process.Pid, Start: st}}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.state
			l := &Lab{cfg: Config{StateDir: dir, TopologyFile: "mini.yaml", Bin: "/nonexistent"}, top: top, dir: filepath.Join(dir, top.Name), state: &s}
			if got := l.Running(); got != tc.running {
				t.Fatalf("Running() = %v, want %v", got, tc.running)
			}
			if !tc.running {
				return
			}
			_, err := l.Up(context.Background(), false)
			if !errors.Is(err, ErrRunning) {
				t.Fatalf("Up on a running lab: %v, want ErrRunning", err)
			}
			if _, err := os.Stat(l.dir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("Up on a running lab touched %s (%v)", l.dir, err)
			}
			if !l.state.Up || len(l.state.Procs) != 1 || !l.state.Procs[0].Alive() {
				t.Errorf("Up on a running lab changed its state or daemons: %+v", l.state)
			}
		})
	}
}

func TestLastButOne(t *testing.T) {
	for in, want := range map[string]string{
		"10.128.0.0/24": "10.128.0.254", "10.128.4.0/22": "10.128.7.254",
		"fd00:10:128::/64": "fd00:10:128:0:ffff:ffff:ffff:fffe", "10.0.0.0/31": "10.0.0.0",
	} {
		if got := lastButOne(netip.MustParsePrefix(in)).String(); got != want {
			t.Errorf("lastButOne(%s) = %s, want %s", in, got, want)
		}
	}
}
