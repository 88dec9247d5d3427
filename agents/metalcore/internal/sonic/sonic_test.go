package sonic

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/metalfleet/metalfleet/agents/metalcore/internal/spec"
	"github.com/metalfleet/metalfleet/agents/metalcore/redistest"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

var update = flag.Bool("update", false, "rewrite the golden CONFIG_DB dumps under testdata")

// baseConfig is what the operator's base configuration puts into a leaf's
// CONFIG_DB before metal-core runs (metal-roles' configdb-base): device
// metadata, the ports, loopback, the VTEP and the PXE VLAN with its VNI.
func baseConfig(ports []string) map[string]map[string]string {
	rows := map[string]map[string]string{
		"DEVICE_METADATA|localhost":                 {"hostname": "leaf01", "hwsku": "Accton-AS7726-32X", "platform": "x86_64-accton_as7726_32x-r0", "type": "LeafRouter", "docker_routing_config_mode": "split"},
		"LOOPBACK_INTERFACE|Loopback0":              {"NULL": "NULL"},
		"LOOPBACK_INTERFACE|Loopback0|10.0.0.11/32": {"NULL": "NULL"},
		"MGMT_INTERFACE|eth0|192.168.101.11/24":     {"gwaddr": "192.168.101.1"},
		"VXLAN_TUNNEL|vtep":                         {"src_ip": "10.0.0.11"},
		"VXLAN_EVPN_NVO|nvo":                        {"source_vtep": "vtep"},
		"VLAN|Vlan4000":                             {"vlanid": "4000", "dhcp_servers@": "10.255.0.2"},
		"VLAN_INTERFACE|Vlan4000":                   {"NULL": "NULL"},
		"VLAN_INTERFACE|Vlan4000|10.255.0.1/24":     {"NULL": "NULL"},
		"VXLAN_TUNNEL_MAP|vtep|map_104000_Vlan4000": {"vlan": "Vlan4000", "vni": "104000"},
		"INTERFACE|Ethernet120":                     {"ipv6_use_link_local_only": "enable"},
	}
	for _, p := range ports {
		var n int
		if _, err := fmt.Sscanf(p, "Ethernet%d", &n); err != nil {
			panic(p)
		}
		rows["PORT|"+p] = map[string]string{
			"alias": fmt.Sprintf("Eth%d/1(Port%d)", n/4+1, n/4+1), "lanes": fmt.Sprintf("%d,%d,%d,%d", n, n+1, n+2, n+3),
			"speed": "25000", "fec": "rs", "mtu": "9100", "admin_status": "down",
		}
	}
	return rows
}

// smallPorts are the ports of the golden switch: eight machine ports
// Ethernet0-Ethernet28 and the uplinks Ethernet120 and Ethernet124.
func smallPorts() []string { return append(ports(0, 28), "Ethernet120", "Ethernet124") }

