package network

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// seq is n addresses from first on.
func seq(first string, n int) []string {
	a := netip.MustParseAddr(first)
	out := make([]string, n)
	for i := range out {
		out[i] = a.String()
		a = a.Next()
	}
	return out
}

// One call and a batch of calls take the same steps: n next-free calls
// one after the other (each a batch of one) and the same n calls as one
// batch (the calls it leaves taking the transaction of their own, as
// AllocateIP does) hand out the same addresses and write the same rows.
func TestAllocateIPOneAndBatchAgree(t *testing.T) {
	tests := []struct {
		name     string
		prefixes []string // of an external network; none: a child network's
		fam      int
		want     []string // addresses in call order; "" for a refused call
	}{
		{"ipv4, more calls than a range holds", []string{"10.0.0.0/24"}, 0, seq("10.0.0.1", 10)},
		{"ipv6", []string{"fd00:1::/120"}, 0, seq("fd00:1::1", 6)},
		{"dual stack, IPv4 first", []string{"fd00:2::/124", "10.1.0.0/28"}, 0, seq("10.1.0.1", 3)},
		{"dual stack, IPv6 asked", []string{"10.1.0.0/28", "fd00:2::/124"}, 6, seq("fd00:2::1", 4)},
		{"child network, few ranges", nil, 0, seq("10.64.0.1", 8)},
		{"pool runs out", []string{"10.2.0.0/30"}, 0, []string{"10.2.0.1", "10.2.0.2", ""}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// setup gives each run the same network on a database of its own.
			setup := func() (*lab, *apiv1.Network, []*apiv1.IP) {
				l := newLab(t)
				var n *apiv1.Network
				if tt.prefixes == nil {
					l.create(&apiv1.Network{Id: "super", Type: apiv1.NetworkType_NETWORK_TYPE_SUPER, PartitionId: "p1",
						Prefixes: []string{"10.64.0.0/16"}, ChildPrefixLengthIpv4: 26})
					var err error
					if n, err = l.ns.AllocateChild(l.ctx, ChildRequest{Partition: "p1", Project: project}); err != nil {
						t.Fatal(err)
					}
				} else {
					n = l.external("ext", tt.prefixes...)
				}
				ips := make([]*apiv1.IP, len(tt.want))
				for i := range ips {
					ips[i] = &apiv1.IP{NetworkId: n.GetId(), ProjectId: project, Name: fmt.Sprint("ip", i), Type: apiv1.IPType_IP_TYPE_EPHEMERAL}
				}
				return l, n, ips
			}
			check := func(mode string, l *lab, n *apiv1.Network, got []result) {
				t.Helper()
				ok := 0
				for i, r := range got {
					ip, _ := r.m.(*apiv1.IP)
					if ip.GetIp() != tt.want[i] {
						t.Errorf("%s: call %d got %v, want %q", mode, i, r, tt.want[i])
					}
					if ip != nil {
						ok++
					}
				}
				if c := l.count(`SELECT count(*) FROM ips`); c != ok {
					t.Errorf("%s: %d IP rows, want %d", mode, c, ok)
				}
				if c := l.count(`SELECT count(*) FROM audit WHERE target LIKE 'ip/%'`); c != ok {
					t.Errorf("%s: %d audit rows, want %d", mode, c, ok)
				}
				prefixes, err := Prefixes(l.ctx, l.st.Pool(), n)
				if err != nil {
					t.Fatal(err)
				}
				var free, size int64
				for _, p := range prefixes {
					first, last := ipam.HostRange(p.CIDR)
					size += last.Int64() - first.Int64() + 1
					free += l.free(p.IPPool)
				}
				if free != size-int64(ok) {
					t.Errorf("%s: %d units free of %d after %d IPs", mode, free, size, ok)
				}
			}

			l, n, ips := setup()
			var one []result
			for _, ip := range ips {
				one = append(one, resultOf(l.ns.AllocateIP(l.ctx, ip, netip.Addr{}, tt.fam)))
			}
			check("one by one", l, n, one)

			l, n, ips = setup()
			n, err := Table.Get(l.ctx, l.st.Pool(), n.GetId())
			if err != nil {
				t.Fatal(err)
			}
			var prefixes []Prefix
			for _, c := range n.GetPrefixes() {
				prefixes = append(prefixes, Prefix{CIDR: netip.MustParsePrefix(c)})
			}
			fam := tt.fam
			if fam == 0 {
				fam = defaultFamily(prefixes)
			}
			var prefix netip.Prefix
			for _, p := range prefixes {
				if ipam.Family(p.CIDR) == fam {
					prefix = p.CIDR
					break
				}
			}
			reqs := make([]ipReq, len(ips))
			for i, ip := range ips {
				spec, err := store.EncodeSpec(ip)
				if err != nil {
					t.Fatal(err)
				}
				reqs[i] = ipReq{ip: ip, spec: spec, call: auth.CallFrom(l.ctx), auditID: uuid.NewString()}
			}
			key := ipKey{network: n.GetId(), created: n.GetMeta().GetCreatedAt().AsTime(), prefix: prefix}
			batch := make([]result, len(ips))
			served := 0
			for i, o := range l.ns.runIPBatch(l.ctx, key, reqs) {
				if o.Err != nil || o.Val != nil {
					served++
					batch[i] = resultOf(o.Val, o.Err)
					continue
				}
				batch[i] = resultOf(l.ns.allocateIP(l.ctx, n, ips[i], netip.Addr{}, tt.fam))
			}
			if served == 0 {
				t.Fatal("the batch served no call")
			}
			t.Logf("the batch served %d of %d calls", served, len(ips))
			check("batch", l, n, batch)
			sameResults(t, "one by one against batch", one, batch)
		})
	}
}

