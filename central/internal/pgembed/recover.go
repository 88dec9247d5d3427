package pgembed

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// recoverStale makes the cluster startable after a previous server did not
// shut down cleanly. PostgreSQL handles a stale postmaster.pid itself only
// while its PID is unused; in containers PIDs are small and get recycled
// across restarts, and a recycled PID owned by another user (or a still
// running orphan) makes postgres refuse to start forever.
func recoverStale(ctx context.Context, log *slog.Logger, clusterDir, dataDir string) error {
	pidFile := filepath.Join(clusterDir, "postmaster.pid")
	b, err := os.ReadFile(pidFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", pidFile, err)
	}
	// Line 1 is the postmaster PID, line 5 its first socket directory.
	lines := strings.Split(string(b), "\n")
	pid, _ := strconv.Atoi(strings.TrimSpace(lines[0]))
	var oldSockDir string
	if len(lines) > 4 {
		oldSockDir = strings.TrimSpace(lines[4])
	}

	switch {
	case pid <= 0:
		// An empty or garbled file is what a crash during postmaster
		// startup leaves behind.
		log.Warn("removing unreadable postmaster.pid", "path", pidFile)
	case !processAlive(pid):
		log.Warn("removing stale postmaster.pid of a server that did not shut down cleanly", "pid", pid)
	default:
		ours, err := isPostmasterFor(pid, clusterDir)
		if err != nil {
			return fmt.Errorf("%s names running PID %d: %w; stop that process, or remove the file if it is not a postgres server for this data directory", pidFile, pid, err)
		}
		if !ours {
			log.Warn("removing stale postmaster.pid: its PID now belongs to an unrelated process", "pid", pid)
			break
		}
		log.Warn("stopping orphaned postgres still running on this data directory", "pid", pid)
		if err := stopPostmaster(ctx, pid, clusterDir); err != nil {
			return err
		}
	}

	if err := reapClusterProcesses(ctx, log, clusterDir); err != nil {
		return err
	}
	if err := os.Remove(pidFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove stale %s: %w", pidFile, err)
	}
	// The socket lock file carries the same PID and would trip the same
	// check. DataDir is private to this cluster, so nothing else owns them.
	for _, name := range []string{socketName, socketName + ".lock"} {
		if err := os.Remove(filepath.Join(dataDir, name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale socket file: %w", err)
		}
	}
	if isTempSocketDir(oldSockDir) {
		_ = os.RemoveAll(oldSockDir) // best effort: only litter in /tmp
	}
	return nil
}

// stopPostmaster stops a verified postmaster that is not our child: fast
// shutdown first, SIGKILL if that does not finish within the grace period.
func stopPostmaster(ctx context.Context, pid int, clusterDir string) error {
	if err := syscall.Kill(pid, syscall.SIGINT); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stop orphaned postgres (PID %d): %w", pid, err)
	}
	gctx, cancel := withGrace(ctx, 30*time.Second)
	err := waitGone(gctx, []int{pid})
	cancel()
	if err == nil {
		return nil
	}
	// Re-verify right before SIGKILL: the PID could have been recycled after
	// the orphan exited between two polls.
	if ours, verr := isPostmasterFor(pid, clusterDir); verr == nil && ours {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	kctx, cancel := withGrace(ctx, 10*time.Second)
	defer cancel()
	if err := waitGone(kctx, []int{pid}); err != nil {
		return fmt.Errorf("orphaned postgres (PID %d) did not exit after SIGKILL: %w", pid, err)
	}
	return nil
}

// reapClusterProcesses waits for backends orphaned by a dead postmaster; they
// normally notice within milliseconds and exit on their own.
func reapClusterProcesses(ctx context.Context, log *slog.Logger, clusterDir string) error {
	pids := clusterProcesses(clusterDir)
	if len(pids) == 0 {
		return nil
	}
	log.Warn("waiting for leftover postgres processes of this data directory", "pids", pids)
	gctx, cancel := withGrace(ctx, 5*time.Second)
	err := waitGone(gctx, pids)
	cancel()
	if err == nil {
		return nil
	}
	// Re-scanning rather than reusing pids re-checks identity before killing.
	for _, pid := range clusterProcesses(clusterDir) {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	kctx, cancel := withGrace(ctx, 5*time.Second)
	defer cancel()
	if err := waitGone(kctx, pids); err != nil {
		return fmt.Errorf("leftover postgres processes %v of %s did not exit: %w", pids, clusterDir, err)
	}
	return nil
}

func isTempSocketDir(dir string) bool {
	return dir != "" && filepath.Dir(dir) == tempSocketParent && strings.HasPrefix(filepath.Base(dir), tempSocketPrefix)
}