func open(t testing.TB, srv *redistest.Server, opts ...Option) *Switch {
	t.Helper()
	cfg, err := LoadDBConfig(srv.DBConfig)
	if err != nil {
		t.Fatal(err)
	}
	s, err := Open(cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// doc builds switch documents for the tests.
type doc struct{ d *agentv1.SwitchDocument }

func newDoc() *doc {
	d := &agentv1.SwitchDocument{Name: "leaf01", Asn: 4200000011, RouterId: "10.0.0.11", Loopback: "10.0.0.11", PxeVlanId: 4000}
	for _, u := range []string{"Ethernet120", "Ethernet124"} {
		d.Ports = append(d.Ports, &agentv1.SwitchPort{Name: u, Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UPLINK})
	}
	return &doc{d: d}
}

func (d *doc) empty() *doc { d.d.Ports = nil; return d }

func (d *doc) pxe(ports ...string) *doc {
	for _, p := range ports {
		d.d.Ports = append(d.d.Ports, &agentv1.SwitchPort{Name: p, Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UNPROVISIONED})
	}
	return d
}

func (d *doc) vrf(vni, vlan uint32, cidrs ...string) *doc {
	d.d.Vrfs = append(d.d.Vrfs, &agentv1.SwitchVrf{Vni: vni, VlanId: vlan, Cidrs: cidrs})
	return d
}

func (d *doc) tenant(vni uint32, ports ...string) *doc {
	for _, p := range ports {
		d.d.Ports = append(d.d.Ports, &agentv1.SwitchPort{Name: p, Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_TENANT, VrfVni: vni})
	}
	return d
}

func (d *doc) firewall(port string, vnis []uint32, cidrs ...string) *doc {
	d.d.Ports = append(d.d.Ports, &agentv1.SwitchPort{Name: port, Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_FIREWALL,
		FirewallFilter: &agentv1.FirewallFilter{Vnis: vnis, Cidrs: cidrs}})
	return d
}

func (d *doc) down(port string) *doc {
	for _, p := range d.d.Ports {
		if p.Name == port {
			p.AdminState = agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_DOWN
		}
	}
	return d
}

// build resolves the document against the switch's PORT table.
func build(t testing.TB, s *Switch, d *agentv1.SwitchDocument) *spec.Spec {
	t.Helper()
	n, err := s.Naming(context.Background(), SchemaDefault)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spec.Build(d, n.Resolve)
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

func ports(from, to int) []string {
	var out []string
	for i := from; i <= to; i += 4 {
		out = append(out, fmt.Sprintf("Ethernet%d", i))
	}
	return out
}

// golden compares got with testdata/name, or rewrites it with -update.
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run with -update after checking):\n%s", path, lineDiff(string(want), got))
	}
}

// lineDiff lists the lines only one side has.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for _, l := range w {
		if !slices.Contains(g, l) {
			fmt.Fprintf(&b, "- %s\n", l)
		}
	}
	for _, l := range g {
		if !slices.Contains(w, l) {
			fmt.Fprintf(&b, "+ %s\n", l)
		}
	}
	return b.String()
}

// TestGoldenConfigDB applies sequences of documents to a switch with the
// base configuration and compares the whole CONFIG_DB after each step
// with a golden dump; every step is applied twice, and the second apply
// must write nothing.
func TestGoldenConfigDB(t *testing.T) {
	tests := []struct {
		name  string
		steps []*doc
	}{
		{"empty", []*doc{newDoc().empty()}},
		{"pxe", []*doc{newDoc().pxe(ports(0, 28)...).down("Ethernet28")}},
		{"two-vrfs", []*doc{newDoc().pxe(ports(12, 28)...).
			vrf(104001, 1001, "10.1.0.0/22", "2001:db8:1::/48").vrf(104002, 1002, "10.2.0.0/22").
			tenant(104001, "Ethernet0", "Ethernet4").tenant(104002, "Ethernet8")}},
		{"firewall", []*doc{newDoc().pxe(ports(0, 8)...).vrf(104001, 1001, "10.1.0.0/22").
			firewall("Ethernet12", []uint32{104001, 104000}, "10.1.0.0/22", "185.1.2.0/24", "2001:db8:1::/48")}},
		{"moves", []*doc{
			newDoc().pxe("Ethernet0", "Ethernet4").vrf(104001, 1001, "10.1.0.0/22").vrf(104002, 1002, "10.2.0.0/22"),
			newDoc().pxe("Ethernet4").vrf(104001, 1001, "10.1.0.0/22").vrf(104002, 1002, "10.2.0.0/22").tenant(104001, "Ethernet0"),
			newDoc().pxe("Ethernet4").vrf(104001, 1001, "10.1.0.0/22").vrf(104002, 1002, "10.2.0.0/22").tenant(104002, "Ethernet0"),
			newDoc().pxe("Ethernet0", "Ethernet4").vrf(104001, 1001, "10.1.0.0/22").vrf(104002, 1002, "10.2.0.0/22"),
		}},
		{"vrf-removed", []*doc{
			newDoc().pxe("Ethernet8").vrf(104001, 1001, "10.1.0.0/22").vrf(104002, 1002, "10.2.0.0/22").
				tenant(104001, "Ethernet0").tenant(104002, "Ethernet4"),
			newDoc().pxe("Ethernet4", "Ethernet8").vrf(104001, 1001, "10.1.0.0/22").tenant(104001, "Ethernet0"),
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.Start(t)
			srv.Load(t, ConfigDB, baseConfig(smallPorts()))
			s := open(t, srv)
			cdb := srv.Client(t, ConfigDB)
			ctx := context.Background()
			for i, d := range tt.steps {
				sp := build(t, s, d.d)
				if _, err := s.Apply(ctx, sp); err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				golden(t, fmt.Sprintf("%s/%d.golden", tt.name, i), redistest.Dump(t, cdb))
				before := redistest.WriteCommands(t, cdb)
				res, err := s.Apply(ctx, sp)
				if err != nil {
					t.Fatalf("step %d again: %v", i, err)
				}
				if res.Writes != 0 || redistest.WriteCommands(t, cdb) != before {
					t.Errorf("step %d: second apply wrote %d commands (server counted %d), want none", i, res.Writes, redistest.WriteCommands(t, cdb)-before)
				}
			}
		})
	}
}