// A batch that fails changes nothing and leaves every call to the
// single-call path: one call with a missing project must not cost the
// others their addresses, nor lose units.
func TestIPBatchFailureChangesNothing(t *testing.T) {
	l := newLab(t)
	n := l.external("ext", "10.8.0.0/24")
	mk := func(p string) ipReq {
		ip := &apiv1.IP{NetworkId: "ext", ProjectId: p, Type: apiv1.IPType_IP_TYPE_EPHEMERAL}
		spec, err := store.EncodeSpec(ip)
		if err != nil {
			t.Fatal(err)
		}
		return ipReq{ip: ip, spec: spec, call: auth.CallFrom(l.ctx), auditID: "audit-" + p}
	}
	key := ipKey{network: "ext", created: n.GetMeta().GetCreatedAt().AsTime(), prefix: netip.MustParsePrefix("10.8.0.0/24")}
	outs := l.ns.runIPBatch(l.ctx, key, []ipReq{mk(project), mk(gone), mk(project)})
	for i, o := range outs {
		if o.Err != nil || o.Val != nil {
			t.Fatalf("call %d of a failed batch = %v, %v; want no IP and no error", i, o.Val, o.Err)
		}
	}
	if free := l.free(ipam.IPPoolID(key.prefix)); free != 254 {
		t.Fatalf("free after a failed batch = %d, want 254", free)
	}
	if c := l.count(`SELECT count(*) FROM ips`) + l.count(`SELECT count(*) FROM audit WHERE target LIKE 'ip/%'`); c != 0 {
		t.Fatalf("a failed batch left %d rows", c)
	}

	// Concurrent calls: the good ones succeed, the bad one is refused.
	var wg sync.WaitGroup
	errs := make([]error, 16)
	for i := range errs {
		wg.Go(func() {
			p := project
			if i == 5 {
				p = gone
			}
			_, errs[i] = l.ns.AllocateIP(l.ctx, &apiv1.IP{NetworkId: "ext", ProjectId: p, Type: apiv1.IPType_IP_TYPE_EPHEMERAL}, netip.Addr{}, 0)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if (i == 5) != (err != nil) {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if c := l.count(`SELECT count(*) FROM ips`); c != 15 {
		t.Fatalf("%d IPs, want 15", c)
	}
	if free := l.free(ipam.IPPoolID(key.prefix)); free != 254-15 {
		t.Fatalf("free = %d, want %d: units lost", free, 254-15)
	}
}

// The networks IPs do not come from and the addresses a call cannot have.
func TestAllocateIPRefused(t *testing.T) {
	l := newLab(t)
	l.external("ext", "10.3.0.0/24")
	l.create(&apiv1.Network{Id: "super", Type: apiv1.NetworkType_NETWORK_TYPE_SUPER, PartitionId: "p1",
		Prefixes: []string{"10.64.0.0/16"}, ChildPrefixLengthIpv4: 26})
	l.create(&apiv1.Network{Id: "underlay", Type: apiv1.NetworkType_NETWORK_TYPE_UNDERLAY, PartitionId: "p1", Prefixes: []string{"10.255.0.0/24"}})
	theirs, err := l.ns.AllocateChild(l.ctx, ChildRequest{Partition: "p1", Project: other})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.ns.AllocateIP(l.ctx, newIP("ext"), netip.MustParseAddr("10.3.0.7"), 0); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		network string
		want    string
		fam     int
		code    codes.Code
	}{
		{"another project's child network", theirs.GetId(), "", 0, codes.NotFound},
		{"super network", "super", "", 0, codes.FailedPrecondition},
		{"underlay", "underlay", "", 0, codes.FailedPrecondition},
		{"family the network lacks", "ext", "", 6, codes.FailedPrecondition},
		{"address taken", "ext", "10.3.0.7", 0, codes.AlreadyExists},
		{"address outside", "ext", "10.4.0.1", 0, codes.InvalidArgument},
		{"network address", "ext", "10.3.0.0", 0, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want netip.Addr
			if tt.want != "" {
				want = netip.MustParseAddr(tt.want)
			}
			_, err := l.ns.AllocateIP(l.ctx, newIP(tt.network), want, tt.fam)
			wantCode(t, err, tt.code)
		})
	}
	t.Run("unknown network", func(t *testing.T) {
		_, err := l.ns.AllocateIP(l.ctx, newIP("nope"), netip.Addr{}, 0)
		var ne *Error
		if !errors.As(err, &ne) || !ne.Read || ne.Network != "nope" || !errors.Is(err, pgx.ErrNoRows) {
			t.Fatalf("allocate from an unknown network: %v, want a failed read of network nope", err)
		}
	})
	if c := l.count(`SELECT count(*) FROM ips`); c != 1 {
		t.Fatalf("%d IP rows after refused calls, want 1", c)
	}
}

// Release gives the address back; an address a machine holds stays.
func TestReleaseIP(t *testing.T) {
	l := newLab(t)
	n := l.external("ext", "10.5.0.0/29")
	pool := ipam.IPPoolID(netip.MustParsePrefix("10.5.0.0/29"))
	ip, err := l.ns.AllocateIP(l.ctx, &apiv1.IP{NetworkId: "ext", ProjectId: project, Type: apiv1.IPType_IP_TYPE_STATIC}, netip.Addr{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if free := l.free(pool); free != 5 {
		t.Fatalf("free after one IP = %d, want 5", free)
	}
	out, err := l.ns.ReleaseIP(l.ctx, ip.GetIp(), ip.GetIp())
	if err != nil || out.GetIp() != ip.GetIp() {
		t.Fatalf("release = %v, %v", out, err)
	}
	if free := l.free(pool); free != 6 {
		t.Fatalf("free after release = %d, want 6", free)
	}
	if c := l.count(`SELECT count(*) FROM audit WHERE target = $1`, "ip/"+ip.GetIp()); c != 2 {
		t.Fatalf("%d audit rows for the IP, want 2 (allocate, release)", c)
	}
	if _, err := l.ns.ReleaseIP(l.ctx, ip.GetIp(), ip.GetIp()); !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("second release = %v, want no rows", err)
	}
	// The released address is handed out again.
	again, err := l.ns.AllocateIP(l.ctx, newIP("ext"), netip.Addr{}, 0)
	if err != nil || again.GetIp() != ip.GetIp() {
		t.Fatalf("allocate after release = %v, %v; want %s", again, err, ip.GetIp())
	}

	m := &MachineIPs{Machine: "m1", Hostname: "h", Nets: []*apiv1.Network{n}}
	if err := l.st.Tx(l.ctx, func(tx pgx.Tx) error { return TakeMachineIPs(l.ctx, tx, project, m) }); err != nil {
		t.Fatal(err)
	}
	_, err = l.ns.ReleaseIP(l.ctx, m.IPs[0], m.IPs[0])
	wantCode(t, err, codes.FailedPrecondition)
	if err := l.st.Tx(l.ctx, func(tx pgx.Tx) error { return ReleaseMachineIPs(l.ctx, tx, "m1") }); err != nil {
		t.Fatal(err)
	}
	if free := l.free(pool); free != 5 {
		t.Fatalf("free after the machine's release = %d, want 5", free)
	}
}
