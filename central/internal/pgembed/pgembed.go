// Package pgembed runs a private PostgreSQL server as a child process, so
// metal-central works out of the box without an external database. It uses
// the machine's PostgreSQL server binaries (Debian package "postgresql").
//
// Layout of Options.DataDir, which is kept at mode 0700:
//
//	DataDir/pgdata/           the cluster; pgdata/PG_VERSION marks it initialized
//	DataDir/postgres.log      initdb and server output (rotated at start beyond 16 MiB)
//	DataDir/.s.PGSQL.5432     the server's only socket (see below)
//
// The cluster sits in a subdirectory because initdb insists on an empty or
// missing target directory, while DataDir also holds the log and the socket.
// initdb runs in pgdata.initdb and is renamed into place, so an interrupted
// initdb is simply redone on the next start.
//
// Authentication is "trust". That is safe only because the server listens on
// no TCP address and its unix socket lives in a 0700 directory owned by the
// server's OS user: only that user and root can reach it. When the socket path
// would exceed the kernel's 107-byte limit, the socket goes to a private 0700
// directory /tmp/pgembed-* instead, removed by Stop. The port number only names
// the socket file, so every Server uses 5432 and servers in different DataDirs
// coexist.
//
// PostgreSQL refuses to run as root. When the calling process is root, initdb
// and postgres run as Options.User (default "postgres") and DataDir is
// chowned to that user; every parent directory of DataDir must be searchable
// by it.
//
// A Server left running by a crashed or killed owner is found through
// pgdata/postmaster.pid on the next Start, verified via /proc, and stopped.
// Under systemd, prefer KillMode=mixed so that the service's own Stop, not a
// cgroup-wide SIGTERM (a "smart" shutdown that waits for clients), ends
// postgres.
package pgembed

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

const (
	port       = 5432
	socketName = ".s.PGSQL.5432"
	// sun_path is 108 bytes including the terminating NUL.
	maxSocketPath = 107

	tempSocketParent = "/tmp"
	tempSocketPrefix = "pgembed-"

	clusterSubdir  = "pgdata"
	logFileName    = "postgres.log"
	maxLogSize     = 16 << 20
	defaultReady   = 30 * time.Second
	superuser      = "postgres"
	adminDatabase  = "postgres"
	connectTimeout = 5 * time.Second
)

// Options configures Start.
type Options struct {
	// DataDir holds the cluster, log and socket; created if missing, mode 0700.
	DataDir string
	// BinDir holds initdb and postgres; see FindBinDir when empty.
	BinDir string
	// Durable=false turns off fsync, synchronous_commit and full_page_writes:
	// much faster, but an OS crash can corrupt the cluster. Only for tests.
	Durable bool
	// Logger receives lifecycle events; nil discards them. Server output goes
	// to DataDir/postgres.log.
	Logger *slog.Logger
	// User is the OS user postgres runs as when this process is root;
	// default "postgres". Ignored when not root.
	User string
	// Settings are extra server parameters (postgres -c name=value); they
	// override this package's defaults.
	Settings map[string]string
}

// Server is a running PostgreSQL server. Its methods are safe for concurrent use.
type Server struct {
	log        *slog.Logger
	dataDir    string
	clusterDir string
	sockDir    string
	tempSock   bool
	logPath    string
	logStart   int64 // offset in the log where the current startup step began

	cmd      *exec.Cmd
	done     chan struct{}
	exitErr  error // written before done is closed
	stopping atomic.Bool

	interruptOnce sync.Once
	cleanupOnce   sync.Once
}

// runAs is the unprivileged identity used when we are root.
type runAs struct {
	name string
	cred *syscall.Credential
}

