package goipam_test

import (
	"context"
	"crypto/rand"
	dbsql "database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"runtime"
	"sync/atomic"
	"testing"

	goipam "github.com/metal-stack/go-ipam"

	// go-ipam's own driver, reused for creating and dropping databases.
	_ "github.com/lib/pq"
)

// benchDBEnv is the server to run on. go-ipam's PostgreSQL storage takes
// host, port and user, so it must be a TCP URL; there is no embedded
// fallback because that server is the product's test fixture, not go-ipam's.
const benchDBEnv = "METALFLEET_BENCH_DB_URL"

var clientCounts = []int{1, 64}

// Same sizes as central/internal/ipam/bench_test.go, so both allocators
// work on equally large prefixes.
const (
	ipPrefix    = "10.0.0.0/8"
	superPrefix = "fd00::/32"
	childBits   = 64
)

func BenchmarkAcquireIP(b *testing.B) {
	for _, clients := range clientCounts {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			ctx := context.Background()
			ipamer := newIpamer(b)
			if _, err := ipamer.NewPrefix(ctx, ipPrefix); err != nil {
				b.Fatal(err)
			}
			run(b, clients, func() error {
				_, err := ipamer.AcquireIP(ctx, ipPrefix)
				return err
			})
		})
	}
}

func BenchmarkAcquireChildPrefix(b *testing.B) {
	for _, clients := range clientCounts {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			ctx := context.Background()
			ipamer := newIpamer(b)
			if _, err := ipamer.NewPrefix(ctx, superPrefix); err != nil {
				b.Fatal(err)
			}
			run(b, clients, func() error {
				_, err := ipamer.AcquireChildPrefix(ctx, superPrefix, childBits)
				return err
			})
		})
	}
}

// run times op run by exactly clients goroutines and reports ops/s. go-ipam
// gives up with ErrOptimisticLockError after its own ten retries; a caller
// that needs the address has to try again, so the op is repeated until it
// succeeds and the give-ups are reported per successful op.
func run(b *testing.B, clients int, op func() error) {
	b.Helper()
	var giveUps atomic.Int64
	do := func() error {
		for {
			err := op()
			if !errors.Is(err, goipam.ErrOptimisticLockError) {
				return err
			}
			giveUps.Add(1)
		}
	}
	if clients == 1 {
		b.ResetTimer()
		for range b.N {
			if err := do(); err != nil {
				b.Fatal(err)
			}
		}
	} else {
		// RunParallel starts parallelism×GOMAXPROCS goroutines.
		procs := runtime.GOMAXPROCS(0)
		par := (clients + procs - 1) / procs
		if par*procs != clients {
			b.Logf("GOMAXPROCS=%d does not divide %d: running %d clients", procs, clients, par*procs)
		}
		b.SetParallelism(par)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := do(); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
	b.ReportMetric(float64(giveUps.Load())/float64(b.N), "giveups/op")
}

// newIpamer returns go-ipam on a fresh database of the benchDBEnv server,
// dropped when b ends.
func newIpamer(b *testing.B) goipam.Ipamer {
	b.Helper()
	base := os.Getenv(benchDBEnv)
	if base == "" {
		b.Fatalf("%s is not set: go-ipam needs a PostgreSQL server reachable over TCP, "+
			"e.g. postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable (bench/ipam.sh starts one)", benchDBEnv)
	}
	u, err := url.Parse(base)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Hostname() == "" {
		b.Fatalf("%s must be a postgres://user@host:port/db URL, got %q", benchDBEnv, base)
	}
	var r [8]byte
	_, _ = rand.Read(r[:])
	name := "bench_" + hex.EncodeToString(r[:])
	admin := func(sql string) error {
		db, err := dbsql.Open("postgres", base)
		if err != nil {
			return err
		}
		defer db.Close()
		_, err = db.Exec(sql)
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

	port := u.Port()
	if port == "" {
		port = "5432"
	}
	password, _ := u.User.Password()
	sslmode := goipam.SSLModeDisable
	if m := u.Query().Get("sslmode"); m != "" {
		sslmode = goipam.SSLMode(m)
	}
	storage, err := goipam.NewPostgresStorage(u.Hostname(), port, u.User.Username(), password, name, sslmode)
	if err != nil {
		b.Fatal(err)
	}
	return goipam.NewWithStorage(storage)
}
