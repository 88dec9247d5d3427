package service

// BenchmarkAllocateIP measures the product's IP allocation path (the
// IPService.Allocate handler without gRPC and auth: network lookup, prefix
// lookup, the one-statement hand-out with its IP and audit rows, and the
// transactional fallback when it cannot take a range). bench/ipam.sh runs it
// on the same durable PostgreSQL as pgbench and go-ipam.

import (
	"context"
	"fmt"
	"testing"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/pgtest"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func BenchmarkAllocateIP(b *testing.B) {
	for _, clients := range []int{1, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			ctx := auth.WithCall(context.Background(), &auth.Call{
				Principal: &auth.Principal{TokenID: "bench", Admin: apiv1.Level_LEVEL_EDITOR},
				Method:    "/metalfleet.api.v1.IPService/Allocate", RequestID: "bench",
			})
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
			if _, err := (&networkService{API: a}).Create(ctx, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
				Id: "internet", Type: apiv1.NetworkType_NETWORK_TYPE_EXTERNAL, Prefixes: []string{"10.0.0.0/8"},
			}}); err != nil {
				b.Fatal(err)
			}
			svc := &ipService{API: a}
			req := &apiv1.IPServiceAllocateRequest{ProjectId: p.GetProject().GetId(), NetworkId: "internet"}
			pgtest.Warm(b, st.Pool(), clients)
			pgtest.RunClients(b, clients, func() error { _, err := svc.Allocate(ctx, req); return err })
		})
	}
}