// Start initializes the cluster if needed, recovers from an unclean previous
// shutdown, starts postgres and waits until it accepts connections. Without a
// deadline on ctx, readiness is awaited for at most 30 seconds. ctx bounds
// only startup; the server runs until Stop.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.DataDir == "" {
		return nil, errors.New("pgembed: Options.DataDir is required")
	}
	dataDir, err := filepath.Abs(opts.DataDir)
	if err != nil {
		return nil, fmt.Errorf("pgembed: resolve data directory: %w", err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "pgembed", "data_dir", dataDir)

	ra, err := lookupRunAs(opts.User)
	if err != nil {
		return nil, fmt.Errorf("pgembed: %w", err)
	}
	clusterDir := filepath.Join(dataDir, clusterSubdir)
	binDir, err := clusterBinDir(opts.BinDir, clusterDir)
	if err != nil {
		return nil, fmt.Errorf("pgembed: %w", err)
	}
	if err := prepareDataDir(dataDir, ra); err != nil {
		return nil, fmt.Errorf("pgembed: %w", err)
	}

	s := &Server{
		log:        log,
		dataDir:    dataDir,
		clusterDir: clusterDir,
		logPath:    filepath.Join(dataDir, logFileName),
		done:       make(chan struct{}),
	}
	logFile, err := s.openLog(ra)
	if err != nil {
		return nil, fmt.Errorf("pgembed: %w", err)
	}
	// The children hold their own descriptor for the log.
	defer logFile.Close()

	if err := recoverStale(ctx, log, clusterDir, dataDir); err != nil {
		return nil, fmt.Errorf("pgembed: recover data directory: %w", err)
	}
	if err := s.initdbIfNeeded(ctx, binDir, opts.Durable, ra, logFile); err != nil {
		return nil, fmt.Errorf("pgembed: %w", err)
	}
	if err := s.checkVersion(ctx, binDir); err != nil {
		return nil, fmt.Errorf("pgembed: %w", err)
	}
	if err := s.chooseSocketDir(ra); err != nil {
		return nil, fmt.Errorf("pgembed: %w", err)
	}

	begin := time.Now()
	log.Info("starting postgres", "bin_dir", binDir, "socket_dir", s.sockDir, "durable", opts.Durable)
	args := s.serverArgs(opts)
	s.markLog(logFile, "postgres "+strings.Join(args, " "))
	if err := s.spawn(binDir, args, ra, logFile); err != nil {
		s.removeTempSocketDir()
		return nil, fmt.Errorf("pgembed: start postgres: %w%s", err, s.logTail())
	}
	if err := s.waitReady(ctx); err != nil {
		tail := s.logTail()
		stopCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		_ = s.Stop(stopCtx)
		return nil, fmt.Errorf("pgembed: %w%s", err, tail)
	}
	log.Info("postgres ready", "pid", s.cmd.Process.Pid, "took", time.Since(begin).Round(time.Millisecond))
	return s, nil
}

func lookupRunAs(name string) (*runAs, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	if name == "" {
		name = "postgres"
	}
	u, err := user.Lookup(name)
	if err != nil {
		return nil, fmt.Errorf("PostgreSQL refuses to run as root, so it must run as OS user %q, which does not exist (the Debian package \"postgresql\" creates \"postgres\"): %w", name, err)
	}
	uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
	gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user %q has non-numeric uid/gid %s/%s", name, u.Uid, u.Gid)
	}
	if uid == 0 {
		return nil, fmt.Errorf("user %q is root; PostgreSQL needs an unprivileged user", name)
	}
	cred := &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	// Without an explicit list the child would keep root's supplementary
	// groups.
	gids, err := u.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("look up groups of user %q: %w", name, err)
	}
	for _, g := range gids {
		if n, err := strconv.ParseUint(g, 10, 32); err == nil {
			cred.Groups = append(cred.Groups, uint32(n))
		}
	}
	return &runAs{name: name, cred: cred}, nil
}

func prepareDataDir(dataDir string, ra *runAs) error {
	// Parents get 0755: MkdirAll would give them the 0700 meant for DataDir,
	// locking the postgres user out when we are root.
	if err := os.MkdirAll(filepath.Dir(dataDir), 0o755); err != nil {
		return fmt.Errorf("create parent of data directory: %w", err)
	}
	if err := os.Mkdir(dataDir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create data directory: %w", err)
	}
	// Enforced even on an existing directory: it holds the trust-auth socket.
	if err := os.Chmod(dataDir, 0o700); err != nil {
		return fmt.Errorf("restrict data directory: %w", err)
	}
	if ra != nil {
		if err := os.Chown(dataDir, int(ra.cred.Uid), int(ra.cred.Gid)); err != nil {
			return fmt.Errorf("chown data directory to %s: %w", ra.name, err)
		}
	}
	return nil
}

func (s *Server) openLog(ra *runAs) (*os.File, error) {
	if fi, err := os.Stat(s.logPath); err == nil && fi.Size() > maxLogSize {
		_ = os.Rename(s.logPath, s.logPath+".1") // best effort; appending still works
	}
	f, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	if ra != nil {
		_ = f.Chown(int(ra.cred.Uid), int(ra.cred.Gid)) // cosmetic; postgres writes via our descriptor
	}
	return f, nil
}

