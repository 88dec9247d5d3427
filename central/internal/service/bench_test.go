package service

// Throughput of the product's allocation paths, the API handlers without
// gRPC and auth: BenchmarkAllocateIP (IPService.Allocate, next free
// address) and BenchmarkAllocateChildNetwork (NetworkService.Allocate, a
// child network with its /64, VRF, pools and audit row). Concurrent calls
// are combined into shared statements as in production (network's
// batches); calls/stmt reports how many shared one on average.
// bench/ipam.sh runs them on the same durable PostgreSQL as pgbench and
// go-ipam.

import (
	"context"
	"fmt"
	"testing"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/pgtest"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// benchAPI opens a migrated store on a fresh database with one connection
// per client already established and a tenant and project in it.
func benchAPI(b testing.TB, ctx context.Context, clients int) (*API, string) {
	b.Helper()
	st, err := store.Open(ctx, pg.BenchDatabase(b), nil, store.WithMaxConns(int32(clients+8)))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(st.Close)
	if err := st.Migrate(ctx); err != nil {
		b.Fatal(err)
	}
	a, err := New(ctx, st, nil, Config{})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := (&tenantService{API: a}).Create(ctx, &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: "bench"}}); err != nil {
		b.Fatal(err)
	}
	p, err := (&projectService{API: a}).Create(ctx, &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: "bench", Name: "bench"}})
	if err != nil {
		b.Fatal(err)
	}
	pgtest.Warm(b, st.Pool(), clients)
	return a, p.GetProject().GetId()
}

func benchCtx(method string) context.Context {
	return auth.WithCall(context.Background(), &auth.Call{
		Principal: &auth.Principal{TokenID: "bench", Admin: apiv1.Level_LEVEL_EDITOR},
		Method:    method, RequestID: "bench",
	})
}

// benchStats is what a combiner reports.
type benchStats interface{ Stats() (batches, calls int64) }

// statsFunc makes a domain's batch counts a benchStats.
type statsFunc func() (batches, calls int64)

func (f statsFunc) Stats() (batches, calls int64) { return f() }

// runCombined runs op as pgtest.RunClients does and reports how many calls
// shared a statement on average (1 with one client).
func runCombined(b *testing.B, clients int, c benchStats, op func() error) {
	b.Helper()
	batches0, calls0 := c.Stats()
	pgtest.RunClients(b, clients, op)
	if batches, calls := c.Stats(); batches > batches0 {
		b.ReportMetric(float64(calls-calls0)/float64(batches-batches0), "calls/stmt")
	}
}

func BenchmarkAllocateIP(b *testing.B) {
	for _, clients := range []int{1, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			ctx := benchCtx("/metalfleet.api.v1.IPService/Allocate")
			a, project := benchAPI(b, ctx, clients)
			if _, err := (&networkService{API: a}).Create(ctx, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
				Id: "internet", Type: apiv1.NetworkType_NETWORK_TYPE_EXTERNAL, Prefixes: []string{"10.0.0.0/8"},
			}}); err != nil {
				b.Fatal(err)
			}
			svc := &ipService{API: a}
			req := &apiv1.IPServiceAllocateRequest{ProjectId: project, NetworkId: "internet"}
			runCombined(b, clients, statsFunc(a.networks.IPBatchStats), func() error { _, err := svc.Allocate(ctx, req); return err })
		})
	}
}

// BenchmarkAllocateChildNetwork: a child network with one IPv6 /64 of
// fd00::/32 (2^32 slots) per call: its VRF id, its slot, its network row,
// its address pool (ipam.FewShards ranges), its prefix row and its audit
// row.
func BenchmarkAllocateChildNetwork(b *testing.B) {
	for _, clients := range []int{1, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			ctx := benchCtx("/metalfleet.api.v1.NetworkService/Allocate")
			a, project := benchAPI(b, ctx, clients)
			if _, err := (&partitionService{API: a}).Create(ctx, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "bench", AllowSingleAttach: true}}); err != nil {
				b.Fatal(err)
			}
			svc := &networkService{API: a}
			if _, err := svc.Create(ctx, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
				Id: "bench-super", Type: apiv1.NetworkType_NETWORK_TYPE_SUPER, PartitionId: "bench",
				Prefixes: []string{"fd00::/32"}, ChildPrefixLengthIpv6: 64,
			}}); err != nil {
				b.Fatal(err)
			}
			req := &apiv1.NetworkServiceAllocateRequest{ProjectId: project, PartitionId: "bench"}
			runCombined(b, clients, statsFunc(a.networks.ChildBatchStats), func() error { _, err := svc.Allocate(ctx, req); return err })
		})
	}
}
