package sonicemu

import (
	"context"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/metalfleet/metalfleet/agents/metalcore/redistest"
)

// startRedis runs a real redis-server (metal-core's test server, with the
// database_config.json a switch would have for it) and returns CONFIG_DB's
// client through Open, as the binary connects.
func startRedis(t *testing.T) (*redis.Client, string) {
	t.Helper()
	srv := redistest.Start(t)
	c, sep, err := Open(srv.DBConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
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
