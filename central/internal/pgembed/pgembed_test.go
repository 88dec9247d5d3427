package pgembed

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// newDataDir returns a not-yet-existing DataDir below t.TempDir().
func newDataDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if os.Geteuid() == 0 {
		// The testing package creates its per-test directory 0700; as root,
		// postgres runs as an unprivileged user that must traverse it.
		if err := os.Chmod(filepath.Dir(dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return filepath.Join(dir, "data")
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func startServer(t *testing.T, dataDir string) *Server {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	s, err := Start(ctx, Options{DataDir: dataDir, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return s
}

func connect(t *testing.T, s *Server, db string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), s.ConnString(db))
	if err != nil {
		t.Fatalf("connect to %q: %v", db, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func queryString(t *testing.T, conn *pgx.Conn, sql string) string {
	t.Helper()
	var v string
	if err := conn.QueryRow(t.Context(), sql).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

func stopServer(t *testing.T, s *Server) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := s.Stop(ctx); err != nil {
		t.Fatalf("Stop: %v", err)
	}
}

func waitDone(t *testing.T, s *Server) {
	t.Helper()
	select {
	case <-s.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("Done() not closed although postgres should have exited")
	}
}

func TestServerLifecycle(t *testing.T) {
	dataDir := newDataDir(t)
	s := startServer(t, dataDir)

	if s.SocketDir() != dataDir {
		t.Errorf("SocketDir = %q, want the data directory %q", s.SocketDir(), dataDir)
	}
	fi, err := os.Stat(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("data directory mode = %04o, want 0700", perm)
	}

	admin := connect(t, s, "postgres")
	settings := []struct{ name, want string }{
		{"listen_addresses", ""},
		{"unix_socket_permissions", "0700"},
		{"max_connections", "200"},
		{"shared_buffers", "128MB"},
		{"fsync", "off"},
		{"synchronous_commit", "off"},
		{"full_page_writes", "off"},
		{"server_encoding", "UTF8"},
		{"is_superuser", "on"},
	}
	for _, tc := range settings {
		if got := queryString(t, admin, "SHOW "+tc.name); got != tc.want {
			t.Errorf("SHOW %s = %q, want %q", tc.name, got, tc.want)
		}
	}

	if got := queryString(t, admin, "SELECT datcollate FROM pg_database WHERE datname = 'template1'"); got != "C.UTF-8" {
		t.Errorf("template1 collation = %q, want C.UTF-8", got)
	}

	const db = "app db" // needs quoting as an identifier and escaping in the URL
	// Concurrent creators must all succeed: "already exists" is not an error.
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Go(func() { errs <- s.CreateDatabase(t.Context(), db) })
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("CreateDatabase: %v", err)
		}
	}

	appConn := connect(t, s, db)
	if got := queryString(t, appConn, "SELECT current_database()"); got != db {
		t.Fatalf("current_database() = %q, want %q", got, db)
	}

	// WITH (FORCE) must not be blocked by the open connection.
	if err := s.DropDatabase(t.Context(), db); err != nil {
		t.Fatalf("DropDatabase with open connection: %v", err)
	}
	if err := appConn.Ping(t.Context()); err == nil {
		t.Error("connection to dropped database still works")
	}
	if err := s.DropDatabase(t.Context(), db); err != nil {
		t.Errorf("DropDatabase of missing database: %v", err)
	}
	if n := queryString(t, admin, fmt.Sprintf("SELECT count(*)::text FROM pg_database WHERE datname = '%s'", db)); n != "0" {
		t.Errorf("database still listed after drop")
	}

	// Stop is idempotent and safe to call concurrently.
	for range 3 {
		wg.Go(func() {
			if err := s.Stop(context.Background()); err != nil {
				t.Errorf("Stop: %v", err)
			}
		})
	}
	wg.Wait()
	waitDone(t, s)
	if err := s.CreateDatabase(t.Context(), "late"); err == nil {
		t.Error("CreateDatabase after Stop succeeded")
	}
	if _, err := os.Stat(filepath.Join(dataDir, clusterSubdir, "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postmaster.pid after clean stop: %v", err)
	}
}

func TestConnString(t *testing.T) {
	s := &Server{sockDir: "/tmp/pgembed-x/some dir+&=%"}
	for _, db := range []string{"postgres", "t_0123abcd", "we ird/db?x=1&y#z+%", "ünï"} {
		cfg, err := pgx.ParseConfig(s.ConnString(db))
		if err != nil {
			t.Fatalf("ParseConfig(%q): %v", s.ConnString(db), err)
		}
		if cfg.Host != s.sockDir || cfg.Port != port || cfg.User != "postgres" || cfg.Database != db || cfg.TLSConfig != nil {
			t.Errorf("ConnString(%q) parsed as host=%q port=%d user=%q db=%q tls=%v",
				db, cfg.Host, cfg.Port, cfg.User, cfg.Database, cfg.TLSConfig != nil)
		}
	}
}

func TestRestartKeepsData(t *testing.T) {
	dataDir := newDataDir(t)
	s := startServer(t, dataDir)
	conn := connect(t, s, "postgres")
	if _, err := conn.Exec(t.Context(), "CREATE TABLE kept (v text); INSERT INTO kept VALUES ('hello')"); err != nil {
		t.Fatal(err)
	}
	conn.Close(t.Context())
	stopServer(t, s)

	s = startServer(t, dataDir)
	if got := queryString(t, connect(t, s, "postgres"), "SELECT v FROM kept"); got != "hello" {
		t.Fatalf("after restart got %q, want %q", got, "hello")
	}
}

// TestStalePostmasterPID simulates lock files left by a server that died
// while its PID got reused, as happens across container restarts.
func TestStalePostmasterPID(t *testing.T) {
	dataDir := newDataDir(t)
	s := startServer(t, dataDir)
	pidFile := filepath.Join(dataDir, clusterSubdir, "postmaster.pid")
	sockLock := filepath.Join(dataDir, socketName+".lock")
	pidContent, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	lockContent, err := os.ReadFile(sockLock)
	if err != nil {
		t.Fatal(err)
	}
	stopServer(t, s)

	deadPID := func(t *testing.T) int {
		cmd := exec.Command("true")
		if err := cmd.Run(); err != nil {
			t.Fatal(err)
		}
		return cmd.Process.Pid
	}
	livePID := func(t *testing.T) int {
		cmd := exec.Command("sleep", "300")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
		})
		return cmd.Process.Pid
	}
	withPID := func(content []byte, pid int) []byte {
		_, rest, _ := strings.Cut(string(content), "\n")
		return fmt.Appendf(nil, "%d\n%s", pid, rest)
	}

	tests := []struct {
		name     string
		pid      func(*testing.T) int // 0: write garbage
		survives bool                 // the PID must not be killed
	}{
		{name: "dead PID", pid: deadPID},
		{name: "PID reused by unrelated process", pid: livePID, survives: true},
		{name: "garbage"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pid := 0
			content, lock := []byte("garbage\n"), []byte(nil)
			if tc.pid != nil {
				pid = tc.pid(t)
				content, lock = withPID(pidContent, pid), withPID(lockContent, pid)
			}
			if err := os.WriteFile(pidFile, content, 0o600); err != nil {
				t.Fatal(err)
			}
			if lock != nil {
				if err := os.WriteFile(sockLock, lock, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			s := startServer(t, dataDir)
			if got := queryString(t, connect(t, s, "postgres"), "SELECT 'up'"); got != "up" {
				t.Fatalf("got %q", got)
			}
			if tc.survives && !processAlive(pid) {
				t.Errorf("unrelated process %d was killed", pid)
			}
			stopServer(t, s)
		})
	}
}

// TestOrphanReplaced: a server whose owner forgot it (as after a crash of the
// embedding program) is stopped and replaced by the next Start.
func TestOrphanReplaced(t *testing.T) {
	dataDir := newDataDir(t)
	orphan := startServer(t, dataDir)
	orphanPID := orphan.cmd.Process.Pid
	if ours, err := isPostmasterFor(orphanPID, filepath.Join(dataDir, clusterSubdir)); err != nil || !ours {
		t.Fatalf("isPostmasterFor(running server) = %v, %v", ours, err)
	}

	s := startServer(t, dataDir)
	waitDone(t, orphan)
	if orphan.cmd.Process.Pid == s.cmd.Process.Pid {
		t.Fatal("second Start reused the orphan")
	}
	conn := connect(t, s, "postgres")
	if got := queryString(t, conn, "SELECT 'replaced'"); got != "replaced" {
		t.Fatalf("got %q", got)
	}
	// Stopping the stale handle must not disturb its replacement.
	stopServer(t, orphan)
	if err := conn.Ping(t.Context()); err != nil {
		t.Fatalf("replacement broken after stopping the orphan's handle: %v", err)
	}
}

// TestCrashRecovery kills postgres the hard way, leaving backends and a
// stale postmaster.pid behind, and checks that Done reports it and that a new
// Start recovers.
func TestCrashRecovery(t *testing.T) {
	tests := []struct {
		name  string
		crash func(t *testing.T, s *Server)
	}{
		{"postmaster SIGKILL", func(t *testing.T, s *Server) {
			if err := syscall.Kill(s.cmd.Process.Pid, syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}},
		{"Stop deadline exceeded", func(t *testing.T, s *Server) {
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			if err := s.Stop(ctx); !errors.Is(err, context.Canceled) {
				t.Errorf("Stop with expired context = %v, want it to report the kill", err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := newDataDir(t)
			s := startServer(t, dataDir)
			conn := connect(t, s, "postgres") // ensures a backend exists
			// Non-durable servers commit asynchronously, which loses the
			// newest commits on a crash; this row must survive it.
			if _, err := conn.Exec(t.Context(), "SET synchronous_commit = on; CREATE TABLE survived (v int); INSERT INTO survived VALUES (42)"); err != nil {
				t.Fatal(err)
			}
			tc.crash(t, s)
			waitDone(t, s)
			if s.Err() == nil {
				t.Error("Err() = nil after postgres was killed")
			}

			s2 := startServer(t, dataDir)
			if got := queryString(t, connect(t, s2, "postgres"), "SELECT v::text FROM survived"); got != "42" {
				t.Fatalf("got %q", got)
			}
		})
	}
}

func TestLongDataDirUsesTempSocket(t *testing.T) {
	dataDir := filepath.Join(newDataDir(t), strings.Repeat("d", 110))
	s := startServer(t, dataDir)
	if !isTempSocketDir(s.SocketDir()) {
		t.Fatalf("SocketDir = %q, want a /tmp/%s* fallback", s.SocketDir(), tempSocketPrefix)
	}
	fi, err := os.Stat(s.SocketDir())
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm != 0o700 {
		t.Errorf("socket directory mode = %04o, want 0700", perm)
	}
	if got := queryString(t, connect(t, s, "postgres"), "SELECT 'long'"); got != "long" {
		t.Fatalf("got %q", got)
	}
	stopServer(t, s)
	if _, err := os.Stat(s.SocketDir()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temporary socket directory not removed by Stop: %v", err)
	}
}

func TestServersCoexist(t *testing.T) {
	servers := make([]*Server, 2)
	var wg sync.WaitGroup
	for i := range servers {
		dataDir := newDataDir(t)
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
			defer cancel()
			s, err := Start(ctx, Options{DataDir: dataDir, Logger: testLogger(t)})
			if err != nil {
				t.Errorf("Start %d: %v", i, err)
				return
			}
			servers[i] = s
			t.Cleanup(func() { s.Stop(context.Background()) })
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for i, s := range servers {
		if _, err := connect(t, s, "postgres").Exec(t.Context(), fmt.Sprintf("CREATE TABLE only_in_%d ()", i)); err != nil {
			t.Fatal(err)
		}
	}
	for i, s := range servers {
		got := queryString(t, connect(t, s, "postgres"), "SELECT string_agg(relname, ',') FROM pg_class WHERE relname LIKE 'only_in_%'")
		if want := fmt.Sprintf("only_in_%d", i); got != want {
			t.Errorf("server %d sees tables %q, want %q", i, got, want)
		}
	}
}

func TestFindBinDir(t *testing.T) {
	found, err := FindBinDir("")
	if err != nil {
		t.Fatalf("FindBinDir(\"\") on a machine with PostgreSQL: %v", err)
	}
	if !hasServerBinaries(found) {
		t.Fatalf("FindBinDir returned %q without server binaries", found)
	}
	if got, err := FindBinDir(found); err != nil || got != found {
		t.Errorf("FindBinDir(%q) = %q, %v", found, got, err)
	}

	onlyInitdb := t.TempDir()
	if err := os.WriteFile(filepath.Join(onlyInitdb, "initdb"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"/nonexistent/pgembed/bin", t.TempDir(), onlyInitdb} {
		t.Run(dir, func(t *testing.T) {
			_, err := FindBinDir(dir)
			if !errors.Is(err, ErrNotInstalled) {
				t.Fatalf("FindBinDir(%q) = %v, want ErrNotInstalled", dir, err)
			}
			for _, want := range []string{dir, `apt-get install -y postgresql`, "--db-url"} {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not mention %q", err, want)
				}
			}
		})
	}

	_, err = Start(t.Context(), Options{DataDir: newDataDir(t), BinDir: "/nonexistent/pgembed/bin"})
	if !errors.Is(err, ErrNotInstalled) {
		t.Errorf("Start with bogus BinDir = %v, want ErrNotInstalled", err)
	}
}

func TestDebianBinDirsOrder(t *testing.T) {
	// Numeric, not lexical: 10 > 9.6, and non-version entries are ignored.
	tests := []struct {
		a, b string
		less bool
	}{
		{"9.6", "10", true},
		{"15", "9.6", false},
		{"15", "16", true},
		{"16", "16", false},
	}
	for _, tc := range tests {
		a, _ := parseVersion(tc.a)
		b, _ := parseVersion(tc.b)
		if got := versionLess(a, b); got != tc.less {
			t.Errorf("versionLess(%s, %s) = %v", tc.a, tc.b, got)
		}
	}
	if _, ok := parseVersion("common"); ok {
		t.Error(`parseVersion("common") accepted`)
	}
}

func TestIsPostmasterForRejectsOthers(t *testing.T) {
	dir := t.TempDir()
	for _, pid := range []int{os.Getpid(), 1} {
		if ours, err := isPostmasterFor(pid, dir); err != nil || ours {
			t.Errorf("isPostmasterFor(%d) = %v, %v; want false, nil", pid, ours, err)
		}
	}
}

func TestRootPreconditions(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root switches to an unprivileged user")
	}
	locked := t.TempDir() // 0700 parent, owned by root: postgres cannot enter
	if err := os.Chmod(locked, 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		opts Options
		want string
	}{
		{"missing user", Options{DataDir: newDataDir(t), User: "no-such-pgembed-user"}, `"no-such-pgembed-user", which does not exist`},
		{"root user", Options{DataDir: newDataDir(t), User: "root"}, "is root"},
		{"unsearchable parent", Options{DataDir: filepath.Join(locked, "data")}, "cannot enter " + locked},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Start(t.Context(), tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Start = %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestStartupFailureReportsLog(t *testing.T) {
	dataDir := newDataDir(t)
	_, err := Start(t.Context(), Options{DataDir: dataDir, Settings: map[string]string{"shared_buffers": "lots"}})
	if err == nil {
		t.Fatal("Start with an invalid setting succeeded")
	}
	for _, want := range []string{"exited during startup", `invalid value for parameter "shared_buffers"`, logFileName} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not contain %q:\n%v", want, err)
		}
	}
	// The failed attempt must not leave anything that blocks a good one.
	startServer(t, dataDir)
}

func TestDurable(t *testing.T) {
	dataDir := newDataDir(t)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	s, err := Start(ctx, Options{DataDir: dataDir, Durable: true, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer stopServer(t, s)
	conn := connect(t, s, "postgres")
	for _, name := range []string{"fsync", "synchronous_commit", "full_page_writes"} {
		if got := queryString(t, conn, "SHOW "+name); got != "on" {
			t.Errorf("durable server: %s = %q, want on", name, got)
		}
	}
}

// TestParentDeathStopsPostgres kills a process owning a Server with SIGKILL
// and expects postgres to follow, which is what Pdeathsig on a locked OS
// thread is for. The owner is this test binary re-executed in helper mode.
func TestParentDeathStopsPostgres(t *testing.T) {
	if dir := os.Getenv("PGEMBED_TEST_HELPER_DATADIR"); dir != "" {
		s, err := Start(context.Background(), Options{DataDir: dir})
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		// Churn OS threads: locked goroutines that exit take their thread
		// with them, which must not be the thread that forked postgres.
		var wg sync.WaitGroup
		for range 20 {
			wg.Go(func() { runtime.LockOSThread() })
		}
		wg.Wait()
		fmt.Printf("ready %d\n", s.cmd.Process.Pid)
		select {}
	}

	dataDir := newDataDir(t)
	helper := exec.Command(os.Args[0], "-test.run=^TestParentDeathStopsPostgres$")
	helper.Env = append(os.Environ(), "PGEMBED_TEST_HELPER_DATADIR="+dataDir)
	helper.Stderr = os.Stderr
	stdout, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		helper.Process.Kill()
		helper.Wait()
	})
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		t.Fatalf("helper: %v (output %q)", err, line)
	}
	var pid int
	if _, err := fmt.Sscanf(line, "ready %d", &pid); err != nil {
		t.Fatalf("helper said %q", line)
	}
	if err := helper.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	helper.Wait()

	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	if err := waitGone(ctx, []int{pid}); err != nil {
		syscall.Kill(pid, syscall.SIGKILL)
		t.Fatalf("postgres (PID %d) outlived its killed parent: %v", pid, err)
	}
	// SIGINT means a clean shutdown: no stale lock file left behind.
	if Running(dataDir) {
		t.Error("Running reports a server after it exited")
	}
	if _, err := os.Stat(filepath.Join(dataDir, clusterSubdir, "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postmaster.pid left behind: %v", err)
	}
}