// recorder is a go-redis hook that records the write commands sent.
type recorder struct {
	mu   sync.Mutex
	cmds []string
}

func (r *recorder) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *recorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.record(cmd)
		return next(ctx, cmd)
	}
}

func (r *recorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			r.record(c)
		}
		return next(ctx, cmds)
	}
}

func (r *recorder) record(c redis.Cmder) {
	switch c.Name() {
	case "hset", "del", "hdel":
	default:
		return
	}
	parts := make([]string, 0, len(c.Args()))
	for _, a := range c.Args() {
		parts = append(parts, fmt.Sprint(a))
	}
	r.mu.Lock()
	r.cmds = append(r.cmds, strings.Join(parts, " "))
	r.mu.Unlock()
}

func (r *recorder) take() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.cmds
	r.cmds = nil
	return out
}

// index is the position of the first command that starts with prefix.
func index(t *testing.T, cmds []string, prefix string) int {
	t.Helper()
	for i, c := range cmds {
		if strings.HasPrefix(c, prefix) {
			return i
		}
	}
	t.Fatalf("no command %q in:\n%s", prefix, strings.Join(cmds, "\n"))
	return -1
}

// TestOrder checks the order of the writes: VRFs are created in SONiC's
// order and removed in reverse, and a port leaves the PXE VLAN or its VRF
// before it joins another.
func TestOrder(t *testing.T) {
	srv := redistest.Start(t)
	srv.Load(t, ConfigDB, baseConfig(smallPorts()))
	rec := &recorder{}
	s := open(t, srv, WithHook(rec))
	ctx := context.Background()
	apply := func(d *doc) []string {
		t.Helper()
		rec.take()
		if _, err := s.Apply(ctx, build(t, s, d.d)); err != nil {
			t.Fatal(err)
		}
		return rec.take()
	}
	before := func(cmds []string, a, b string) {
		t.Helper()
		if ia, ib := index(t, cmds, a), index(t, cmds, b); ia > ib {
			t.Errorf("%q (#%d) came after %q (#%d):\n%s", a, ia, b, ib, strings.Join(cmds, "\n"))
		}
	}
	apply(newDoc().pxe("Ethernet0"))

	// PXE → VRF a: the VRF is made in order, the port leaves the PXE VLAN
	// before it is routed in the VRF.
	cmds := apply(newDoc().vrf(104001, 1001, "10.1.0.0/22").tenant(104001, "Ethernet0"))
	for _, pair := range [][2]string{
		{"hset VRF|Vrf104001", "hset VLAN|Vlan1001"},
		{"hset VLAN|Vlan1001", "hset SUPPRESS_VLAN_NEIGH|Vlan1001"},
		{"hset SUPPRESS_VLAN_NEIGH|Vlan1001", "hset VLAN_INTERFACE|Vlan1001"},
		{"hset VLAN_INTERFACE|Vlan1001", "hset VXLAN_TUNNEL_MAP|vtep|map_104001_Vlan1001"},
		{"del VLAN_MEMBER|Vlan4000|Ethernet0", "hset INTERFACE|Ethernet0"},
		{"hset VXLAN_TUNNEL_MAP|vtep|map_104001_Vlan1001", "hset INTERFACE|Ethernet0"},
	} {
		before(cmds, pair[0], pair[1])
	}

	// VRF a → VRF b: un-routed first, then routed in b; a is removed in
	// reverse order after the port left it.
	cmds = apply(newDoc().vrf(104002, 1002, "10.2.0.0/22").tenant(104002, "Ethernet0"))
	for _, pair := range [][2]string{
		{"del INTERFACE|Ethernet0", "hset INTERFACE|Ethernet0 ipv6_use_link_local_only enable vrf_name Vrf104002"},
		{"del INTERFACE|Ethernet0", "del VRF|Vrf104001"},
		{"del VXLAN_TUNNEL_MAP|vtep|map_104001_Vlan1001", "del VLAN_INTERFACE|Vlan1001"},
		{"del VLAN_INTERFACE|Vlan1001", "del SUPPRESS_VLAN_NEIGH|Vlan1001"},
		{"del SUPPRESS_VLAN_NEIGH|Vlan1001", "del VLAN|Vlan1001"},
		{"del VLAN|Vlan1001", "del VRF|Vrf104001"},
		{"hset VRF|Vrf104002", "hset INTERFACE|Ethernet0"},
	} {
		before(cmds, pair[0], pair[1])
	}

	// VRF b → PXE: un-routed before it joins the PXE VLAN.
	cmds = apply(newDoc().pxe("Ethernet0"))
	before(cmds, "del INTERFACE|Ethernet0", "hset VLAN_MEMBER|Vlan4000|Ethernet0")
	before(cmds, "del INTERFACE|Ethernet0", "del VRF|Vrf104002")
}

