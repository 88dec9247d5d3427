package e2e

import (
	"context"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// testPG is a PostgreSQL server of the test's own, from the machine's
// binaries. Central reaches it with --db-url, so the test can take the
// database away or change what central's role may do while central runs:
// faults from outside central, as an operator or a failing host would
// cause them. (lab/e2e may not import central's internal pgembed.)
type testPG struct {
	bin, dir, port, log string
	cred                *syscall.Credential // the postgres OS user when we are root
	cmd                 *exec.Cmd
	exited              chan struct{}
}

// startPG initialises a non-durable cluster in a new directory and starts
// it on a free loopback port; the cleanup stops it.
func startPG(t *testing.T) *testPG {
	t.Helper()
	bin := pgBinDir(t)
	root, err := os.MkdirTemp("", "metalfleet-e2e-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	// The server runs as the postgres user when we are root (PostgreSQL
	// refuses root), so it must reach its directory.
	if err := os.Chmod(root, 0o711); err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(freePort(t))
	p := &testPG{bin: bin, dir: filepath.Join(root, "data"), port: port, log: filepath.Join(root, "postgres.log")}
	if err := os.Mkdir(p.dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() == 0 {
		u, err := user.Lookup("postgres")
		if err != nil {
			t.Fatalf("running as root needs the postgres OS user: %v", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
		if err := os.Chown(p.dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	initdb := p.command("initdb", "-D", p.dir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("initdb: %v\n%s", err, out)
	}
	p.start(t)
	t.Cleanup(func() { p.stop(t) })
	return p
}

// pgBinDir finds initdb and postgres: on PATH, or Debian's versioned
// directory, the places central's embedded server looks too.
func pgBinDir(t *testing.T) string {
	t.Helper()
	if pg, err := exec.LookPath("initdb"); err == nil {
		if real, err := filepath.EvalSymlinks(pg); err == nil {
			return filepath.Dir(real)
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	for i := len(dirs) - 1; i >= 0; i-- {
		if _, err := os.Stat(filepath.Join(dirs[i], "postgres")); err == nil {
			return dirs[i]
		}
	}
	// Not a skip: central's default embedded database needs them as well.
	t.Fatal("PostgreSQL server binaries not found (apt-get install postgresql)")
	return ""
}

func (p *testPG) command(name string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(p.bin, name), args...)
	cmd.Env = []string{"PATH=/usr/bin:/bin", "LC_ALL=C"}
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	return cmd
}

// start runs the server on its port (TCP only, no unix socket) and waits
// until it answers.
func (p *testPG) start(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	p.cmd = p.command("postgres", "-D", p.dir, "-p", p.port, "-c", "listen_addresses=127.0.0.1",
		"-c", "unix_socket_directories=", "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off")
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	p.exited = exited
	go func(cmd *exec.Cmd) { _ = cmd.Wait(); close(exited) }(p.cmd)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, p.url("postgres", "postgres"))
		if err == nil {
			conn.Close(ctx)
			cancel()
			return
		}
		cancel()
		select {
		case <-exited:
			b, _ := os.ReadFile(p.log)
			t.Fatalf("postgres exited:\n%s", b)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("postgres does not answer: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop shuts the server down the way an operator's restart does (fast
// shutdown: sessions are ended, committed work is kept).
func (p *testPG) stop(t *testing.T) {
	t.Helper()
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
		t.Error("postgres did not stop on SIGINT")
	}
	p.cmd = nil
}

func (p *testPG) url(role, db string) string {
	return "postgres://" + role + "@127.0.0.1:" + p.port + "/" + db + "?sslmode=disable"
}

// exec runs statements as the superuser in db.
func (p *testPG) exec(t *testing.T, db string, stmts ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.url("postgres", db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}
