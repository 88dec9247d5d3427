package pgembed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// processAlive treats zombies as dead: a killed postmaster whose parent has
// not reaped it yet still answers kill(pid, 0), but it no longer holds
// anything that blocks a new server.
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	if state, _, err := procStat(pid); err == nil && (state == 'Z' || state == 'X') {
		return false
	}
	return true
}

// procStat returns the state and parent PID from /proc/<pid>/stat.
func procStat(pid int) (state byte, ppid int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, err
	}
	// The command name (field 2) may contain spaces and parentheses, so
	// parse from the last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	fields := strings.Fields(string(b[i+1:]))
	if len(fields) < 2 || len(fields[0]) != 1 {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	ppid, err = strconv.Atoi(fields[1])
	if err != nil {
		return 0, 0, fmt.Errorf("malformed /proc/%d/stat: %w", pid, err)
	}
	return fields[0][0], ppid, nil
}

// isPostmasterFor reports whether pid is a postgres server for clusterDir.
// It returns an error when pid runs postgres but the data directory cannot be
// determined: the caller must then neither kill the process nor discard its
// lock file, because guessing wrong either kills a stranger's database or
// lets two postmasters share one data directory.
func isPostmasterFor(pid int, clusterDir string) (bool, error) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return false, fmt.Errorf("read command line of PID %d: %w", pid, err)
	}
	raw = bytes.TrimRight(raw, "\x00")
	if len(raw) == 0 {
		// Kernel threads and exiting processes have no command line.
		return false, nil
	}
	args := strings.Split(string(raw), "\x00")
	switch filepath.Base(args[0]) {
	case "postgres", "postmaster":
	default:
		return false, nil
	}

	cwd := fmt.Sprintf("/proc/%d/cwd", pid)
	var dataArg string
	for i := 1; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-D" && i+1 < len(args):
			dataArg = args[i+1]
			i++
		case strings.HasPrefix(a, "-D"):
			dataArg = a[2:]
		}
	}
	if dataArg != "" {
		if !filepath.IsAbs(dataArg) {
			dataArg = filepath.Join(cwd, dataArg)
		}
		if sameDir(dataArg, clusterDir) {
			return true, nil
		}
	}
	// The postmaster chdirs into its data directory, which also covers one
	// started with PGDATA instead of -D.
	if _, err := os.Stat(cwd); err != nil {
		return false, fmt.Errorf("PID %d runs postgres but its data directory cannot be determined: %w", pid, err)
	}
	return sameDir(cwd, clusterDir), nil
}

// clusterProcesses lists postgres processes whose working directory is
// clusterDir. Every postmaster child inherits that directory, so this finds
// backends orphaned by a killed postmaster; they keep the old shared memory
// segment attached and the next postmaster refuses to start until they exit.
func clusterProcesses(clusterDir string) []int {
	want, err := os.Stat(clusterDir)
	if err != nil {
		return nil
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if err != nil || filepath.Base(strings.TrimSuffix(exe, " (deleted)")) != "postgres" {
			continue
		}
		cwd, err := os.Stat(fmt.Sprintf("/proc/%d/cwd", pid))
		if err != nil || !os.SameFile(cwd, want) || !processAlive(pid) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// childPIDs lists the direct children of pid. PostgreSQL puts each backend
// in its own session, so signalling the postmaster's process group would not
// reach them.
func childPIDs(pid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if _, ppid, err := procStat(p); err == nil && ppid == pid {
			pids = append(pids, p)
		}
	}
	return pids
}

func sameDir(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	if err != nil {
		return false
	}
	return os.SameFile(fa, fb)
}

// waitGone polls until none of pids is alive, or ctx ends.
func waitGone(ctx context.Context, pids []int) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		alive := false
		for _, pid := range pids {
			if processAlive(pid) {
				alive = true
				break
			}
		}
		if !alive {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// withGrace bounds ctx by d, so each step of an escalation leaves time for
// the next one within the caller's deadline.
func withGrace(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if deadline, ok := ctx.Deadline(); ok {
		if remaining := time.Until(deadline); remaining < 2*d {
			d = remaining / 2
		}
	}
	return context.WithTimeout(ctx, d)
}
