package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"runtime"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
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

// RunClients times op run back to back by exactly clients goroutines (1 runs
// in the benchmark's own goroutine) and reports ops/s, the unit
// BENCHMARKS.md compares in.
func RunClients(b *testing.B, clients int, op func() error) {
	b.Helper()
	b.ResetTimer()
	if clients == 1 {
		for range b.N {
			if err := op(); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		// RunParallel starts parallelism × GOMAXPROCS goroutines.
		procs := runtime.GOMAXPROCS(0)
		par := (clients + procs - 1) / procs
		if par*procs != clients {
			b.Logf("GOMAXPROCS=%d does not divide %d: running %d clients", procs, clients, par*procs)
		}
		b.SetParallelism(par)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := op(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

// Warm opens n connections of pool before timing starts, so that connection
// set-up is not measured.
func Warm(b testing.TB, pool *pgxpool.Pool, n int) {
	b.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			c, err := pool.Acquire(context.Background())
			if err != nil {
				errs <- err
				return
			}
			// Held until all are open, or the pool would hand the same one out again.
			defer c.Release()
			errs <- c.Ping(context.Background())
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
}
