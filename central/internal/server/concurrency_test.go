package server_test

import (
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/server"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// TestConcurrentIPAllocation: 64 goroutines take addresses from a small
// IPv4 and a small IPv6 external network until they run out. Every host
// address is handed out exactly once and exhaustion is ResourceExhausted.
func TestConcurrentIPAllocation(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	for _, tt := range []struct {
		id, prefix  string
		first, last string // host range
	}{
		{"ext-v4", "198.51.100.64/26", "198.51.100.65", "198.51.100.126"},
		{"ext-v6", "2001:db8:1::/120", "2001:db8:1::1", "2001:db8:1::ff"},
	} {
		t.Run(tt.id, func(t *testing.T) {
			ok(e.api.Network.Create(e.as(t, e.admin), &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
				Id: tt.id, Type: typeExternal, Prefixes: []string{tt.prefix},
			}}))(t)
			const workers = 64
			var (
				mu   sync.Mutex
				got  = map[string]int{}
				wg   sync.WaitGroup
				errs = make(chan error, workers)
			)
			callers := []*caller{e.p1Owner, e.p2Editor}
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					c := callers[w%2]
					project := e.p1
					if c == e.p2Editor {
						project = e.p2
					}
					for {
						resp, err := e.api.IP.Allocate(e.as(t, c), &apiv1.IPServiceAllocateRequest{ProjectId: project, NetworkId: tt.id})
						if status.Code(err) == codes.ResourceExhausted {
							return
						}
						if err != nil {
							errs <- err
							return
						}
						mu.Lock()
						got[resp.GetIp().GetIp()]++
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("allocate: %v", err)
			}
			want := hostRange(t, tt.first, tt.last)
			if len(got) != len(want) {
				t.Fatalf("%d distinct addresses handed out, want %d", len(got), len(want))
			}
			for _, a := range want {
				if got[a] != 1 {
					t.Fatalf("%s handed out %d times", a, got[a])
				}
			}
			// The database agrees, and the network reports itself full.
			if n := e.count(t, `SELECT count(*) FROM ips WHERE network_id = $1`, tt.id); n != len(want) {
				t.Fatalf("%d IP rows, want %d", n, len(want))
			}
			n := ok(e.api.Network.Get(e.as(t, e.admin), &apiv1.NetworkServiceGetRequest{Id: tt.id}))(t).GetNetwork()
			used, avail := n.GetUsage().GetIpv4Used(), n.GetUsage().GetIpv4Available()
			if netip.MustParsePrefix(tt.prefix).Addr().Is6() {
				used, avail = n.GetUsage().GetIpv6Used(), n.GetUsage().GetIpv6Available()
			}
			if avail != "0" || used != strconv.Itoa(len(want)) {
				t.Fatalf("usage %s used / %s available, want %d / 0", used, avail, len(want))
			}
			_, err := e.api.IP.Allocate(e.as(t, e.p1Owner), &apiv1.IPServiceAllocateRequest{ProjectId: e.p1, NetworkId: tt.id})
			wantCode(t, err, codes.ResourceExhausted)
		})
	}
}

func hostRange(t *testing.T, first, last string) []string {
	t.Helper()
	var out []string
	for a, end := netip.MustParseAddr(first), netip.MustParseAddr(last); a.Compare(end) <= 0; a = a.Next() {
		out = append(out, a.String())
	}
	return out
}

