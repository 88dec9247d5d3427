package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/metalfleet/metalfleet/agents/agent/file"
	"github.com/metalfleet/metalfleet/lab/internal/netlab"
)

// Proc is a daemon the lab started. Start distinguishes it from a later
// process that got the same PID, so down never signals a stranger.
type Proc struct {
	Name  string `json:"name"`
	NS    string `json:"ns"`
	PID   int    `json:"pid"`
	Start uint64 `json:"start"` // /proc/<pid>/stat starttime
	Log   string `json:"log"`
}

// State is what a running lab left on disk: enough for status and for
// down (also after a crash of the run that made it).
type State struct {
	Topology string    `json:"topology"`
	Name     string    `json:"name"`
	Created  time.Time `json:"created"`
	Procs    []Proc    `json:"procs"`
	Project  string    `json:"project,omitempty"`
	// Up is set once everything is built and the machines are powered on.
	Up bool `json:"up"`
}

func loadState(path string) (*State, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := &State{}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

func (s *State) save(path string) error {
	b, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	if err := file.WriteAtomic(path, append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// startTime reads a process's start time in clock ticks since boot.
func startTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// The command name (field 2) may hold spaces and parentheses; the
	// fields after the last ')' are fixed: state is field 3, starttime 22.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("pid %d: odd /proc stat", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 20 {
		return 0, fmt.Errorf("pid %d: odd /proc stat", pid)
	}
	if f[0] == "Z" || f[0] == "X" {
		return 0, fmt.Errorf("pid %d: exited", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// Alive reports whether the recorded process still runs.
func (p Proc) Alive() bool {
	st, err := startTime(p.PID)
	return err == nil && st == p.Start
}

// stop ends the process and its group: SIGTERM, then SIGKILL after grace
// (a BMC powers its QEMU off on SIGTERM).
func (p Proc) stop(grace time.Duration) error {
	if !p.Alive() {
		return nil
	}
	if err := syscall.Kill(-p.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop %s (pid %d): %w", p.Name, p.PID, err)
	}
	deadline := time.Now().Add(grace)
	for p.Alive() && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if p.Alive() {
		_ = syscall.Kill(-p.PID, syscall.SIGKILL)
		for i := 0; i < 50 && p.Alive(); i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Once the leader is gone its PID (and group id) may belong to a
	// stranger: the group is not signalled any more. What the daemons
	// start dies with them (QEMU has a parent-death signal).
	return nil
}

// spawn starts a daemon inside ns, in a session of its own (it outlives
// `metal-lab up` and the terminal), logging to logs/<name>.log, and
// records it in the state before returning. Each up starts a fresh log.
func (l *Lab) spawn(name, ns string, args []string, env ...string) (Proc, error) {
	logPath := filepath.Join(l.dir, "logs", name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return Proc{}, fmt.Errorf("log of %s: %w", name, err)
	}
	defer f.Close()
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = append(os.Environ(), env...)
	cmd.Dir = l.dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := netlab.Start(ns, cmd); err != nil {
		return Proc{}, fmt.Errorf("start %s: %w", name, err)
	}
	// Reap it while this process lives (metal-lab e2e); after `up` ends
	// it belongs to init.
	go func() { _ = cmd.Wait() }()
	st, err := startTime(cmd.Process.Pid)
	if err != nil {
		return Proc{}, fmt.Errorf("%s exited at once (see %s): %w", name, logPath, err)
	}
	p := Proc{Name: name, NS: ns, PID: cmd.Process.Pid, Start: st, Log: logPath}
	l.state.Procs = append(l.state.Procs, p)
	if err := l.state.save(l.statePath()); err != nil {
		return p, err
	}
	return p, nil
}