// markLog starts a new section in the log, both for operators reading it and
// so that logTail reports only the current step's output.
func (s *Server) markLog(f *os.File, what string) {
	if fi, err := f.Stat(); err == nil {
		s.logStart = fi.Size()
	}
	fmt.Fprintf(f, "=== pgembed %s: %s\n", time.Now().UTC().Format(time.RFC3339), what)
}

func (s *Server) initdbIfNeeded(ctx context.Context, binDir string, durable bool, ra *runAs, logFile *os.File) error {
	if _, err := os.Stat(filepath.Join(s.clusterDir, "PG_VERSION")); err == nil {
		return nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("check cluster: %w", err)
	}
	if entries, err := os.ReadDir(s.clusterDir); err == nil && len(entries) > 0 {
		// Never initdb over files we did not create: this may be a damaged
		// cluster worth recovering by hand.
		return fmt.Errorf("%s is not empty but has no PG_VERSION; move it away to initialize a new cluster", s.clusterDir)
	}

	tmp := s.clusterDir + ".initdb"
	if err := os.RemoveAll(tmp); err != nil {
		return fmt.Errorf("remove interrupted initdb: %w", err)
	}
	args := []string{"-D", tmp, "-U", superuser, "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8"}
	if !durable {
		args = append(args, "--no-sync")
	}
	s.log.Info("initializing new cluster", "cluster_dir", s.clusterDir)
	begin := time.Now()
	s.markLog(logFile, "initdb "+strings.Join(args, " "))
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"), args...)
	cmd.Dir = s.dataDir
	cmd.Env = childEnv()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if ra != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: ra.cred}
	}
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("initdb: %w%s%s", err, s.accessHint(ra), s.logTail())
	}
	if err := os.Remove(s.clusterDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("replace empty cluster directory: %w", err)
	}
	if err := os.Rename(tmp, s.clusterDir); err != nil {
		return fmt.Errorf("move initialized cluster into place: %w", err)
	}
	if durable {
		if err := syncDir(s.dataDir); err != nil {
			return fmt.Errorf("persist cluster rename: %w", err)
		}
	}
	s.log.Info("cluster initialized", "took", time.Since(begin).Round(time.Millisecond))
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// checkVersion turns postgres' "database files are incompatible with server"
// into an actionable message.
func (s *Server) checkVersion(ctx context.Context, binDir string) error {
	clusterVer, err := clusterMajor(s.clusterDir)
	if err != nil {
		return fmt.Errorf("read cluster version: %w", err)
	}
	binVer, err := binaryMajor(ctx, binDir)
	if err != nil {
		return err
	}
	if clusterVer != binVer {
		return fmt.Errorf("cluster %s was created by PostgreSQL %s but %s holds PostgreSQL %s: install postgresql-%s or upgrade the cluster with pg_upgrade",
			s.clusterDir, clusterVer, binDir, binVer, clusterVer)
	}
	return nil
}

func (s *Server) chooseSocketDir(ra *runAs) error {
	if len(filepath.Join(s.dataDir, socketName)) <= maxSocketPath {
		s.sockDir = s.dataDir
		return nil
	}
	dir, err := os.MkdirTemp(tempSocketParent, tempSocketPrefix)
	if err != nil {
		return fmt.Errorf("create socket directory (data directory path too long for a unix socket): %w", err)
	}
	if ra != nil {
		if err := os.Chown(dir, int(ra.cred.Uid), int(ra.cred.Gid)); err != nil {
			_ = os.Remove(dir)
			return fmt.Errorf("chown socket directory: %w", err)
		}
	}
	s.sockDir, s.tempSock = dir, true
	return nil
}

func (s *Server) serverArgs(opts Options) []string {
	settings := map[string]string{
		"listen_addresses": "",
		"port":             strconv.Itoa(port),
		// Quoted because the value is a comma-separated list.
		"unix_socket_directories": `"` + strings.ReplaceAll(s.sockDir, `"`, `""`) + `"`,
		"unix_socket_permissions": "0700",
		"max_connections":         "200",
		"shared_buffers":          "128MB",
	}
	if !opts.Durable {
		settings["fsync"] = "off"
		settings["synchronous_commit"] = "off"
		settings["full_page_writes"] = "off"
	}
	for k, v := range opts.Settings {
		settings[k] = v
	}
	names := make([]string, 0, len(settings))
	for k := range settings {
		names = append(names, k)
	}
	sort.Strings(names)
	args := []string{"-D", s.clusterDir}
	for _, k := range names {
		args = append(args, "-c", k+"="+settings[k])
	}
	return args
}

