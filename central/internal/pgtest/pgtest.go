// Package pgtest gives a test package one throwaway PostgreSQL cluster and
// each test a fresh database in it. Typical use, in main_test.go:
//
//	var pg *pgtest.Cluster
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Run(m, &pg)) }
//
//	func TestX(t *testing.T) {
//		url := pg.NewDatabase(t)
//		...
//	}
//
// The cluster is an embedded, non-durable pgembed server in a temporary
// directory. When PostgreSQL is not installed, Run fails the test binary
// instead of skipping, so CI cannot pass without exercising the database.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/central/internal/pgembed"
)

const (
	dirPrefix    = "pgtest-"
	ownerFile    = "owner.pid"
	startTimeout = 2 * time.Minute
	stopTimeout  = 30 * time.Second
	dropTimeout  = 30 * time.Second
	// staleAge keeps the sweep away from a directory whose owner has not
	// written owner.pid yet, and from owners in other PID namespaces.
	staleAge = 5 * time.Minute
)

// Cluster is a PostgreSQL server for tests. Its methods are safe for
// concurrent use, so parallel tests may share it.
type Cluster struct {
	srv      *pgembed.Server
	dir      string
	stopOnce sync.Once
	crashed  bool // set by stop
}

// Option configures Start.
type Option func(*options)

type options struct {
	binDir string
	logger *slog.Logger
}

// WithBinDir uses the PostgreSQL binaries in dir instead of searching for them.
func WithBinDir(dir string) Option { return func(o *options) { o.binDir = dir } }

// WithLogger receives the cluster's lifecycle events (default: discarded).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// Start starts a non-durable cluster in a new temporary directory.
func Start(opts ...Option) (*Cluster, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	sweepStale()

	dir, err := os.MkdirTemp("", dirPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: create cluster directory: %w", err)
	}
	// As root the server runs as an unprivileged user that has to traverse
	// this directory; the data directory inside stays 0700.
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: %w", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	srv, err := pgembed.Start(ctx, pgembed.Options{
		DataDir: filepath.Join(dir, "data"),
		BinDir:  o.binDir,
		Logger:  o.logger,
	})
	if err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	return &Cluster{srv: srv, dir: dir}, nil
}

// Stop stops the server and deletes its directory. It is idempotent.
func (c *Cluster) Stop() { c.stop() }

// stop reports whether the server had died before being stopped, after
// printing the end of its log: the tests' own failures rarely say why.
func (c *Cluster) stop() (crashed bool) {
	c.stopOnce.Do(func() {
		select {
		case <-c.srv.Done():
			c.crashed = true
			fmt.Fprintf(os.Stderr, "pgtest: postgres exited while tests were running (%v); end of its log:\n%s\n",
				c.srv.Err(), logTail(c.srv.LogPath()))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), stopTimeout)
		defer cancel()
		if err := c.srv.Stop(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
		}
		if err := os.RemoveAll(c.dir); err != nil {
			fmt.Fprintf(os.Stderr, "pgtest: remove cluster directory: %v\n", err)
		}
	})
	return c.crashed
}

// Server exposes the underlying server, e.g. for ConnString("postgres").
func (c *Cluster) Server() *pgembed.Server { return c.srv }

// NewDatabase creates an empty database for t, dropped (with any remaining
// connections) when t finishes, and returns its connection string.
func (c *Cluster) NewDatabase(t testing.TB) string {
	t.Helper()
	if c == nil {
		t.Fatal("pgtest: no cluster; start one with pgtest.Run(m, &cluster) in TestMain")
	}
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails since Go 1.24
	name := "t_" + hex.EncodeToString(b[:])

	if err := c.srv.CreateDatabase(t.Context(), name); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	t.Cleanup(func() {
		// t.Context() is already canceled while cleanups run.
		ctx, cancel := context.WithTimeout(context.Background(), dropTimeout)
		defer cancel()
		if err := c.srv.DropDatabase(ctx, name); err != nil {
			t.Errorf("pgtest: %v", err)
		}
	})
	return c.srv.ConnString(name)
}

// Run starts a cluster, stores it in *c, runs the tests and stops the
// cluster, also when m.Run panics. It returns the exit code for os.Exit: 1 if
// the cluster cannot start (e.g. PostgreSQL is not installed) or died during
// the run.
//
// A panic inside a test kills the test binary without running deferred
// calls; postgres then shuts itself down (pgembed sets a parent-death
// signal) and a later Start removes the leftover directory.
func Run(m *testing.M, c **Cluster) int {
	return run(m, c, os.Stderr)
}

func run(m interface{ Run() int }, c **Cluster, stderr io.Writer, opts ...Option) (code int) {
	cluster, err := Start(opts...)
	if err != nil {
		fmt.Fprintf(stderr, "pgtest: cannot start PostgreSQL for the tests: %v\n", err)
		return 1
	}
	defer func() {
		if cluster.stop() && code == 0 {
			code = 1
		}
	}()
	*c = cluster
	return m.Run()
}

// sweepStale removes directories of earlier test binaries that were killed
// before they could clean up (panicking test, -timeout, Ctrl-C).
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), dirPrefix+"*"))
	for _, dir := range dirs {
		fi, err := os.Stat(dir)
		if err != nil || !fi.IsDir() || time.Since(fi.ModTime()) < staleAge {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		if err != nil {
			continue
		}
		owner, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || alive(owner) || pgembed.Running(filepath.Join(dir, "data")) {
			continue
		}
		_ = os.RemoveAll(dir)
	}
}

func alive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

func logTail(path string) string {
	const maxBytes = 4096
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.Size() > maxBytes {
		_, _ = f.Seek(-maxBytes, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	return string(b)
}