// TestConcurrentChildAllocation: 32 goroutines allocate child networks at
// once from a small super network with a narrow VRF range. Exactly
// min(free slots, free VRFs) succeed, no prefix or VRF is handed out twice,
// the rest get ResourceExhausted; deleting the children gives everything back.
func TestConcurrentChildAllocation(t *testing.T) {
	t.Parallel()
	const vrfFirst, vrfLast = 100, 109 // 10 VRFs
	e := newEnv(t, func(c *server.Config) { c.Service.VRFFirst, c.Service.VRFLast = vrfFirst, vrfLast })
	admin := e.as(t, e.admin)
	tests := []struct {
		partition, super, prefix string
		slots                    int
	}{
		// 16 /28 slots but only 10 VRFs.
		{"vrf-bound", "super-a", "10.0.0.0/24", 16},
		// 4 /28 slots, 10 VRFs.
		{"slot-bound", "super-b", "10.1.0.0/26", 4},
	}
	for _, tt := range tests {
		t.Run(tt.partition, func(t *testing.T) {
			ok(e.api.Partition.Create(admin, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: tt.partition}}))(t)
			ok(e.api.Network.Create(admin, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
				Id: tt.super, Type: typeSuper, PartitionId: tt.partition, Prefixes: []string{tt.prefix}, ChildPrefixLengthIpv4: 28,
			}}))(t)
			const workers = 32
			var (
				mu        sync.Mutex
				children  []*apiv1.Network
				exhausted int
				wg        sync.WaitGroup
				errs      = make(chan error, workers)
			)
			for w := 0; w < workers; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, err := e.api.Network.Allocate(e.as(t, e.p1Owner), &apiv1.NetworkServiceAllocateRequest{ProjectId: e.p1, PartitionId: tt.partition})
					mu.Lock()
					defer mu.Unlock()
					switch status.Code(err) {
					case codes.OK:
						children = append(children, resp.GetNetwork())
					case codes.ResourceExhausted:
						exhausted++
					default:
						errs <- err
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatalf("allocate: %v", err)
			}
			want := min(tt.slots, vrfLast-vrfFirst+1)
			if len(children) != want || exhausted != workers-want {
				t.Fatalf("%d allocated, %d exhausted; want %d and %d", len(children), exhausted, want, workers-want)
			}
			parent := netip.MustParsePrefix(tt.prefix)
			var prefixes []string
			var vrfs []uint32
			for _, c := range children {
				if len(c.GetPrefixes()) != 1 {
					t.Fatalf("child %v", c)
				}
				p := netip.MustParsePrefix(c.GetPrefixes()[0])
				if p.Bits() != 28 || !parent.Contains(p.Addr()) {
					t.Fatalf("child prefix %s is not a /28 of %s", p, parent)
				}
				if c.GetVrf() < vrfFirst || c.GetVrf() > vrfLast {
					t.Fatalf("VRF %d outside %d-%d", c.GetVrf(), vrfFirst, vrfLast)
				}
				prefixes = append(prefixes, p.String())
				vrfs = append(vrfs, c.GetVrf())
			}
			slices.Sort(prefixes)
			slices.Sort(vrfs)
			if len(slices.Compact(prefixes)) != want || len(slices.Compact(vrfs)) != want {
				t.Fatalf("duplicates: prefixes %v, VRFs %v", prefixes, vrfs)
			}
			if n := e.count(t, `SELECT count(*) FROM networks WHERE parent_id = $1`, tt.super); n != want {
				t.Fatalf("%d child rows, want %d", n, want)
			}
			// Give everything back so the next case has all VRFs, and check
			// the pools are whole again.
			for _, c := range children {
				ok(e.api.Network.Delete(e.as(t, e.p1Owner), &apiv1.NetworkServiceDeleteRequest{Id: c.GetId()}))(t)
			}
			if n := ok(e.api.Network.Get(admin, &apiv1.NetworkServiceGetRequest{Id: tt.super}))(t).GetNetwork(); n.GetUsage().GetIpv4Used() != "0" || n.GetUsage().GetIpv4Available() != strconv.Itoa(tt.slots) {
				t.Fatalf("super usage after deleting children: %v", n.GetUsage())
			}
			if n := e.count(t, `SELECT COALESCE(sum(stop_unit - start_unit + 1), 0)::INT FROM pool_free WHERE pool_id = 'vrf'`); n != vrfLast-vrfFirst+1 {
				t.Fatalf("%d VRFs free after deleting every child, want %d", n, vrfLast-vrfFirst+1)
			}
		})
	}
}
