package network

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/metalfleet/metalfleet/central/internal/ipam"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// IP calls keep the networks they read (cache.go). A change made through
// the same Networks drops the entry; one made elsewhere (another replica)
// leaves it stale, and the next call still gets the right answer: the
// shared statement's guard refuses the old row and the call starts over
// on a fresh read.
func TestIPCacheAfterChanges(t *testing.T) {
	tests := []struct {
		name string
		// change alters network ext (10.6.0.0/29, whose first address
		// the caller holds) through the lab's own Networks.
		change func(l *lab)
		want   string // the address the next call gets; "" when the network is gone
	}{
		{"update", func(l *lab) {
			if _, err := l.ns.Update(l.ctx, "ext", "renamed", "", nil); err != nil {
				l.t.Fatal(err)
			}
		}, "10.6.0.2"},
		{"delete", func(l *lab) { l.remove("ext") }, ""},
		{"delete, create with another prefix", func(l *lab) {
			l.remove("ext")
			l.external("ext", "198.51.100.0/29")
		}, "198.51.100.1"},
		{"delete, create with the same prefix", func(l *lab) {
			l.remove("ext")
			l.external("ext", "10.6.0.0/29")
		}, "10.6.0.1"},
	}
	for _, tt := range tests {
		for _, replica := range []string{"same", "other"} {
			t.Run(tt.name+"/"+replica+" replica", func(t *testing.T) {
				l := newLab(t)
				l.external("ext", "10.6.0.0/29")
				caller := l.ns
				if replica == "other" {
					caller = New(l.st, nil)
				}
				alloc := func() (*apiv1.IP, error) {
					return caller.AllocateIP(l.ctx, newIP("ext"), netip.Addr{}, 0)
				}
				if ip, err := alloc(); err != nil || ip.GetIp() != "10.6.0.1" {
					t.Fatalf("first IP = %v, %v", ip, err)
				}
				if _, ok := caller.cache.get("ext"); !ok {
					t.Fatal("the network read by an IP call is not cached")
				}
				tt.change(l)
				if _, ok := caller.cache.get("ext"); ok != (replica == "other") {
					t.Fatalf("cached after the change: %v", ok)
				}
				ip, err := alloc()
				if tt.want == "" {
					var ne *Error
					if !errors.As(err, &ne) || !ne.Read || !errors.Is(err, pgx.ErrNoRows) {
						t.Fatalf("IP from a deleted network = %v, %v; want a failed read", ip, err)
					}
					return
				}
				if err != nil || ip.GetIp() != tt.want {
					t.Fatalf("IP after the change = %v, %v; want %s", ip, err, tt.want)
				}
				n, ok := caller.cache.get("ext")
				current, err := Table.Get(l.ctx, l.st.Pool(), "ext")
				if err != nil {
					t.Fatal(err)
				}
				if !ok || !n.GetMeta().GetCreatedAt().AsTime().Equal(current.GetMeta().GetCreatedAt().AsTime()) {
					t.Fatalf("cache holds %v, want the current row", n)
				}
			})
		}
	}
}

// remove releases a network's IPs and deletes it.
func (l *lab) remove(id string) {
	l.t.Helper()
	ips, err := l.ns.ListIPs(l.ctx, "", id)
	if err != nil {
		l.t.Fatal(err)
	}
	for _, ip := range ips {
		if _, err := l.ns.ReleaseIP(l.ctx, ip.GetIp(), ip.GetIp()); err != nil {
			l.t.Fatal(err)
		}
	}
	if _, err := l.ns.Delete(l.ctx, id); err != nil {
		l.t.Fatal(err)
	}
}

// Usage counts addresses of address pools and prefixes of a super
// network's slot pools, by family.
func TestUsage(t *testing.T) {
	l := newLab(t)
	ext := l.external("ext", "10.7.0.0/29", "fd00:7::/126")
	super := l.create(&apiv1.Network{Id: "super", Type: apiv1.NetworkType_NETWORK_TYPE_SUPER, PartitionId: "p1",
		Prefixes: []string{"10.64.0.0/24"}, ChildPrefixLengthIpv4: 26})
	for range 2 {
		if _, err := l.ns.AllocateIP(l.ctx, newIP("ext"), netip.Addr{}, 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.ns.AllocateChild(l.ctx, ChildRequest{Partition: "p1", Project: project}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		n    *apiv1.Network
		want *apiv1.NetworkUsage
	}{
		{ext, &apiv1.NetworkUsage{Ipv4Available: "4", Ipv4Used: "2", Ipv6Available: "3", Ipv6Used: "0"}},
		{super, &apiv1.NetworkUsage{Ipv4Available: "3", Ipv4Used: "1", Ipv6Available: "0", Ipv6Used: "0"}},
	}
	for _, tt := range tests {
		got, err := l.ns.Usage(l.ctx, tt.n)
		if err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, tt.want) {
			t.Errorf("usage of %s = %v, want %v", tt.n.GetId(), got, tt.want)
		}
	}
}

// Central makes the VRF pool at every start; a start with another range
// leaves the pool as it was first made (newLab made it 10000-10999).
func TestEnsureVRFPoolKeepsItsRange(t *testing.T) {
	l := newLab(t)
	if err := l.ns.EnsureVRFPool(l.ctx, 20000, 20009); err != nil {
		t.Fatal(err)
	}
	if free := l.free(ipam.VRFPoolID); free != 1000 {
		t.Fatalf("%d VRF ids free, want the first range's 1000", free)
	}
}
