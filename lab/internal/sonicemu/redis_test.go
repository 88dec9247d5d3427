package sonicemu

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// startRedis runs a real redis-server on a unix socket in the test's
// directory, writes the database_config.json a switch would have for it
// and returns CONFIG_DB's client through Open, as the binary connects.
// (agents/metalcore/redistest does the same for metal-core; Go's
// internal rule keeps lab/ from importing it.)
func startRedis(t *testing.T) (*redis.Client, string) {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server not installed (make deps installs Debian's redis-server)")
	}
	dir, err := os.MkdirTemp("", "semu")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "redis.sock")
	cmd := exec.Command(bin, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "700",
		"--save", "", "--appendonly", "no", "--dir", dir, "--databases", "16", "--loglevel", "warning")
	if err := cmd.Start(); err != nil {
		t.Fatalf("redis-server: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	cfg, _ := json.Marshal(map[string]any{
		"INSTANCES": map[string]any{"redis": map[string]any{"hostname": "127.0.0.1", "port": 6379, "unix_socket_path": sock}},
		"DATABASES": map[string]any{
			"APPL_DB":   map[string]any{"id": 0, "separator": ":", "instance": "redis"},
			"CONFIG_DB": map[string]any{"id": 4, "separator": "|", "instance": "redis"},
		},
	})
	path := filepath.Join(dir, "database_config.json")
	if err := os.WriteFile(path, cfg, 0o644); err != nil {
		t.Fatal(err)
	}
	c, sep, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not answer within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return c, sep
}

// load replaces CONFIG_DB's content with rows; a row without fields is
// written as SONiC writes one, NULL=NULL.
func load(t *testing.T, c *redis.Client, rows map[string]map[string]string) {
	t.Helper()
	ctx := context.Background()
	if err := c.FlushDB(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	for k, f := range rows {
		args := []any{}
		for n, v := range f {
			args = append(args, n, v)
		}
		if len(args) == 0 {
			args = []any{"NULL", "NULL"}
		}
		if err := c.HSet(ctx, k, args...).Err(); err != nil {
			t.Fatal(err)
		}
	}
}
