package network

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/ipam"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// One call and a batch of calls cut the same child networks: n calls one
// after the other (each a batch of one), the same n as one batch (the
// calls it leaves taking the transaction of their own, as AllocateChild
// does) and n calls each in that transaction get the same VRF ids and
// prefixes and write the same rows.
func TestAllocateChildOneAndBatchAgree(t *testing.T) {
	dual := []string{"10.64.0.0/16", "fd00:1::/48"}
	tests := []struct {
		name     string
		prefixes []string // of the super network: IPv4 children /26, IPv6 /64
		v4, v6   bool
		want     [][]string // each call's prefixes; nil for a refused call
	}{
		{"every family of the parent", dual, false, false, [][]string{
			{"10.64.0.0/26", "fd00:1::/64"}, {"10.64.0.64/26", "fd00:1:0:1::/64"}, {"10.64.0.128/26", "fd00:1:0:2::/64"}}},
		{"IPv6 asked", dual, false, true, [][]string{{"fd00:1::/64"}, {"fd00:1:0:1::/64"}, {"fd00:1:0:2::/64"}, {"fd00:1:0:3::/64"}}},
		{"IPv4 asked", dual, true, false, [][]string{{"10.64.0.0/26"}, {"10.64.0.64/26"}}},
		{"family the parent lacks", []string{"10.64.0.0/16"}, false, true, [][]string{nil, nil}},
		{"parent runs out", []string{"10.0.0.0/24"}, false, false, [][]string{
			{"10.0.0.0/26"}, {"10.0.0.64/26"}, {"10.0.0.128/26"}, {"10.0.0.192/26"}, nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// setup gives each run the same parent on a database of its own.
			setup := func() (*lab, *apiv1.Network, []ChildRequest) {
				l := newLab(t)
				var v6 uint32
				if slices.ContainsFunc(tt.prefixes, func(p string) bool { return !netip.MustParsePrefix(p).Addr().Is4() }) {
					v6 = 64
				}
				parent := l.create(&apiv1.Network{Id: "super", Type: apiv1.NetworkType_NETWORK_TYPE_SUPER, PartitionId: "p1",
					Prefixes: tt.prefixes, ChildPrefixLengthIpv4: 26, ChildPrefixLengthIpv6: v6})
				reqs := make([]ChildRequest, len(tt.want))
				for i := range reqs {
					reqs[i] = ChildRequest{Partition: "p1", V4: tt.v4, V6: tt.v6, Project: project, Name: fmt.Sprint("child", i),
						Labels: map[string]string{"i": fmt.Sprint(i)}}
				}
				return l, parent, reqs
			}
			check := func(mode string, l *lab, got []result) {
				t.Helper()
				ok, prefixes := 0, 0
				for i, r := range got {
					n, _ := r.m.(*apiv1.Network)
					if !slices.Equal(n.GetPrefixes(), tt.want[i]) {
						t.Errorf("%s: call %d got %v, want prefixes %v", mode, i, r, tt.want[i])
					}
					if n == nil {
						continue
					}
					if n.GetVrf() != uint32(10000+ok) || n.GetParentId() != "super" || n.GetPartitionId() != "p1" || n.GetProjectId() != project ||
						n.GetType() != apiv1.NetworkType_NETWORK_TYPE_CHILD || n.GetName() != fmt.Sprint("child", i) || n.GetMeta().GetGeneration() != 1 {
						t.Errorf("%s: call %d got %v", mode, i, n)
					}
					ok++
					prefixes += len(n.GetPrefixes())
				}
				for _, q := range []struct {
					sql  string
					want int
				}{
					{`SELECT count(*) FROM networks WHERE type = 'child'`, ok},
					{`SELECT count(*) FROM prefixes WHERE parent_pool IS NOT NULL`, prefixes},
					{`SELECT count(*) FROM pool_free f JOIN prefixes p ON p.ip_pool = f.pool_id WHERE p.parent_pool IS NOT NULL`, prefixes * ipam.FewShards},
					{`SELECT count(*) FROM audit WHERE target LIKE 'network/%' AND project_id IS NOT NULL`, ok},
				} {
					if c := l.count(q.sql); c != q.want {
						t.Errorf("%s: %s = %d, want %d", mode, q.sql, c, q.want)
					}
				}
				if free := l.free(ipam.VRFPoolID); free != 1000-int64(ok) {
					t.Errorf("%s: %d VRF ids free, want %d", mode, free, 1000-ok)
				}
			}
			want := map[int]bool{}
			if tt.v4 {
				want[4] = true
			}
			if tt.v6 {
				want[6] = true
			}

			l, _, reqs := setup()
			var one []result
			for _, r := range reqs {
				one = append(one, resultOf(l.ns.AllocateChild(l.ctx, r)))
			}
			check("one by one", l, one)

			l, parent, reqs := setup()
			var alone []result
			for _, r := range reqs {
				alone = append(alone, resultOf(l.ns.allocateChild(l.ctx, parent, childOf(parent, uuid.NewString(), r), want)))
			}
			check("alone", l, alone)

			l, parent, reqs = setup()
			creqs := make([]childReq, len(reqs))
			for i, r := range reqs {
				creqs[i] = childReq{req: r, call: auth.CallFrom(l.ctx), id: uuid.NewString()}
			}
			batch := make([]result, len(reqs))
			served := 0
			for i, o := range l.ns.runChildBatch(l.ctx, childKey{partition: "p1", v4: tt.v4, v6: tt.v6}, creqs) {
				if o.Err != nil || o.Val != nil {
					served++
					batch[i] = resultOf(o.Val, o.Err)
					continue
				}
				batch[i] = resultOf(l.ns.allocateChild(l.ctx, parent, childOf(parent, uuid.NewString(), reqs[i]), want))
			}
			t.Logf("the batch served %d of %d calls", served, len(reqs))
			check("batch", l, batch)

			sameResults(t, "one by one against alone", one, alone)
			sameResults(t, "one by one against batch", one, batch)
		})
	}
}

