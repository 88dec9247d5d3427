package service

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/ipam"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func count(t *testing.T, a *API, sql string, args ...any) int {
	t.Helper()
	var n int
	if err := a.store.Pool().QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// Concurrent next-free calls share statements; each still gets its own
// address, IP row and audit row.
func TestAllocateIPCombinedCallsEachAudited(t *testing.T) {
	ctx := benchCtx("/metalfleet.api.v1.IPService/Allocate")
	a, project := benchAPI(t, ctx, 32)
	if _, err := (&networkService{API: a}).Create(ctx, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
		Id: "ext", Type: apiv1.NetworkType_NETWORK_TYPE_EXTERNAL, Prefixes: []string{"10.9.0.0/22"},
	}}); err != nil {
		t.Fatal(err)
	}
	svc := &ipService{API: a}
	var (
		mu  sync.Mutex
		got = map[string]bool{}
		wg  sync.WaitGroup
	)
	b0, c0 := a.networks.IPBatchStats()
	for range 32 {
		wg.Go(func() {
			for range 20 {
				r, err := svc.Allocate(ctx, &apiv1.IPServiceAllocateRequest{ProjectId: project, NetworkId: "ext", Name: "n"})
				if err != nil {
					t.Error(err)
					return
				}
				ip := r.GetIp()
				if ip.GetName() != "n" || ip.GetProjectId() != project || ip.GetMeta().GetGeneration() != 1 || !netip.MustParsePrefix("10.9.0.0/22").Contains(netip.MustParseAddr(ip.GetIp())) {
					t.Errorf("allocated %v", ip)
				}
				mu.Lock()
				if got[ip.GetIp()] {
					t.Errorf("%s handed out twice", ip.GetIp())
				}
				got[ip.GetIp()] = true
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	b1, c1 := a.networks.IPBatchStats()
	t.Logf("%d calls in %d statements", c1-c0, b1-b0)
	if n := count(t, a, `SELECT count(*) FROM ips`); n != 640 || len(got) != 640 {
		t.Fatalf("%d IP rows, %d addresses returned; want 640", n, len(got))
	}
	if n := count(t, a, `SELECT count(*) FROM audit a JOIN ips i ON a.target = 'ip/' || i.ip AND a.method = '/metalfleet.api.v1.IPService/Allocate'`); n != 640 {
		t.Fatalf("%d audit rows for the IPs, want 640", n)
	}
}

// A network read by an earlier call and deleted and created again under
// the same id with another prefix: the next call must use the new prefix.
func TestAllocateIPStaleNetwork(t *testing.T) {
	ctx := benchCtx("/metalfleet.api.v1.IPService/Allocate")
	a, project := benchAPI(t, ctx, 2)
	nets, svc := &networkService{API: a}, &ipService{API: a}
	create := func(prefix string) {
		t.Helper()
		if _, err := nets.Create(ctx, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
			Id: "ext", Type: apiv1.NetworkType_NETWORK_TYPE_EXTERNAL, Prefixes: []string{prefix},
		}}); err != nil {
			t.Fatal(err)
		}
	}
	alloc := func() string {
		t.Helper()
		r, err := svc.Allocate(ctx, &apiv1.IPServiceAllocateRequest{ProjectId: project, NetworkId: "ext"})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetIp().GetIp()
	}
	create("192.0.2.0/29")
	ip := alloc()
	if ip != "192.0.2.1" {
		t.Fatalf("first IP = %s", ip)
	}
	if _, err := svc.Release(ctx, &apiv1.IPServiceReleaseRequest{Ip: ip}); err != nil {
		t.Fatal(err)
	}
	if _, err := nets.Delete(ctx, &apiv1.NetworkServiceDeleteRequest{Id: "ext"}); err != nil {
		t.Fatal(err)
	}
	_, err := svc.Allocate(ctx, &apiv1.IPServiceAllocateRequest{ProjectId: project, NetworkId: "ext"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("allocate from a deleted network = %v, want NotFound", err)
	}
	create("198.51.100.0/29")
	if ip := alloc(); ip != "198.51.100.1" {
		t.Fatalf("IP after re-creating the network = %s, want 198.51.100.1", ip)
	}
	// Same id and prefix again: a different row, still the right answer.
	if _, err := svc.Release(ctx, &apiv1.IPServiceReleaseRequest{Ip: "198.51.100.1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := nets.Delete(ctx, &apiv1.NetworkServiceDeleteRequest{Id: "ext"}); err != nil {
		t.Fatal(err)
	}
	create("198.51.100.0/29")
	if ip := alloc(); ip != "198.51.100.1" {
		t.Fatalf("IP after re-creating the network again = %s", ip)
	}
}

// One call with a missing project must not cost the calls that share its
// batch their addresses, nor lose units: the batch fails as a whole
// (network's TestIPBatchFailureChangesNothing) and its calls go the
// single-call way.
func TestAllocateIPBatchFailureFallsBack(t *testing.T) {
	ctx := benchCtx("/metalfleet.api.v1.IPService/Allocate")
	a, project := benchAPI(t, ctx, 2)
	if _, err := (&networkService{API: a}).Create(ctx, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
		Id: "ext", Type: apiv1.NetworkType_NETWORK_TYPE_EXTERNAL, Prefixes: []string{"10.8.0.0/24"},
	}}); err != nil {
		t.Fatal(err)
	}
	// Through the API: the good calls succeed, the bad one is refused.
	var wg sync.WaitGroup
	codesGot := make([]codes.Code, 16)
	for i := range codesGot {
		wg.Go(func() {
			p := project
			if i == 5 {
				p = "00000000-0000-4000-8000-000000000000"
			}
			_, err := (&ipService{API: a}).Allocate(ctx, &apiv1.IPServiceAllocateRequest{ProjectId: p, NetworkId: "ext"})
			codesGot[i] = status.Code(err)
		})
	}
	wg.Wait()
	for i, c := range codesGot {
		if want := codes.OK; i != 5 && c != want || i == 5 && c == codes.OK {
			t.Fatalf("call %d: %v", i, c)
		}
	}
	if n := count(t, a, `SELECT count(*) FROM ips`); n != 15 {
		t.Fatalf("%d IPs, want 15", n)
	}
	if _, free, _ := ipam.Usage(ctx, a.store.Pool(), ipam.IPPoolID(netip.MustParsePrefix("10.8.0.0/24"))); free.Int64() != 254-15 {
		t.Fatalf("free = %v, want %d: units lost", free, 254-15)
	}
}

// Concurrent child network allocations share transactions; each child
// still gets its own VRF, prefix, address pool and audit row.
func TestAllocateChildNetworksCombined(t *testing.T) {
	ctx := benchCtx("/metalfleet.api.v1.NetworkService/Allocate")
	a, project := benchAPI(t, ctx, 32)
	if _, err := (&partitionService{API: a}).Create(ctx, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "p1", AllowSingleAttach: true}}); err != nil {
		t.Fatal(err)
	}
	svc := &networkService{API: a}
	if _, err := svc.Create(ctx, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
		Id: "super", Type: apiv1.NetworkType_NETWORK_TYPE_SUPER, PartitionId: "p1",
		Prefixes: []string{"10.64.0.0/16", "fd00:1::/48"}, ChildPrefixLengthIpv4: 26, ChildPrefixLengthIpv6: 64,
	}}); err != nil {
		t.Fatal(err)
	}
	var (
		mu   sync.Mutex
		seen = map[string]bool{}
		wg   sync.WaitGroup
	)
	for range 32 {
		wg.Go(func() {
			for range 5 {
				r, err := svc.Allocate(ctx, &apiv1.NetworkServiceAllocateRequest{ProjectId: project, PartitionId: "p1", Name: "c"})
				if err != nil {
					t.Error(err)
					return
				}
				n := r.GetNetwork()
				if len(n.GetPrefixes()) != 2 || n.GetName() != "c" || n.GetMeta().GetGeneration() != 1 {
					t.Errorf("child %v", n)
				}
				mu.Lock()
				for _, k := range append([]string{fmt.Sprint("vrf ", n.GetVrf()), n.GetId()}, n.GetPrefixes()...) {
					if seen[k] {
						t.Errorf("%q handed out twice", k)
					}
					seen[k] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	const want = 160
	for _, q := range []struct {
		sql string
		n   int
	}{
		{`SELECT count(*) FROM networks WHERE type = 'child'`, want},
		{`SELECT count(DISTINCT vrf) FROM networks WHERE type = 'child'`, want},
		{`SELECT count(*) FROM prefixes WHERE parent_pool IS NOT NULL`, 2 * want},
		{`SELECT count(*) FROM pool_free f JOIN prefixes p ON p.ip_pool = f.pool_id WHERE p.parent_pool IS NOT NULL`, 2 * want * ipam.FewShards},
		{`SELECT count(*) FROM audit a JOIN networks n ON a.target = 'network/' || n.id WHERE n.type = 'child'`, want},
	} {
		if n := count(t, a, q.sql); n != q.n {
			t.Fatalf("%s = %d, want %d", q.sql, n, q.n)
		}
	}
}