// spawn starts postgres from a goroutine that keeps its OS thread locked for
// the lifetime of the process: Pdeathsig fires when the forking thread exits,
// and an unlocked thread may be retired by the Go runtime at any time.
func (s *Server) spawn(binDir string, args []string, ra *runAs, logFile *os.File) error {
	cmd := exec.Command(filepath.Join(binDir, "postgres"), args...)
	cmd.Dir = s.dataDir
	cmd.Env = childEnv()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	var cred *syscall.Credential
	if ra != nil {
		cred = ra.cred
	}
	cmd.SysProcAttr = serverSysProcAttr(cred)
	s.cmd = cmd

	started := make(chan error, 1)
	go func() {
		// Never unlocked: the thread must outlive postgres, and a goroutine
		// exiting while locked makes the runtime discard the thread afterwards.
		runtime.LockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		err := cmd.Wait()
		s.exitErr = err
		if !s.stopping.Load() {
			s.log.Error("postgres exited unexpectedly", "err", err, "log", s.logPath)
		}
		close(s.done)
	}()
	if err := <-started; err != nil {
		return fmt.Errorf("%w%s", err, s.accessHint(ra))
	}
	return nil
}

func (s *Server) waitReady(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultReady)
		defer cancel()
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	var lastErr error
	for {
		if err := s.ping(ctx); err == nil {
			return nil
		} else {
			lastErr = err
		}
		select {
		case <-s.done:
			return fmt.Errorf("postgres exited during startup: %v", s.exitErr)
		case <-ctx.Done():
			return fmt.Errorf("postgres did not accept connections: %w (last attempt: %v)", ctx.Err(), lastErr)
		case <-t.C:
		}
	}
}

func (s *Server) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.ConnString(adminDatabase))
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// childEnv drops PG* variables, which initdb and postgres would otherwise
// honor (PGDATA, PGPORT, PGOPTIONS...) in ways that contradict our flags.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "PG") {
			env = append(env, kv)
		}
	}
	return env
}

// accessHint explains the typical root-mode failure: the child has switched
// to the postgres user before chdir/exec, so an unsearchable parent directory
// surfaces as a bare "permission denied".
func (s *Server) accessHint(ra *runAs) string {
	if ra == nil {
		return ""
	}
	var chain []string
	for p := s.dataDir; ; p = filepath.Dir(p) {
		chain = append(chain, p)
		if p == filepath.Dir(p) {
			break
		}
	}
	groups := map[uint32]bool{ra.cred.Gid: true}
	for _, g := range ra.cred.Groups {
		groups[g] = true
	}
	for i := len(chain) - 1; i >= 0; i-- {
		fi, err := os.Stat(chain[i])
		if err != nil {
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return ""
		}
		var bit fs.FileMode = 0o001
		switch {
		case st.Uid == ra.cred.Uid:
			bit = 0o100
		case groups[st.Gid]:
			bit = 0o010
		}
		if fi.Mode().Perm()&bit == 0 {
			return fmt.Sprintf(" (user %q cannot enter %s: mode %04o, owner uid %d; every parent of the data directory must be searchable by it)",
				ra.name, chain[i], fi.Mode().Perm(), st.Uid)
		}
	}
	return ""
}

