package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
)

// BenchDBEnv names a server for benchmarks to run on instead of the embedded
// test cluster, which runs without fsync and so would not be comparable with
// pgbench or another allocator on a durable server (bench/ipam.sh sets it).
const BenchDBEnv = "METALFLEET_BENCH_DB_URL"

// BenchDatabase returns the URL of an empty database that is dropped when b
// ends: on the server in BenchDBEnv if set, else on c.
func (c *Cluster) BenchDatabase(b testing.TB) string {
	b.Helper()
	base := os.Getenv(BenchDBEnv)
	if base == "" {
		return c.NewDatabase(b)
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		b.Fatalf("%s must be a postgres:// URL, got %q", BenchDBEnv, base)
	}
	var r [8]byte
	_, _ = rand.Read(r[:])
	name := "bench_" + hex.EncodeToString(r[:])
	admin := func(sql string) error {
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			return err
		}
		defer conn.Close(ctx)
		_, err = conn.Exec(ctx, sql)
		return err
	}
	if err := admin("CREATE DATABASE " + name); err != nil {
		b.Fatalf("create benchmark database: %v", err)
	}
	b.Cleanup(func() {
		if err := admin("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)"); err != nil {
			b.Errorf("drop benchmark database %s: %v", name, err)
		}
	})
	u.Path = "/" + name
	return u.String()
}