// TestReuseOfVLAN hands the VLAN of a removed VRF to a new one in the same
// document: the removal must come first, or it would take the new VRF's
// rows with it.
func TestReuseOfVLAN(t *testing.T) {
	srv := redistest.Start(t)
	srv.Load(t, ConfigDB, baseConfig(smallPorts()))
	s := open(t, srv)
	ctx := context.Background()
	if _, err := s.Apply(ctx, build(t, s, newDoc().vrf(104001, 1001).tenant(104001, "Ethernet0").d)); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Apply(ctx, build(t, s, newDoc().vrf(104002, 1001).tenant(104002, "Ethernet0").d)); err != nil {
		t.Fatal(err)
	}
	dump := redistest.Dump(t, srv.Client(t, ConfigDB))
	for _, want := range []string{
		"VLAN_INTERFACE|Vlan1001 vrf_name=Vrf104002", "VRF|Vrf104002 fallback=false vni=104002",
		"VXLAN_TUNNEL_MAP|vtep|map_104002_Vlan1001 vlan=Vlan1001 vni=104002", "VLAN|Vlan1001 vlanid=1001",
		"INTERFACE|Ethernet0 ipv6_use_link_local_only=enable vrf_name=Vrf104002",
	} {
		if !strings.Contains(dump, want+"\n") {
			t.Errorf("missing %q in\n%s", want, dump)
		}
	}
	for _, gone := range []string{"Vrf104001", "map_104001"} {
		if strings.Contains(dump, gone) {
			t.Errorf("%s still in\n%s", gone, dump)
		}
	}
}

