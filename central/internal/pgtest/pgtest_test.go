package pgtest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/pgembed"
)

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(t.Context()) })
	return conn
}

func databaseExists(t *testing.T, name string) bool {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), pg.Server().ConnString("postgres"))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(t.Context())
	var n int
	if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM pg_database WHERE datname = $1", name).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

func TestNewDatabase(t *testing.T) {
	var name string
	t.Run("use", func(t *testing.T) {
		conn := connect(t, pg.NewDatabase(t))
		if err := conn.QueryRow(t.Context(), "SELECT current_database()").Scan(&name); err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(name, "t_") {
			t.Errorf("database name %q lacks the t_ prefix", name)
		}
		if _, err := conn.Exec(t.Context(), "CREATE TABLE items (id int)"); err != nil {
			t.Fatal(err)
		}
		// conn is still open when the drop runs: WITH (FORCE) handles it.
	})
	if name == "" {
		t.FailNow()
	}
	if databaseExists(t, name) {
		t.Errorf("database %s not dropped after its test finished", name)
	}
}

func TestParallelTestsGetSeparateDatabases(t *testing.T) {
	for i := range 8 {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			t.Parallel()
			conn := connect(t, pg.NewDatabase(t))
			// The same table name in every database: a shared database
			// would make all but one of these fail.
			if _, err := conn.Exec(t.Context(), "CREATE TABLE items (id int)"); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(t.Context(), "INSERT INTO items VALUES ($1)", i); err != nil {
				t.Fatal(err)
			}
			var n int
			if err := conn.QueryRow(t.Context(), "SELECT count(*) FROM items").Scan(&n); err != nil || n != 1 {
				t.Fatalf("count = %d, %v; want 1", n, err)
			}
		})
	}
}

// fatalTB records Fatal instead of ending a real test.
type fatalTB struct {
	testing.TB
	msg string
}

type fatalCalled struct{}

func (f *fatalTB) Helper() {}
func (f *fatalTB) Fatal(args ...any) {
	f.msg = fmt.Sprint(args...)
	panic(fatalCalled{})
}

func TestNewDatabaseWithoutCluster(t *testing.T) {
	tb := &fatalTB{TB: t}
	func() {
		defer func() {
			if r := recover(); r != (fatalCalled{}) && r != nil {
				panic(r)
			}
		}()
		var c *Cluster
		c.NewDatabase(tb)
	}()
	if !strings.Contains(tb.msg, "pgtest.Run") {
		t.Errorf("Fatal message %q does not explain the fix", tb.msg)
	}
}

type fakeM struct{ ran bool }

func (m *fakeM) Run() int { m.ran = true; return 0 }

func TestRunFailsLoudlyWithoutPostgreSQL(t *testing.T) {
	before, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	var stderr bytes.Buffer
	var c *Cluster
	m := &fakeM{}
	code := run(m, &c, &stderr, WithBinDir("/nonexistent/postgresql/bin"))
	if code != 1 || m.ran || c != nil {
		t.Errorf("run = %d, tests ran = %v, cluster = %v; want 1, false, nil", code, m.ran, c)
	}
	if !strings.Contains(stderr.String(), `apt-get install -y postgresql`) {
		t.Errorf("stderr %q does not name the fix", stderr.String())
	}
	after, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	if len(after) > len(before) {
		t.Errorf("failed start left a directory behind: %v -> %v", before, after)
	}

	if _, err := Start(WithBinDir("/nonexistent/postgresql/bin")); !errors.Is(err, pgembed.ErrNotInstalled) {
		t.Errorf("Start error %v does not wrap pgembed.ErrNotInstalled", err)
	}
}

func TestSweepStale(t *testing.T) {
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-2 * staleAge)
	mk := func(owner int, mtime time.Time) string {
		dir, err := os.MkdirTemp("", dirPrefix)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(owner)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(dir, mtime, mtime); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	tests := []struct {
		name string
		dir  string
		kept bool
	}{
		{"dead owner", mk(dead.Process.Pid, old), false},
		{"live owner", mk(os.Getpid(), old), true},
		{"dead owner but recent", mk(dead.Process.Pid, time.Now()), true},
	}
	sweepStale()
	for _, tc := range tests {
		_, err := os.Stat(tc.dir)
		if kept := err == nil; kept != tc.kept {
			t.Errorf("%s: kept = %v, want %v", tc.name, kept, tc.kept)
		}
	}
}