// The super network a child is cut from: the one named, or the
// partition's only one; anything else is refused alike on the batched
// and the single path.
func TestFindParent(t *testing.T) {
	l := newLab(t)
	for _, n := range []*apiv1.Network{
		{Id: "super", PartitionId: "p1", Prefixes: []string{"10.64.0.0/16"}},
		{Id: "super-a", PartitionId: "p3", Prefixes: []string{"10.65.0.0/16"}},
		{Id: "super-b", PartitionId: "p3", Prefixes: []string{"10.66.0.0/16"}},
	} {
		n.Type, n.ChildPrefixLengthIpv4 = apiv1.NetworkType_NETWORK_TYPE_SUPER, 26
		l.create(n)
	}
	l.create(&apiv1.Network{Id: "underlay", Type: apiv1.NetworkType_NETWORK_TYPE_UNDERLAY, PartitionId: "p1", Prefixes: []string{"10.255.0.0/24"}})
	tests := []struct {
		name, partition, parent string
		want                    string // the parent found, or "" for a refusal
		code                    codes.Code
	}{
		{"the partition's only one", "p1", "", "super", codes.OK},
		{"named", "p1", "super", "super", codes.OK},
		{"named among several", "p3", "super-b", "super-b", codes.OK},
		{"partition without one", "p2", "", "", codes.FailedPrecondition},
		{"partition with several", "p3", "", "", codes.FailedPrecondition},
		{"not a super network", "p1", "underlay", "", codes.FailedPrecondition},
		{"in another partition", "p1", "super-a", "", codes.FailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := l.ns.findParent(l.ctx, tt.partition, tt.parent)
			wantCode(t, err, tt.code)
			if p.GetId() != tt.want {
				t.Fatalf("parent %q, want %q", p.GetId(), tt.want)
			}
			c, err := l.ns.AllocateChild(l.ctx, ChildRequest{Partition: tt.partition, Parent: tt.parent, Project: project})
			wantCode(t, err, tt.code)
			if c.GetParentId() != tt.want {
				t.Fatalf("child of %q, want %q", c.GetParentId(), tt.want)
			}
		})
	}
	t.Run("unknown", func(t *testing.T) {
		for _, err := range []error{
			func() error { _, err := l.ns.findParent(l.ctx, "p1", "nope"); return err }(),
			func() error {
				_, err := l.ns.AllocateChild(l.ctx, ChildRequest{Partition: "p1", Parent: "nope", Project: project})
				return err
			}(),
		} {
			var ne *Error
			if !errors.As(err, &ne) || !ne.Read || ne.Network != "nope" || !errors.Is(err, pgx.ErrNoRows) {
				t.Fatalf("unknown parent: %v, want a failed read of network nope", err)
			}
		}
	})
}

// Deleting a child network gives its VRF id and its slot back to its
// parent; networks with IPs or children stay.
func TestDeleteChild(t *testing.T) {
	l := newLab(t)
	l.create(&apiv1.Network{Id: "super", Type: apiv1.NetworkType_NETWORK_TYPE_SUPER, PartitionId: "p1",
		Prefixes: []string{"10.64.0.0/24"}, ChildPrefixLengthIpv4: 26})
	slots := ipam.ChildPoolID(netip.MustParsePrefix("10.64.0.0/24"))
	c, err := l.ns.AllocateChild(l.ctx, ChildRequest{Partition: "p1", Project: project})
	if err != nil {
		t.Fatal(err)
	}
	ip, err := l.ns.AllocateIP(l.ctx, newIP(c.GetId()), netip.Addr{}, 0)
	if err != nil {
		t.Fatal(err)
	}
	if free := l.free(slots); free != 3 {
		t.Fatalf("%d slots free with one child, want 3", free)
	}
	_, err = l.ns.Delete(l.ctx, c.GetId())
	wantCode(t, err, codes.FailedPrecondition)
	_, err = l.ns.Delete(l.ctx, "super")
	wantCode(t, err, codes.FailedPrecondition)
	if _, err := l.ns.ReleaseIP(l.ctx, ip.GetIp(), ip.GetIp()); err != nil {
		t.Fatal(err)
	}
	out, err := l.ns.Delete(l.ctx, c.GetId())
	if err != nil || out.GetId() != c.GetId() {
		t.Fatalf("delete = %v, %v", out, err)
	}
	if free := l.free(slots); free != 4 {
		t.Fatalf("%d slots free after the delete, want 4", free)
	}
	if free := l.free(ipam.VRFPoolID); free != 1000 {
		t.Fatalf("%d VRF ids free after the delete, want 1000", free)
	}
	if n := l.count(`SELECT count(*) FROM pools WHERE id = $1`, ipam.IPPoolID(netip.MustParsePrefix(c.GetPrefixes()[0]))); n != 0 {
		t.Fatal("the child's address pool outlived it")
	}
	// The slot and the VRF id are handed out again.
	again, err := l.ns.AllocateChild(l.ctx, ChildRequest{Partition: "p1", Project: project})
	if err != nil || again.GetVrf() != c.GetVrf() || !slices.Equal(again.GetPrefixes(), c.GetPrefixes()) {
		t.Fatalf("child after the delete = %v, %v; want VRF %d and %v again", again, err, c.GetVrf(), c.GetPrefixes())
	}
}