// TestCleanup removes what no document wants: a tenant VRF with its VLAN,
// VNI map, ARP suppression, a stray member and a port still routed in it,
// and a VLAN a kept VRF no longer uses; it keeps VRFs it did not make.
func TestCleanup(t *testing.T) {
	srv := redistest.Start(t)
	base := baseConfig(smallPorts())
	for k, v := range map[string]map[string]string{
		"VRF|Vrf999":                             {"vni": "999", "fallback": "false"},
		"VLAN|Vlan1500":                          {"vlanid": "1500"},
		"SUPPRESS_VLAN_NEIGH|Vlan1500":           {"suppress": "on"},
		"VLAN_INTERFACE|Vlan1500":                {"vrf_name": "Vrf999"},
		"VLAN_MEMBER|Vlan1500|Ethernet28":        {"tagging_mode": "tagged"},
		"VXLAN_TUNNEL_MAP|vtep|map_999_Vlan1500": {"vlan": "Vlan1500", "vni": "999"},
		"INTERFACE|Ethernet24":                   {"vrf_name": "Vrf999", "ipv6_use_link_local_only": "enable"},
		"INTERFACE|Ethernet24|10.9.9.1/31":       {"NULL": "NULL"},
		// Vrf104001 moved from VLAN 1700 to 1001.
		"VRF|Vrf104001":                             {"vni": "104001", "fallback": "false"},
		"VLAN|Vlan1700":                             {"vlanid": "1700"},
		"SUPPRESS_VLAN_NEIGH|Vlan1700":              {"suppress": "on"},
		"VLAN_INTERFACE|Vlan1700":                   {"vrf_name": "Vrf104001"},
		"VXLAN_TUNNEL_MAP|vtep|map_104001_Vlan1700": {"vlan": "Vlan1700", "vni": "104001"},
		// Not ours: another VRF naming, and SONiC's default.
		"VRF|VrfOps":  {"NULL": "NULL"},
		"VRF|default": {"NULL": "NULL"},
	} {
		base[k] = v
	}
	srv.Load(t, ConfigDB, base)
	s := open(t, srv)
	if _, err := s.Apply(context.Background(), build(t, s, newDoc().vrf(104001, 1001).d)); err != nil {
		t.Fatal(err)
	}
	dump := redistest.Dump(t, srv.Client(t, ConfigDB))
	for _, gone := range []string{"Vrf999", "Vlan1500", "Vlan1700", "map_999", "INTERFACE|Ethernet24"} {
		if strings.Contains(dump, gone) {
			t.Errorf("%s still in\n%s", gone, dump)
		}
	}
	for _, kept := range []string{"VRF|VrfOps", "VRF|default", "VRF|Vrf104001", "VLAN|Vlan1001", "map_104000_Vlan4000", "VLAN|Vlan4000"} {
		if !strings.Contains(dump, kept) {
			t.Errorf("%s gone from\n%s", kept, dump)
		}
	}
}

// TestBadPortBlocksNothing: a port the switch does not have, a port whose
// row is not a hash and a port naming an unknown VRF each fail alone.
func TestBadPortBlocksNothing(t *testing.T) {
	srv := redistest.Start(t)
	srv.Load(t, ConfigDB, baseConfig(smallPorts()))
	ctx := context.Background()
	// Someone wrote INTERFACE|Ethernet4 as a string: every HSET on it fails.
	if err := srv.Client(t, ConfigDB).Set(ctx, "INTERFACE|Ethernet4", "garbage", 0).Err(); err != nil {
		t.Fatal(err)
	}
	s := open(t, srv)
	d := newDoc().vrf(104001, 1001).tenant(104001, "Ethernet0", "Ethernet4").pxe("Ethernet8", "Ethernet999").tenant(7, "Ethernet12")
	n, err := s.Naming(ctx, SchemaDefault)
	if err != nil {
		t.Fatal(err)
	}
	sp, err := spec.Build(d.d, n.Resolve)
	if err != nil {
		t.Fatal(err)
	}
	if len(sp.Bad) != 2 || sp.Bad["Ethernet999"] == nil || sp.Bad["Ethernet12"] == nil {
		t.Errorf("bad ports %v, want Ethernet999 and Ethernet12", sp.Bad)
	}
	_, err = s.Apply(ctx, sp)
	if err == nil || !strings.Contains(err.Error(), "port Ethernet4") || !strings.Contains(err.Error(), "WRONGTYPE") {
		t.Fatalf("apply: %v, want the WRONGTYPE of Ethernet4", err)
	}
	dump := redistest.Dump(t, srv.Client(t, ConfigDB))
	for _, want := range []string{
		"INTERFACE|Ethernet0 ipv6_use_link_local_only=enable vrf_name=Vrf104001",
		"VLAN_MEMBER|Vlan4000|Ethernet8 tagging_mode=untagged",
		"PORT|Ethernet0 ", "VRF|Vrf104001 ",
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("missing %q:\n%s", want, dump)
		}
	}
}

