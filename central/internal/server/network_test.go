package server_test

import (
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

const (
	typeSuper    = apiv1.NetworkType_NETWORK_TYPE_SUPER
	typeChild    = apiv1.NetworkType_NETWORK_TYPE_CHILD
	typeExternal = apiv1.NetworkType_NETWORK_TYPE_EXTERNAL
	typeUnderlay = apiv1.NetworkType_NETWORK_TYPE_UNDERLAY
)

// dualStackSuper is the partition's super network: children get a /22 and a /64.
func dualStackSuper(id, partition string) *apiv1.Network {
	return &apiv1.Network{
		Id: id, Name: "tenant super", Type: typeSuper, PartitionId: partition,
		Prefixes:              []string{"10.128.0.0/14", "fd00:10::/48"},
		ChildPrefixLengthIpv4: 22, ChildPrefixLengthIpv6: 64,
	}
}

func wantUsage(t testing.TB, n *apiv1.Network, v4avail, v4used, v6avail, v6used string) {
	t.Helper()
	u := n.GetUsage()
	got := []string{u.GetIpv4Available(), u.GetIpv4Used(), u.GetIpv6Available(), u.GetIpv6Used()}
	if want := []string{v4avail, v4used, v6avail, v6used}; !slices.Equal(got, want) {
		t.Fatalf("usage of %s = %v, want %v (v4 avail/used, v6 avail/used)", n.GetId(), got, want)
	}
}

func TestNetworksAndIPs(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	admin := e.as(t, e.admin)
	owner := e.as(t, e.p1Owner)
	nets, ips := e.api.Network, e.api.IP
	get := func(id string) *apiv1.Network {
		t.Helper()
		return ok(nets.Get(admin, &apiv1.NetworkServiceGetRequest{Id: id}))(t).GetNetwork()
	}
	for _, id := range []string{"fra1", "ams1", "empty"} {
		ok(e.api.Partition.Create(admin, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: id}}))(t)
	}

	// Create: a dual-stack super network, an IPv4-only one elsewhere, an
	// external /29 and an underlay.
	super := ok(nets.Create(admin, &apiv1.NetworkServiceCreateRequest{Network: dualStackSuper("super-fra1", "fra1")}))(t).GetNetwork()
	wantGeneration(t, super, 1)
	ok(nets.Create(admin, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
		Id: "super-ams1", Type: typeSuper, PartitionId: "ams1", Prefixes: []string{"10.64.0.0/16"}, ChildPrefixLengthIpv4: 24,
	}}))(t)
	ok(nets.Create(admin, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
		Id: "internet", Type: typeExternal, Prefixes: []string{"203.0.113.0/29"}, Vrf: 104,
	}}))(t)
	ok(nets.Create(admin, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
		Id: "underlay-fra1", Type: typeUnderlay, PartitionId: "fra1", Prefixes: []string{"10.0.0.0/24"},
	}}))(t)
	wantUsage(t, get("super-fra1"), "256", "0", "65536", "0")
	wantUsage(t, get("internet"), "6", "0", "0", "0")

	// Allocate: a child gets a /22, a /64 and the first VRF.
	child := ok(nets.Allocate(owner, &apiv1.NetworkServiceAllocateRequest{
		ProjectId: e.p1, PartitionId: "fra1", Name: "web", Labels: map[string]string{"app": "web"},
	}))(t).GetNetwork()
	if child.GetType() != typeChild || child.GetProjectId() != e.p1 || child.GetParentId() != "super-fra1" || child.GetPartitionId() != "fra1" ||
		!slices.Equal(child.GetPrefixes(), []string{"10.128.0.0/22", "fd00:10::/64"}) || child.GetVrf() != 10000 {
		t.Fatalf("Allocate = %v", child)
	}
	wantUsage(t, get(child.GetId()), "1022", "0", "18446744073709551615", "0")
	wantUsage(t, get("super-fra1"), "255", "1", "65535", "1")
	v4only := ok(nets.Allocate(owner, &apiv1.NetworkServiceAllocateRequest{
		ProjectId: e.p1, PartitionId: "fra1", ParentId: "super-fra1", AddressFamilies: []string{"ipv4"},
	}))(t).GetNetwork()
	if !slices.Equal(v4only.GetPrefixes(), []string{"10.128.4.0/22"}) || v4only.GetVrf() != 10001 {
		t.Fatalf("Allocate(ipv4) = %v", v4only)
	}
	p2net := ok(nets.Allocate(e.as(t, e.p2Editor), &apiv1.NetworkServiceAllocateRequest{ProjectId: e.p2, PartitionId: "ams1"}))(t).GetNetwork()
	if !slices.Equal(p2net.GetPrefixes(), []string{"10.64.0.0/24"}) {
		t.Fatalf("Allocate(ams1) = %v", p2net)
	}

	// List with filters; callers only see their projects' children.
	listIDs := func(c *caller, req *apiv1.NetworkServiceListRequest) []string {
		t.Helper()
		var out []string
		for _, n := range ok(nets.List(e.as(t, c), req))(t).GetNetworks() {
			out = append(out, n.GetId())
		}
		slices.Sort(out)
		return out
	}
	for _, tt := range []struct {
		c    *caller
		req  *apiv1.NetworkServiceListRequest
		want []string
	}{
		{e.admin, &apiv1.NetworkServiceListRequest{}, sorted("super-fra1", "super-ams1", "internet", "underlay-fra1", child.GetId(), v4only.GetId(), p2net.GetId())},
		{e.admin, &apiv1.NetworkServiceListRequest{Type: typeChild}, sorted(child.GetId(), v4only.GetId(), p2net.GetId())},
		{e.admin, &apiv1.NetworkServiceListRequest{PartitionId: "ams1"}, sorted("super-ams1", p2net.GetId())},
		{e.admin, &apiv1.NetworkServiceListRequest{ProjectId: e.p1}, sorted(child.GetId(), v4only.GetId())},
		{e.p1Viewer, &apiv1.NetworkServiceListRequest{Type: typeChild}, sorted(child.GetId(), v4only.GetId())},
		{e.p2Editor, &apiv1.NetworkServiceListRequest{Type: typeChild}, sorted(p2net.GetId())},
		{e.p2Editor, &apiv1.NetworkServiceListRequest{ProjectId: e.p1}, nil},
		{e.p2Editor, &apiv1.NetworkServiceListRequest{}, sorted("super-fra1", "super-ams1", "internet", "underlay-fra1", p2net.GetId())},
	} {
		if got := listIDs(tt.c, tt.req); !slices.Equal(got, tt.want) {
			t.Errorf("List(%v) as %s = %v, want %v", tt.req, tt.c.name, got, tt.want)
		}
	}

	// Update changes name, description and labels only.
	upd := ok(nets.Update(owner, &apiv1.NetworkServiceUpdateRequest{Id: child.GetId(), Name: "web-v2", Description: "d", Labels: map[string]string{"x": "y"}}))(t).GetNetwork()
	wantGeneration(t, upd, 2)
	if upd.GetName() != "web-v2" || upd.GetLabels()["x"] != "y" || upd.GetVrf() != child.GetVrf() || !slices.Equal(upd.GetPrefixes(), child.GetPrefixes()) {
		t.Fatalf("Update = %v", upd)
	}

	// IPs: next free, by family, specific, IPv6 spelled oddly.
	alloc := func(req *apiv1.IPServiceAllocateRequest) *apiv1.IP {
		t.Helper()
		return ok(ips.Allocate(owner, req))(t).GetIp()
	}
	in := func(network string) *apiv1.IPServiceAllocateRequest {
		return &apiv1.IPServiceAllocateRequest{ProjectId: e.p1, NetworkId: network}
	}
	if got := alloc(in(child.GetId())); got.GetIp() != "10.128.0.1" || got.GetType() != apiv1.IPType_IP_TYPE_EPHEMERAL || got.GetProjectId() != e.p1 || got.GetNetworkId() != child.GetId() {
		t.Fatalf("Allocate = %v", got)
	}
	if got := alloc(in(child.GetId())).GetIp(); got != "10.128.0.2" {
		t.Fatalf("second Allocate = %s", got)
	}
	v6 := in(child.GetId())
	v6.AddressFamily = "ipv6"
	if got := alloc(v6).GetIp(); got != "fd00:10::1" {
		t.Fatalf("Allocate(ipv6) = %s", got)
	}
	specific := in(child.GetId())
	specific.Ip, specific.Type, specific.Name = "10.128.0.100", apiv1.IPType_IP_TYPE_STATIC, "vip"
	if got := alloc(specific); got.GetIp() != "10.128.0.100" || got.GetType() != apiv1.IPType_IP_TYPE_STATIC || got.GetName() != "vip" {
		t.Fatalf("Allocate(specific) = %v", got)
	}
	odd := in(child.GetId())
	odd.Ip = "FD00:10:0:0:0:0:0:AB"
	if got := alloc(odd).GetIp(); got != "fd00:10::ab" {
		t.Fatalf("Allocate(%s) = %s, want the canonical fd00:10::ab", odd.Ip, got)
	}
	for _, spelling := range []string{"fd00:10::ab", "fd00:0010:0000:0000:0000:0000:0000:00ab", "FD00:10::AB"} {
		if got := ok(ips.Get(e.as(t, e.p1Viewer), &apiv1.IPServiceGetRequest{Ip: spelling}))(t).GetIp(); got.GetIp() != "fd00:10::ab" {
			t.Fatalf("Get(%s) = %v", spelling, got)
		}
	}
	wantUsage(t, get(child.GetId()), "1019", "3", "18446744073709551613", "2")

	// External networks are shared: any project may take addresses, until the /29 runs out.
	var external []string
	for i := 0; i < 6; i++ {
		c, project := e.p1Owner, e.p1
		if i%2 == 1 {
			c, project = e.p2Editor, e.p2
		}
		ip := ok(ips.Allocate(e.as(t, c), &apiv1.IPServiceAllocateRequest{ProjectId: project, NetworkId: "internet"}))(t).GetIp()
		external = append(external, ip.GetIp())
	}
	if want := []string{"203.0.113.1", "203.0.113.2", "203.0.113.3", "203.0.113.4", "203.0.113.5", "203.0.113.6"}; !slices.Equal(external, want) {
		t.Fatalf("external IPs = %v, want %v", external, want)
	}
	wantUsage(t, get("internet"), "0", "6", "0", "0")

	// List with filters and visibility.
	ipList := func(c *caller, req *apiv1.IPServiceListRequest) []string {
		t.Helper()
		var out []string
		for _, ip := range ok(ips.List(e.as(t, c), req))(t).GetIps() {
			out = append(out, ip.GetIp())
		}
		slices.Sort(out)
		return out
	}
	for _, tt := range []struct {
		c    *caller
		req  *apiv1.IPServiceListRequest
		want int
	}{
		{e.admin, &apiv1.IPServiceListRequest{}, 11},
		{e.admin, &apiv1.IPServiceListRequest{NetworkId: "internet"}, 6},
		{e.admin, &apiv1.IPServiceListRequest{ProjectId: e.p2}, 3},
		{e.p1Viewer, &apiv1.IPServiceListRequest{}, 8},
		{e.t1Viewer, &apiv1.IPServiceListRequest{NetworkId: child.GetId()}, 5},
		{e.p2Editor, &apiv1.IPServiceListRequest{}, 3},
		{e.p2Editor, &apiv1.IPServiceListRequest{NetworkId: child.GetId()}, 0},
	} {
		if got := ipList(tt.c, tt.req); len(got) != tt.want {
			t.Errorf("IP List(%v) as %s = %v, want %d", tt.req, tt.c.name, got, tt.want)
		}
	}

	// IP Update.
	ipUpd := ok(ips.Update(owner, &apiv1.IPServiceUpdateRequest{Ip: "fd00:0010::ab", Name: "six", Type: apiv1.IPType_IP_TYPE_STATIC, Labels: map[string]string{"k": "v"}}))(t).GetIp()
	wantGeneration(t, ipUpd, 2)
	if ipUpd.GetName() != "six" || ipUpd.GetType() != apiv1.IPType_IP_TYPE_STATIC || ipUpd.GetLabels()["k"] != "v" {
		t.Fatalf("IP Update = %v", ipUpd)
	}
	// Type unspecified keeps the type.
	if got := ok(ips.Update(owner, &apiv1.IPServiceUpdateRequest{Ip: "fd00:10::ab", Name: "six"}))(t).GetIp(); got.GetType() != apiv1.IPType_IP_TYPE_STATIC {
		t.Fatalf("IP Update without type changed it: %v", got)
	}

	missing := "00000000-0000-0000-0000-000000000000"
	netReq := func(f func(*apiv1.Network)) *apiv1.NetworkServiceCreateRequest {
		n := &apiv1.Network{Id: "new", Type: typeExternal, Prefixes: []string{"198.51.100.0/24"}}
		f(n)
		return &apiv1.NetworkServiceCreateRequest{Network: n}
	}
	ipReq := func(f func(*apiv1.IPServiceAllocateRequest)) *apiv1.IPServiceAllocateRequest {
		r := in(child.GetId())
		f(r)
		return r
	}
	e.rejectAll(t, e.admin, []reject{
		{name: "create nil", field: "network", call: call(nets.Create, &apiv1.NetworkServiceCreateRequest{})},
		{name: "create bad id", field: "network.id", call: call(nets.Create, netReq(func(n *apiv1.Network) { n.Id = "New Net" }))},
		{name: "create no type", field: "network.type", call: call(nets.Create, netReq(func(n *apiv1.Network) { n.Type = 0 }))},
		{name: "create child", field: "network.type", call: call(nets.Create, netReq(func(n *apiv1.Network) { n.Type = typeChild }))},
		{name: "create with project", field: "network.project_id", call: call(nets.Create, netReq(func(n *apiv1.Network) { n.ProjectId = e.p1 }))},
		{name: "create no prefixes", field: "network.prefixes", call: call(nets.Create, netReq(func(n *apiv1.Network) { n.Prefixes = nil }))},
		{name: "create host bits", field: "network.prefixes[0]", call: call(nets.Create, netReq(func(n *apiv1.Network) { n.Prefixes = []string{"198.51.100.1/24"} }))},
		{name: "create not a prefix", field: "network.prefixes[1]", call: call(nets.Create, netReq(func(n *apiv1.Network) { n.Prefixes = append(n.Prefixes, "198.51.101.0") }))},
		{name: "create self-overlap", field: "network.prefixes[1]", call: call(nets.Create, netReq(func(n *apiv1.Network) { n.Prefixes = append(n.Prefixes, "198.51.100.128/25") }))},
		{name: "create overlaps super", code: codes.AlreadyExists, call: call(nets.Create, netReq(func(n *apiv1.Network) { n.Prefixes = []string{"10.130.0.0/16"} }))},
		{name: "create overlaps external", code: codes.AlreadyExists, call: call(nets.Create, netReq(func(n *apiv1.Network) { n.Prefixes = []string{"203.0.113.0/24"} }))},
		{name: "create overlaps v6", code: codes.AlreadyExists, call: call(nets.Create, netReq(func(n *apiv1.Network) { n.Prefixes = []string{"fd00::/16"} }))},
		{name: "create duplicate id", code: codes.AlreadyExists, call: call(nets.Create, netReq(func(n *apiv1.Network) { n.Id = "internet" }))},
		{name: "create super without partition", field: "network.partition_id", call: call(nets.Create, &apiv1.NetworkServiceCreateRequest{Network: func() *apiv1.Network {
			n := dualStackSuper("s2", "")
			n.Prefixes = []string{"172.16.0.0/16"}
			n.ChildPrefixLengthIpv6 = 0
			return n
		}()})},
		{name: "create super without v6 child length", field: "network.child_prefix_length_ipv6", call: call(nets.Create, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
			Id: "s2", Type: typeSuper, PartitionId: "empty", Prefixes: []string{"fd01::/48"},
		}})},
		{name: "create super child length too short", field: "network.child_prefix_length_ipv4", call: call(nets.Create, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
			Id: "s2", Type: typeSuper, PartitionId: "empty", Prefixes: []string{"172.16.0.0/16"}, ChildPrefixLengthIpv4: 12,
		}})},
		{name: "create super child length for missing family", field: "network.child_prefix_length_ipv6", call: call(nets.Create, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
			Id: "s2", Type: typeSuper, PartitionId: "empty", Prefixes: []string{"172.16.0.0/16"}, ChildPrefixLengthIpv4: 24, ChildPrefixLengthIpv6: 64,
		}})},
		{name: "create super with vrf", field: "network.vrf", call: call(nets.Create, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
			Id: "s2", Type: typeSuper, PartitionId: "empty", Prefixes: []string{"172.16.0.0/16"}, ChildPrefixLengthIpv4: 24, Vrf: 5,
		}})},
		{name: "create external with child length", field: "network.child_prefix_length_ipv4", call: call(nets.Create, netReq(func(n *apiv1.Network) { n.ChildPrefixLengthIpv4 = 28 }))},
		{name: "create vrf in child range", field: "network.vrf", call: call(nets.Create, netReq(func(n *apiv1.Network) { n.Vrf = 10005 }))},
		{name: "create duplicate vrf", code: codes.AlreadyExists, call: call(nets.Create, netReq(func(n *apiv1.Network) { n.Vrf = 104 }))},
		{name: "create unknown partition", code: codes.FailedPrecondition, call: call(nets.Create, netReq(func(n *apiv1.Network) { n.PartitionId = "nowhere" }))},
		{name: "allocate unknown project", code: codes.NotFound, call: call(nets.Allocate, &apiv1.NetworkServiceAllocateRequest{ProjectId: missing, PartitionId: "fra1"})},
		{name: "allocate no project", field: "project_id", call: call(nets.Allocate, &apiv1.NetworkServiceAllocateRequest{PartitionId: "fra1"})},
		{name: "allocate no partition", field: "partition_id", call: call(nets.Allocate, &apiv1.NetworkServiceAllocateRequest{ProjectId: e.p1})},
		{name: "allocate bad family", field: "address_families[1]", call: call(nets.Allocate, &apiv1.NetworkServiceAllocateRequest{ProjectId: e.p1, PartitionId: "fra1", AddressFamilies: []string{"ipv4", "ipx"}})},
		{name: "allocate partition without super", code: codes.FailedPrecondition, call: call(nets.Allocate, &apiv1.NetworkServiceAllocateRequest{ProjectId: e.p1, PartitionId: "empty"})},
		{name: "allocate unknown parent", code: codes.NotFound, call: call(nets.Allocate, &apiv1.NetworkServiceAllocateRequest{ProjectId: e.p1, PartitionId: "fra1", ParentId: "nope"})},
		{name: "allocate parent not super", code: codes.FailedPrecondition, call: call(nets.Allocate, &apiv1.NetworkServiceAllocateRequest{ProjectId: e.p1, PartitionId: "fra1", ParentId: "underlay-fra1"})},
		{name: "allocate parent in other partition", code: codes.FailedPrecondition, call: call(nets.Allocate, &apiv1.NetworkServiceAllocateRequest{ProjectId: e.p1, PartitionId: "fra1", ParentId: "super-ams1"})},
		{name: "allocate missing family", code: codes.FailedPrecondition, call: call(nets.Allocate, &apiv1.NetworkServiceAllocateRequest{ProjectId: e.p1, PartitionId: "ams1", AddressFamilies: []string{"ipv6"}})},
		{name: "get missing", code: codes.NotFound, call: call(nets.Get, &apiv1.NetworkServiceGetRequest{Id: "nope"})},
		{name: "update missing", code: codes.NotFound, call: call(nets.Update, &apiv1.NetworkServiceUpdateRequest{Id: "nope"})},
		{name: "update long name", field: "name", call: call(nets.Update, &apiv1.NetworkServiceUpdateRequest{Id: child.GetId(), Name: strings.Repeat("n", 129)})},
		{name: "delete missing", code: codes.NotFound, call: call(nets.Delete, &apiv1.NetworkServiceDeleteRequest{Id: "nope"})},
		{name: "delete with ips", code: codes.FailedPrecondition, call: call(nets.Delete, &apiv1.NetworkServiceDeleteRequest{Id: child.GetId()})},
		{name: "delete external with ips", code: codes.FailedPrecondition, call: call(nets.Delete, &apiv1.NetworkServiceDeleteRequest{Id: "internet"})},
		{name: "delete super with children", code: codes.FailedPrecondition, call: call(nets.Delete, &apiv1.NetworkServiceDeleteRequest{Id: "super-fra1"})},
		{name: "delete project with networks", code: codes.FailedPrecondition, call: call(e.api.Project.Delete, &apiv1.ProjectServiceDeleteRequest{Id: e.p1})},
		{name: "ip taken", code: codes.AlreadyExists, call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.Ip = "10.128.0.100" }))},
		{name: "ip taken v6 spelled differently", code: codes.AlreadyExists, call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.Ip = "fd00:10:0::ab" }))},
		{name: "ip outside prefix", code: codes.InvalidArgument, call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.Ip = "10.128.4.1" }))},
		{name: "ip network address", code: codes.InvalidArgument, call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.Ip = "10.128.0.0" }))},
		{name: "ip broadcast address", code: codes.InvalidArgument, call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.Ip = "10.128.3.255" }))},
		{name: "ip not an address", field: "ip", call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.Ip = "10.128.0.300" }))},
		{name: "ip bad family", field: "address_family", call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.AddressFamily = "ipx" }))},
		{name: "ip bad type", field: "type", call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.Type = 7 }))},
		{name: "ip no network", field: "network_id", call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.NetworkId = "" }))},
		{name: "ip unknown network", code: codes.NotFound, call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.NetworkId = "nope" }))},
		{name: "ip from super network", code: codes.FailedPrecondition, call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.NetworkId = "super-fra1" }))},
		{name: "ip from underlay", code: codes.FailedPrecondition, call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.NetworkId = "underlay-fra1" }))},
		{name: "ip from another project's child", code: codes.NotFound, call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.ProjectId = e.p2 }))},
		{name: "ip family the network lacks", code: codes.FailedPrecondition, call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.NetworkId = v4only.GetId(); r.AddressFamily = "ipv6" }))},
		{name: "ip external exhausted", code: codes.ResourceExhausted, call: call(ips.Allocate, ipReq(func(r *apiv1.IPServiceAllocateRequest) { r.NetworkId = "internet" }))},
		{name: "ip get missing", code: codes.NotFound, call: call(ips.Get, &apiv1.IPServiceGetRequest{Ip: "10.128.0.99"})},
		{name: "ip get empty", field: "ip", call: call(ips.Get, &apiv1.IPServiceGetRequest{})},
		{name: "ip update missing", code: codes.NotFound, call: call(ips.Update, &apiv1.IPServiceUpdateRequest{Ip: "10.128.0.99"})},
		{name: "ip update bad type", field: "type", call: call(ips.Update, &apiv1.IPServiceUpdateRequest{Ip: "10.128.0.1", Type: 9})},
		{name: "ip release missing", code: codes.NotFound, call: call(ips.Release, &apiv1.IPServiceReleaseRequest{Ip: "fd00:10::99"})},
	})

	// Exhaustion is reported with the right code even to the next caller, for both families.
	_, err := ips.Allocate(e.as(t, e.p2Editor), &apiv1.IPServiceAllocateRequest{ProjectId: e.p2, NetworkId: "internet"})
	wantCode(t, err, codes.ResourceExhausted)
	if !strings.Contains(status.Convert(err).Message(), "IPv4") {
		t.Errorf("exhaustion message %q does not name the family", status.Convert(err).Message())
	}

	// Release: the address comes back and is handed out first.
	rel := ok(ips.Release(owner, &apiv1.IPServiceReleaseRequest{Ip: "203.0.113.3"}))(t).GetIp()
	if rel.GetIp() != "203.0.113.3" || rel.GetProjectId() != e.p1 {
		t.Fatalf("Release = %v", rel)
	}
	_, err = ips.Get(admin, &apiv1.IPServiceGetRequest{Ip: "203.0.113.3"})
	wantCode(t, err, codes.NotFound)
	_, err = ips.Release(owner, &apiv1.IPServiceReleaseRequest{Ip: "203.0.113.3"})
	wantCode(t, err, codes.NotFound)
	if got := ok(ips.Allocate(owner, &apiv1.IPServiceAllocateRequest{ProjectId: e.p1, NetworkId: "internet"}))(t).GetIp().GetIp(); got != "203.0.113.3" {
		t.Fatalf("Allocate after release = %s, want the released 203.0.113.3", got)
	}
	// Odd IPv6 spelling releases too.
	ok(ips.Release(owner, &apiv1.IPServiceReleaseRequest{Ip: "FD00:0010:0000::00AB"}))(t)

	// An attached IP cannot be released (machines attach IPs; simulate one).
	e.exec(t, `UPDATE ips SET machine_id = 'm1' WHERE ip = '10.128.0.100'`)
	_, err = ips.Release(owner, &apiv1.IPServiceReleaseRequest{Ip: "10.128.0.100"})
	wantCode(t, err, codes.FailedPrecondition)
	e.exec(t, `UPDATE ips SET machine_id = NULL WHERE ip = '10.128.0.100'`)

	// Delete: release every IP, then the child goes and frees its prefixes and VRF.
	for _, ip := range ok(ips.List(admin, &apiv1.IPServiceListRequest{}))(t).GetIps() {
		ok(ips.Release(admin, &apiv1.IPServiceReleaseRequest{Ip: ip.GetIp()}))(t)
	}
	del := ok(nets.Delete(owner, &apiv1.NetworkServiceDeleteRequest{Id: child.GetId()}))(t).GetNetwork()
	if del.GetId() != child.GetId() {
		t.Fatalf("Delete = %v", del)
	}
	_, err = nets.Get(admin, &apiv1.NetworkServiceGetRequest{Id: child.GetId()})
	wantCode(t, err, codes.NotFound)
	wantUsage(t, get("super-fra1"), "255", "1", "65536", "0")
	again := ok(nets.Allocate(owner, &apiv1.NetworkServiceAllocateRequest{ProjectId: e.p1, PartitionId: "fra1"}))(t).GetNetwork()
	if !slices.Equal(again.GetPrefixes(), child.GetPrefixes()) || again.GetVrf() != child.GetVrf() {
		t.Fatalf("re-Allocate = %v %d, want the freed %v %d", again.GetPrefixes(), again.GetVrf(), child.GetPrefixes(), child.GetVrf())
	}
	// The new child's address pool is fresh.
	if got := alloc(in(again.GetId())).GetIp(); got != "10.128.0.1" {
		t.Fatalf("first IP of the re-allocated child = %s", got)
	}
	ok(ips.Release(owner, &apiv1.IPServiceReleaseRequest{Ip: "10.128.0.1"}))(t)

	// Without children the super network goes, and its prefixes can be used again.
	for _, id := range []string{again.GetId(), v4only.GetId()} {
		ok(nets.Delete(owner, &apiv1.NetworkServiceDeleteRequest{Id: id}))(t)
	}
	ok(nets.Delete(admin, &apiv1.NetworkServiceDeleteRequest{Id: "super-fra1"}))(t)
	ok(nets.Delete(admin, &apiv1.NetworkServiceDeleteRequest{Id: "internet"}))(t)
	ok(nets.Create(admin, &apiv1.NetworkServiceCreateRequest{Network: dualStackSuper("super-fra1-v2", "fra1")}))(t)
	ok(nets.Create(admin, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{Id: "internet", Type: typeExternal, Prefixes: []string{"203.0.113.0/24"}, Vrf: 104}}))(t)
	if n := e.count(t, `SELECT count(*) FROM pools WHERE id LIKE 'ip:10.128.%' OR id LIKE 'ip:fd00:10:%'`); n != 0 {
		t.Fatalf("%d IP pools of deleted children left behind", n)
	}
	// Now the project can go once its last network is gone.
	ok(nets.Delete(e.as(t, e.p2Editor), &apiv1.NetworkServiceDeleteRequest{Id: p2net.GetId()}))(t)
	ok(e.api.Project.Delete(admin, &apiv1.ProjectServiceDeleteRequest{Id: e.p2}))(t)
}
