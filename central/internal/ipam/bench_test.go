package ipam_test

// Throughput benchmarks of the transactional IPAM hand-out paths: one
// store.Tx per hand-out, writing the consumer row the product writes, so the
// numbers include the round trips and commits a real request pays. The
// one-statement fast path of IPService.Allocate is measured by the service
// package's BenchmarkAllocateIP. bench/ipam.sh runs both against one durable
// PostgreSQL together with pgbench (raw INSERT ceiling) and go-ipam
// (bench/goipam); BENCHMARKS.md records the results.

import (
	"context"
	"fmt"
	"math/big"
	"net/netip"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/pgtest"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

var benchClientCounts = []int{1, 64}

// Big enough that no benchmark run comes near exhaustion: 2^24 addresses and
// 2^32 child slots, so the free lists keep their 64 shards throughout.
var (
	benchIPPrefix    = netip.MustParsePrefix("10.0.0.0/8")
	benchSuperPrefix = netip.MustParsePrefix("fd00::/32")
)

const benchChildBits = 64

func BenchmarkAcquireIP(b *testing.B) {
	for _, clients := range benchClientCounts {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			ctx := context.Background()
			st := benchOpenStore(b, clients)
			fx := benchSetup(b, st)
			pool := ipam.IPPoolID(benchIPPrefix)
			pgtest.RunClients(b, clients, func() error {
				return st.Tx(ctx, func(tx pgx.Tx) error {
					u, err := ipam.Acquire(ctx, tx, pool)
					if err != nil {
						return err
					}
					// As ipService.Allocate's transactional path (specific
					// addresses, and the fallback when the one-statement path
					// finds every range locked): the spec is the API object
					// as protojson, the unit goes in as text.
					addr := ipam.UnitAddr(u, true)
					ip := &apiv1.IP{
						Ip:        addr.String(),
						NetworkId: fx.externalNet,
						ProjectId: fx.project,
						Type:      apiv1.IPType_IP_TYPE_EPHEMERAL,
					}
					spec, err := protojson.Marshal(ip)
					if err != nil {
						return err
					}
					var (
						out              []byte
						gen              int64
						created, updated time.Time
					)
					return tx.QueryRow(ctx, `INSERT INTO ips (ip, spec, pool_id, unit, network_id, project_id, type)
						VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING spec, generation, created_at, updated_at`,
						ip.GetIp(), spec, pool, u.String(), fx.externalNet, fx.project, "ephemeral").
						Scan(&out, &gen, &created, &updated)
				})
			})
		})
	}
}

func BenchmarkAcquireChildPrefix(b *testing.B) {
	for _, clients := range benchClientCounts {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			ctx := context.Background()
			st := benchOpenStore(b, clients)
			fx := benchSetup(b, st)
			parentPool := ipam.ChildPoolID(benchSuperPrefix)
			pgtest.RunClients(b, clients, func() error {
				return st.Tx(ctx, func(tx pgx.Tx) error {
					slot, err := ipam.Acquire(ctx, tx, parentPool)
					if err != nil {
						return err
					}
					// As networkService.Allocate via insertPrefix: the child
					// prefix gets its own address pool and a prefixes row
					// whose (parent_pool, parent_unit) pins the slot. The
					// child network row, VRF and audit row are left out: they
					// are not IPAM and would be the same for any allocator.
					p := ipam.ChildPrefix(benchSuperPrefix, benchChildBits, slot)
					first, last := ipam.HostRange(p)
					ipPool := ipam.IPPoolID(p)
					if err := ipam.CreatePoolRanges(ctx, tx, ipPool, ipam.KindIP, first, last, ipam.FewShards); err != nil {
						return err
					}
					_, err = tx.Exec(ctx, `INSERT INTO prefixes (cidr, network_id, family, ip_pool, child_pool, parent_pool, parent_unit)
						VALUES ($1, $2, $3, $4, $5, $6, $7::NUMERIC)`,
						p.String(), fx.childNet, ipam.Family(p), ipPool, nil, parentPool, slot.String())
					return err
				})
			})
		})
	}
}

// benchOpenStore opens a migrated store on a fresh database with a
// connection per client already established, so connection set-up is not
// timed.
func benchOpenStore(b *testing.B, clients int) *store.Store {
	b.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, pg.BenchDatabase(b), nil, store.WithMaxConns(int32(clients+8)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(st.Close)
	if err := st.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	pgtest.Warm(b, st.Pool(), clients)
	return st
}

type benchFixture struct {
	project     string
	externalNet string
	childNet    string
}

// benchSetup creates what the hand-outs need to satisfy the schema's foreign
// keys: a project, an external network owning benchIPPrefix with its address
// pool, and a super network owning benchSuperPrefix with its child-slot pool
// plus one child network the carved prefixes hang off.
func benchSetup(b *testing.B, st *store.Store) benchFixture {
	b.Helper()
	ctx := context.Background()
	fx := benchFixture{
		project:     uuid.NewString(),
		externalNet: "bench-external",
		childNet:    "bench-child",
	}
	const superNet = "bench-super"
	err := st.Tx(ctx, func(tx pgx.Tx) error {
		stmts := []struct {
			sql  string
			args []any
		}{
			{`INSERT INTO tenants (id, spec) VALUES ('bench', '{}')`, nil},
			{`INSERT INTO projects (id, tenant_id, name, spec) VALUES ($1, 'bench', 'bench', '{}')`, []any{fx.project}},
			{`INSERT INTO networks (id, type, spec) VALUES ($1, 'external', '{}')`, []any{fx.externalNet}},
			{`INSERT INTO networks (id, type, spec) VALUES ($1, 'super', '{}')`, []any{superNet}},
			{`INSERT INTO networks (id, type, project_id, parent_id, vrf, spec) VALUES ($1, 'child', $2, $3, 1, '{}')`,
				[]any{fx.childNet, fx.project, superNet}},
		}
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s.sql, s.args...); err != nil {
				return err
			}
		}
		first, last := ipam.HostRange(benchIPPrefix)
		if err := ipam.CreatePool(ctx, tx, ipam.IPPoolID(benchIPPrefix), ipam.KindIP, first, last); err != nil {
			return err
		}
		slots, err := ipam.ChildSlots(benchSuperPrefix, benchChildBits)
		if err != nil {
			return err
		}
		if err := ipam.CreatePool(ctx, tx, ipam.ChildPoolID(benchSuperPrefix), ipam.KindChild,
			big.NewInt(0), slots.Sub(slots, big.NewInt(1))); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO prefixes (cidr, network_id, family, ip_pool) VALUES ($1, $2, 4, $3)`,
			benchIPPrefix.String(), fx.externalNet, ipam.IPPoolID(benchIPPrefix)); err != nil {
			return err
		}
		_, err = tx.Exec(ctx, `INSERT INTO prefixes (cidr, network_id, family, child_pool) VALUES ($1, $2, 6, $3)`,
			benchSuperPrefix.String(), superNet, ipam.ChildPoolID(benchSuperPrefix))
		return err
	})
	if err != nil {
		b.Fatalf("benchmark fixture: %v", err)
	}
	return fx
}
