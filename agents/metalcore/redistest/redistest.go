// Package redistest runs a real redis-server for metal-core's tests, on a
// unix socket in the test's temporary directory, with the SONiC
// database_config.json that points at it, and dumps CONFIG_DB as golden
// text.
package redistest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SONiC's database ids and separators, as a switch's database_config.json
// has them.
var databases = map[string]struct {
	id  int
	sep string
}{
	"APPL_DB":     {0, ":"},
	"ASIC_DB":     {1, ":"},
	"COUNTERS_DB": {2, ":"},
	"CONFIG_DB":   {4, "|"},
	"STATE_DB":    {6, "|"},
}

// Server is a running redis-server.
type Server struct {
	// Socket is the unix socket's path; DBConfig the database_config.json.
	Socket   string
	DBConfig string
}

// Start runs redis-server for the test and stops it at its end. The test
// is skipped when redis-server is not installed (`make deps` installs it).
func Start(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not installed (make deps installs Debian's redis-server)")
	}
	dir := t.TempDir()
	if len(dir) > 80 {
		// A unix socket's path has at most 107 bytes.
		if dir, err = os.MkdirTemp("", "redis"); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	s := &Server{Socket: filepath.Join(dir, "redis.sock"), DBConfig: filepath.Join(dir, "database_config.json")}
	cmd := exec.Command(bin, "--port", "0", "--unixsocket", s.Socket, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--dir", dir, "--databases", "16", "--loglevel", "warning")
	log, err := os.Create(filepath.Join(dir, "redis.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatalf("redis-server: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		log.Close()
	})
	c := redis.NewClient(&redis.Options{Network: "unix", Addr: s.Socket, Protocol: 2, DisableIdentity: true})
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(log.Name())
			t.Fatalf("redis-server did not answer within 10s: %s", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.writeConfig(t)
	return s
}

func (s *Server) writeConfig(t testing.TB) {
	dbs := map[string]any{}
	for name, d := range databases {
		dbs[name] = map[string]any{"id": d.id, "separator": d.sep, "instance": "redis"}
	}
	b, err := json.MarshalIndent(map[string]any{
		"INSTANCES": map[string]any{"redis": map[string]any{"hostname": "127.0.0.1", "port": 6379, "unix_socket_path": s.Socket}},
		"DATABASES": dbs,
		"VERSION":   "1.0",
	}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.DBConfig, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// Client opens a client of database name (CONFIG_DB, APPL_DB, …).
func (s *Server) Client(t testing.TB, name string) *redis.Client {
	t.Helper()
	d, ok := databases[name]
	if !ok {
		t.Fatalf("no database %s", name)
	}
	c := redis.NewClient(&redis.Options{Network: "unix", Addr: s.Socket, DB: d.id, Protocol: 2, DisableIdentity: true})
	t.Cleanup(func() { c.Close() })
	return c
}

// Load writes rows (key → field → value) into database name.
func (s *Server) Load(t testing.TB, name string, rows map[string]map[string]string) {
	t.Helper()
	c := s.Client(t, name)
	ctx := context.Background()
	for k, fields := range rows {
		args := make([]any, 0, 2*len(fields))
		for f, v := range fields {
			args = append(args, f, v)
		}
		if err := c.HSet(ctx, k, args...).Err(); err != nil {
			t.Fatalf("load %s: %v", k, err)
		}
	}
}

// Dump is every hash of a database as sorted text, one line per field:
// "KEY field=value". Golden files hold it.
func Dump(t testing.TB, c *redis.Client) string {
	t.Helper()
	ctx := context.Background()
	keys, err := c.Keys(ctx, "*").Result()
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(keys)
	var b strings.Builder
	for _, k := range keys {
		if typ := c.Type(ctx, k).Val(); typ != "hash" {
			fmt.Fprintf(&b, "%s (%s)\n", k, typ)
			continue
		}
		m, err := c.HGetAll(ctx, k).Result()
		if err != nil {
			t.Fatalf("dump %s: %v", k, err)
		}
		fields := make([]string, 0, len(m))
		for f, v := range m {
			fields = append(fields, f+"="+v)
		}
		slices.Sort(fields)
		fmt.Fprintf(&b, "%s %s\n", k, strings.Join(fields, " "))
	}
	return b.String()
}

// WriteCommands counts the write commands the server executed so far
// (INFO commandstats: hset, hdel, del, set, hmset), across all clients.
func WriteCommands(t testing.TB, c *redis.Client) int {
	t.Helper()
	info, err := c.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, line := range strings.Split(info, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok || !slices.Contains([]string{"cmdstat_hset", "cmdstat_hdel", "cmdstat_del", "cmdstat_set", "cmdstat_hmset"}, name) {
			continue
		}
		var calls int
		if _, err := fmt.Sscanf(rest, "calls=%d", &calls); err == nil {
			n += calls
		}
	}
	return n
}