// asicSwitch seeds ASIC_DB and COUNTERS_DB as a switch with a SAI has
// them: Ethernet0 holds a router interface.
func asicSwitch(t *testing.T, srv *redistest.Server) {
	srv.Load(t, CountersDB, map[string]map[string]string{
		portNameMap: {"Ethernet0": "oid:0x1000000000001", "Ethernet4": "oid:0x1000000000002"},
	})
	srv.Load(t, AsicDB, map[string]map[string]string{
		asicRIF + "oid:0x6000000000a01":                          {asicRIFPort: "oid:0x1000000000001", "SAI_ROUTER_INTERFACE_ATTR_TYPE": "SAI_ROUTER_INTERFACE_TYPE_PORT"},
		"ASIC_STATE:SAI_OBJECT_TYPE_SWITCH:oid:0x21000000000000": {"NULL": "NULL"},
	})
}

// TestASICWait: moving a routed port into the PXE VLAN waits until the
// ASIC dropped its router interface; one the ASIC keeps fails alone.
func TestASICWait(t *testing.T) {
	for _, released := range []bool{true, false} {
		t.Run(fmt.Sprintf("released=%v", released), func(t *testing.T) {
			srv := redistest.Start(t)
			srv.Load(t, ConfigDB, baseConfig(smallPorts()))
			ctx := context.Background()
			s := open(t, srv, WithASICTimeout(time.Second))
			if _, err := s.Apply(ctx, build(t, s, newDoc().vrf(104001, 1001).tenant(104001, "Ethernet0", "Ethernet4").d)); err != nil {
				t.Fatal(err)
			}
			asicSwitch(t, srv)
			if released {
				go func() {
					time.Sleep(300 * time.Millisecond)
					srv.Client(t, AsicDB).Del(ctx, asicRIF+"oid:0x6000000000a01")
				}()
			}
			start := time.Now()
			_, err := s.Apply(ctx, build(t, s, newDoc().vrf(104001, 1001).pxe("Ethernet0", "Ethernet4").d))
			dump := redistest.Dump(t, srv.Client(t, ConfigDB))
			if !strings.Contains(dump, "VLAN_MEMBER|Vlan4000|Ethernet4 ") {
				t.Errorf("Ethernet4 (released at once) not in the PXE VLAN:\n%s", dump)
			}
			in0 := strings.Contains(dump, "VLAN_MEMBER|Vlan4000|Ethernet0 ")
			if released {
				if err != nil || !in0 || time.Since(start) < 300*time.Millisecond {
					t.Errorf("err %v, Ethernet0 in PXE VLAN %v after %s: want it joined after the ASIC let go", err, in0, time.Since(start))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "port Ethernet0: the ASIC still holds") || in0 {
				t.Errorf("err %v, Ethernet0 in PXE VLAN %v: want it failed alone", err, in0)
			}
		})
	}
}

// TestFacts reads ports, link states and LLDP neighbours under each naming
// schema.
func TestFacts(t *testing.T) {
	srv := redistest.Start(t)
	srv.Load(t, ConfigDB, baseConfig(ports(0, 4)))
	srv.Load(t, ApplDB, map[string]map[string]string{
		"PORT_TABLE:Ethernet0":       {"oper_status": "up", "admin_status": "up"},
		"LLDP_ENTRY_TABLE:Ethernet0": {"lldp_rem_sys_name": "machine-1", "lldp_rem_port_id": "3c:ec:ef:00:00:01", "lldp_rem_chassis_id": "3c:ec:ef:00:00:00", "lldp_rem_port_desc": "eth0", "lldp_rem_port_id_subtype": "3"},
	})
	srv.Load(t, StateDB, map[string]map[string]string{"PORT_TABLE|Ethernet4": {"oper_status": "down"}})
	s := open(t, srv)
	ctx := context.Background()
	dev, err := s.Device(ctx)
	if err != nil || dev.Hostname != "leaf01" || dev.ManagementAddress.String() != "192.168.101.11" {
		t.Errorf("device %+v, %v", dev, err)
	}
	tests := []struct {
		schema      Schema
		name, ident string
	}{
		{SchemaDefault, "Ethernet0", "Eth1/1(Port1)"},
		{SchemaSwap, "Eth1/1(Port1)", "Ethernet0"},
		{SchemaName, "Ethernet0", "Ethernet0"},
		{SchemaAlias, "Eth1/1(Port1)", "Eth1/1(Port1)"},
	}
	for _, tt := range tests {
		t.Run(string(tt.schema), func(t *testing.T) {
			got, n, err := s.Ports(ctx, tt.schema)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 2 {
				t.Fatalf("%d ports, want 2", len(got))
			}
			p := got[0]
			if p.Name != tt.name || p.Identifier != tt.ident || p.SonicName != "Ethernet0" || p.Alias != "Eth1/1(Port1)" ||
				p.SpeedMbps != 25000 || p.Lanes != "0,1,2,3" || p.Mtu != 9100 || p.OperState != agentv1.SwitchOperState_SWITCH_OPER_STATE_UP ||
				p.AdminState != agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_DOWN {
				t.Errorf("port %v", p)
			}
			if len(p.Neighbours) != 1 || p.Neighbours[0].SystemName != "machine-1" || p.Neighbours[0].PortId != "3c:ec:ef:00:00:01" ||
				p.Neighbours[0].ChassisId != "3c:ec:ef:00:00:00" || p.Neighbours[0].PortDescription != "eth0" {
				t.Errorf("neighbours %v", p.Neighbours)
			}
			if got[1].OperState != agentv1.SwitchOperState_SWITCH_OPER_STATE_DOWN || len(got[1].Neighbours) != 0 {
				t.Errorf("Ethernet4 %v: want down from STATE_DB, no neighbour", got[1])
			}
			if sn, ok := n.Resolve(tt.name); !ok || sn != "Ethernet0" || n.Name("Ethernet0") != tt.name {
				t.Errorf("naming: %q → %q %v, back %q", tt.name, sn, ok, n.Name("Ethernet0"))
			}
		})
	}
}

// TestLoadDBConfig reads SONiC's file and refuses one without CONFIG_DB.
func TestLoadDBConfig(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, json, err string
	}{
		{"sonic", `{"INSTANCES": {"redis": {"hostname": "127.0.0.1", "port": 6379, "unix_socket_path": "/var/run/redis/redis.sock"}},
			"DATABASES": {"APPL_DB": {"id": 0, "separator": ":", "instance": "redis"}, "CONFIG_DB": {"id": 4, "separator": "|", "instance": "redis"}}, "VERSION": "1.0"}`, ""},
		{"tcp only", `{"INSTANCES": {"redis": {"hostname": "127.0.0.1", "port": 6379}},
			"DATABASES": {"APPL_DB": {"id": 0, "separator": ":", "instance": "redis"}, "CONFIG_DB": {"id": 4, "separator": "|", "instance": "redis"}}}`, ""},
		{"no config db", `{"INSTANCES": {"redis": {"unix_socket_path": "/x"}}, "DATABASES": {"APPL_DB": {"id": 0, "instance": "redis"}}}`, "no database CONFIG_DB"},
		{"no instance", `{"INSTANCES": {}, "DATABASES": {"APPL_DB": {"id": 0, "instance": "redis"}, "CONFIG_DB": {"id": 4, "instance": "redis"}}}`, "no instance"},
		{"not json", `{`, "unexpected end"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, fmt.Sprintf("%d.json", i))
			if err := os.WriteFile(path, []byte(tt.json), 0o644); err != nil {
				t.Fatal(err)
			}
			c, err := LoadDBConfig(path)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err %v, want %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			o, err := c.options(ConfigDB)
			if err != nil || o.DB != 4 || c.separator(ConfigDB) != "|" || c.separator(ApplDB) != ":" {
				t.Errorf("options %+v, %v", o, err)
			}
		})
	}
}