// logTail returns the end of what this server wrote to its log, formatted for
// appending to an error.
func (s *Server) logTail() string {
	const maxBytes, maxLines = 4096, 25
	f, err := os.Open(s.logPath)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	from := max(s.logStart, fi.Size()-maxBytes)
	b := make([]byte, fi.Size()-from)
	if _, err := f.ReadAt(b, from); err != nil && !errors.Is(err, io.EOF) {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if from > s.logStart && len(lines) > 1 {
		lines = lines[1:] // probably cut mid-line
	}
	if len(lines) > maxLines {
		lines = lines[len(lines)-maxLines:]
	}
	text := strings.Join(lines, "\n")
	if strings.TrimSpace(text) == "" {
		return ""
	}
	return "\n--- " + s.logPath + " (tail) ---\n" + text
}

// ConnString returns a pgx/libpq URL for database, connecting as the
// superuser "postgres" over the server's unix socket.
func (s *Server) ConnString(database string) string {
	return "postgres://" + superuser + "@/" + uriEscape(database, false) +
		"?host=" + uriEscape(s.sockDir, true) + "&port=" + strconv.Itoa(port) + "&sslmode=disable"
}

// uriEscape percent-encodes everything but unreserved characters. net/url
// is not used because its query encoding turns spaces into "+", which libpq
// and pgx do not decode.
func uriEscape(v string, keepSlash bool) string {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9',
			c == '-', c == '.', c == '_', c == '~', c == '/' && keepSlash:
			b.WriteByte(c)
		default:
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// SocketDir returns the directory holding the server's unix socket.
func (s *Server) SocketDir() string { return s.sockDir }

// LogPath returns the file receiving the server's output.
func (s *Server) LogPath() string { return s.logPath }

// CreateDatabase creates database name. An existing database is not an error,
// so callers can run it unconditionally at every start.
func (s *Server) CreateDatabase(ctx context.Context, name string) error {
	if name == "" {
		return errors.New("pgembed: create database: empty name")
	}
	err := s.adminExec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// 23505: two concurrent creators race on pg_database's unique index
		// instead of reaching the friendly duplicate_database check.
		if pgErr.Code == "42P04" || (pgErr.Code == "23505" && pgErr.ConstraintName == "pg_database_datname_index") {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("pgembed: create database %q: %w", name, err)
	}
	return nil
}

// DropDatabase drops database name, terminating its open connections. A
// missing database is not an error.
func (s *Server) DropDatabase(ctx context.Context, name string) error {
	if name == "" {
		return errors.New("pgembed: drop database: empty name")
	}
	if err := s.adminExec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("pgembed: drop database %q: %w", name, err)
	}
	return nil
}

func (s *Server) adminExec(ctx context.Context, sql string) error {
	select {
	case <-s.done:
		return errors.New("server is not running")
	default:
	}
	conn, err := pgx.Connect(ctx, s.ConnString(adminDatabase))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	_, err = conn.Exec(ctx, sql)
	return err
}

// Running reports whether a postgres server, possibly started by another
// process, is running on the cluster in dataDir.
func Running(dataDir string) bool {
	b, err := os.ReadFile(filepath.Join(dataDir, clusterSubdir, "postmaster.pid"))
	if err != nil {
		return false
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	return err == nil && processAlive(pid)
}

// Done is closed when the postgres process has exited, whether through Stop
// or a crash.
func (s *Server) Done() <-chan struct{} { return s.done }

// Err returns how the postgres process exited; nil while it runs.
func (s *Server) Err() error {
	select {
	case <-s.done:
		return s.exitErr
	default:
		return nil
	}
}

// Stop performs a fast shutdown (SIGINT: abort sessions, checkpoint, exit)
// and waits for it. If ctx ends first, postgres and its backends are
// SIGKILLed; the cluster then runs crash recovery on the next Start. Stop is
// idempotent and may be called concurrently; an error means the server had to
// be killed.
func (s *Server) Stop(ctx context.Context) error {
	s.stopping.Store(true)
	s.interruptOnce.Do(func() {
		select {
		case <-s.done:
			return
		default:
		}
		s.log.Info("stopping postgres")
		// os.Process tracks the child by pidfd, so a late signal cannot hit
		// a recycled PID.
		_ = s.cmd.Process.Signal(syscall.SIGINT)
	})

	var err error
	select {
	case <-s.done:
	case <-ctx.Done():
		s.log.Warn("postgres shutdown timed out, killing it")
		s.kill()
		select {
		case <-s.done:
			err = fmt.Errorf("pgembed: postgres did not shut down in time and was killed: %w", ctx.Err())
		case <-time.After(10 * time.Second):
			return fmt.Errorf("pgembed: postgres (PID %d) did not exit even after SIGKILL: %w", s.cmd.Process.Pid, ctx.Err())
		}
	}
	s.cleanupOnce.Do(s.removeTempSocketDir)
	return err
}

// kill SIGKILLs the postmaster first, so it cannot respawn backends, then
// the backends it leaves behind, which would otherwise keep the shared memory
// attached and block the next start.
func (s *Server) kill() {
	children := childPIDs(s.cmd.Process.Pid)
	_ = s.cmd.Process.Kill()
	for _, pid := range children {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func (s *Server) removeTempSocketDir() {
	if s.tempSock {
		_ = os.RemoveAll(s.sockDir)
	}
}
