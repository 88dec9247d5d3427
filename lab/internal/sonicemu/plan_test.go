package sonicemu

import (
	"context"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden plans")

type rows = map[string]map[string]string

// with is base plus more, more's rows replacing base's; a nil row deletes.
func with(base rows, more rows) rows {
	out := maps.Clone(base)
	for k, v := range more {
		if v == nil {
			delete(out, k)
			continue
		}
		out[k] = v
	}
	return out
}

// leaf is the base configuration the lab writes before metal-core runs
// (docs/network.md: the operator's part) plus ports as metal-core leaves
// them: an uplink, two machine ports in the PXE VLAN.
var leaf = rows{
	"DEVICE_METADATA|localhost":                 {"hostname": "leaf01", "docker_routing_config_mode": "split"},
	"PORT|Ethernet0":                            {"alias": "Eth1/1", "lanes": "0", "speed": "100000", "mtu": "9216", "admin_status": "up"},
	"PORT|Ethernet4":                            {"alias": "Eth2/1", "lanes": "4", "speed": "25000", "mtu": "9000", "admin_status": "up"},
	"PORT|Ethernet8":                            {"alias": "Eth3/1", "lanes": "8", "speed": "25000", "mtu": "9000", "admin_status": "up"},
	"LOOPBACK_INTERFACE|Loopback0":              {},
	"LOOPBACK_INTERFACE|Loopback0|10.0.0.11/32": {},
	"VXLAN_TUNNEL|vtep":                         {"src_ip": "10.0.0.11"},
	"VXLAN_EVPN_NVO|nvo":                        {"source_vtep": "vtep"},
	"VLAN|Vlan4000":                             {"vlanid": "4000", "dhcp_servers@": "10.255.0.2"},
	"VLAN_INTERFACE|Vlan4000":                   {},
	"VLAN_INTERFACE|Vlan4000|10.255.0.1/24":     {},
	"VXLAN_TUNNEL_MAP|vtep|map_104000_Vlan4000": {"vlan": "Vlan4000", "vni": "104000"},
	"INTERFACE|Ethernet0":                       {"ipv6_use_link_local_only": "enable"},
	"VLAN_MEMBER|Vlan4000|Ethernet4":            {"tagging_mode": "untagged"},
	"VLAN_MEMBER|Vlan4000|Ethernet8":            {"tagging_mode": "untagged"},
}

// vrf is a tenant VRF as metal-core writes it.
func vrf(vni, vid string) rows {
	return rows{
		"VRF|Vrf" + vni:                                    {"vni": vni, "fallback": "false"},
		"VLAN|Vlan" + vid:                                  {"vlanid": vid},
		"SUPPRESS_VLAN_NEIGH|Vlan" + vid:                   {"suppress": "on"},
		"VLAN_INTERFACE|Vlan" + vid:                        {"vrf_name": "Vrf" + vni},
		"VXLAN_TUNNEL_MAP|vtep|map_" + vni + "_Vlan" + vid: {"vlan": "Vlan" + vid, "vni": vni},
	}
}

func gone(r rows) rows {
	out := rows{}
	for k := range r {
		out[k] = nil
	}
	return out
}

// step is CONFIG_DB after a write; its plan is from the step before.
type step struct {
	name string
	rows rows
}

func TestPlanGolden(t *testing.T) {
	tenant := with(with(leaf, vrf("104001", "1001")), rows{
		"VLAN_MEMBER|Vlan4000|Ethernet4": nil,
		"INTERFACE|Ethernet4":            {"ipv6_use_link_local_only": "enable", "vrf_name": "Vrf104001"},
	})
	cases := []struct {
		name  string
		steps []step
	}{
		{"empty", []step{{"nothing", rows{}}}},
		{"base", []step{{"create", leaf}, {"again", leaf}}},
		{"tenant", []step{
			{"base", leaf},
			{"vrf", with(leaf, vrf("104001", "1001"))},
			{"port-into-vrf", tenant},
			{"again", tenant},
		}},
		{"change", []step{
			{"tenant", tenant},
			{"mtu-and-down", with(tenant, rows{"PORT|Ethernet4": {"alias": "Eth2/1", "mtu": "1500", "admin_status": "down"}})},
			{"second-vrf", with(with(tenant, vrf("104002", "1002")), rows{"PORT|Ethernet4": {"alias": "Eth2/1", "mtu": "1500", "admin_status": "down"}})},
			{"port-to-other-vrf", with(with(tenant, vrf("104002", "1002")), rows{"INTERFACE|Ethernet4": {"ipv6_use_link_local_only": "enable", "vrf_name": "Vrf104002"}})},
			{"tagged", with(tenant, rows{"VLAN_MEMBER|Vlan4000|Ethernet8": {"tagging_mode": "tagged"}})},
			{"address", with(tenant, rows{"INTERFACE|Ethernet4|192.0.2.1/30": {}, "LOOPBACK_INTERFACE|Loopback0|10.0.0.12/32": {}, "LOOPBACK_INTERFACE|Loopback0|10.0.0.11/32": nil})},
		}},
		{"remove", []step{
			{"tenant", tenant},
			{"port-back-to-pxe", with(leaf, vrf("104001", "1001"))},
			{"vrf-gone", leaf},
			{"vlan-id-reused", with(with(leaf, gone(vrf("104001", "1001"))), vrf("104009", "1001"))},
			{"all-gone", rows{"PORT|Ethernet0": {"mtu": "9216", "admin_status": "up"}}},
		}},
		{"resync", []step{
			// A full render from scratch of the tenant switch: what Sync
			// runs at start and every resync.
			{"from-scratch", tenant},
		}},
	}
	c, sep := startRedis(t)
	ctx := context.Background()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var got strings.Builder
			var prev State
			for _, s := range tc.steps {
				load(t, c, s.rows)
				cur, bad, err := Read(ctx, c, sep)
				if err != nil || len(bad) > 0 {
					t.Fatalf("%s: read: %v %v", s.name, err, bad)
				}
				plan := Plan(prev, cur)
				checkOrder(t, s.name, plan)
				got.WriteString("## " + s.name + "\n" + Format(plan))
				if again := Plan(cur, cur); len(again) != 0 {
					t.Errorf("%s: a plan to where it is is not empty:\n%s", s.name, Format(again))
				}
				prev = cur
			}
			path := filepath.Join("testdata", tc.name+".golden")
			if *update {
				if err := os.MkdirAll("testdata", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(got.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if got.String() != string(want) {
				t.Errorf("plan differs from %s:\n--- got\n%s--- want\n%s", path, got.String(), want)
			}
		})
	}
}

// checkOrder checks SONiC's dependency order on a plan: a device is made
// before anything is put into it and emptied before it is removed.
func checkOrder(t *testing.T, step string, plan []Cmd) {
	t.Helper()
	idx := func(pred func(Cmd) bool) []int {
		var out []int
		for i, c := range plan {
			if pred(c) {
				out = append(out, i)
			}
		}
		return out
	}
	has := func(c Cmd, words ...string) bool {
		s := " " + c.String() + " "
		for _, w := range words {
			if !strings.Contains(s, " "+w+" ") {
				return false
			}
		}
		return true
	}
	for j, c := range plan {
		args := c.Args
		switch {
		case has(c, "master") && strings.HasPrefix(args[len(args)-1], "Vrf"):
			vrf := args[len(args)-1]
			for _, i := range idx(func(d Cmd) bool { return has(d, "link", "add", vrf) }) {
				if i > j {
					t.Errorf("%s: %q before the VRF is made", step, c)
				}
			}
		case has(c, "link", "del") && strings.HasPrefix(args[len(args)-1], "Vrf"):
			vrf := args[len(args)-1]
			for _, i := range idx(func(d Cmd) bool { return has(d, "master", vrf) }) {
				if i > j {
					t.Errorf("%s: %q before %q: a VRF is removed with members", step, c, plan[i])
				}
			}
		case has(c, "type", "vxlan"):
			for _, i := range idx(func(d Cmd) bool { return has(d, "type", "bridge") && has(d, "add") }) {
				if i > j {
					t.Errorf("%s: %q before the bridge", step, c)
				}
			}
		}
	}
	// Every removal comes before every creation.
	lastDel, firstAdd := -1, len(plan)
	for i, c := range plan {
		if has(c, "del") || has(c, "nomaster") || has(c, "neigh_suppress", "off") {
			lastDel = i
		}
		if (has(c, "add") || has(c, "master") || has(c, "replace")) && firstAdd == len(plan) {
			firstAdd = i
		}
	}
	if lastDel > firstAdd {
		t.Errorf("%s: removal %q after creation %q", step, plan[lastDel], plan[firstAdd])
	}
}

func TestParseBadRows(t *testing.T) {
	tests := []struct {
		name string
		rows rows
		want string
	}{
		{"vlan name", rows{"VLAN|Vlanx": {"vlanid": "x"}}, "want VLAN|Vlan<id>"},
		{"vlan range", rows{"VLAN_MEMBER|Vlan5000|Ethernet0": {}}, "want VLAN_MEMBER"},
		{"prefix", rows{"INTERFACE|Ethernet0|10.0.0.1": {}}, "bad prefix"},
		{"svi name", rows{"VLAN_INTERFACE|Ethernet0": {}}, "bad VLAN name"},
		{"vni", rows{"VXLAN_TUNNEL_MAP|vtep|map_x": {"vlan": "Vlan10", "vni": "99999999"}}, "bad vlan"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, bad := Parse(with(tc.rows, rows{"PORT|Ethernet0": {"mtu": "9000", "admin_status": "up"}}), "|")
			if len(bad) != 1 || !strings.Contains(bad[0].Error(), tc.want) {
				t.Fatalf("errors %v, want one with %q", bad, tc.want)
			}
			// The bad row is left out; the others are kept.
			if s.Ports["Ethernet0"] != (Port{MTU: 9000, AdminUp: true}) {
				t.Errorf("good row lost: %+v", s.Ports)
			}
		})
	}
}

func TestVRFTable(t *testing.T) {
	tests := []struct {
		name string
		vrf  VRF
		want int
	}{
		{"Vrf104001", VRF{VNI: 104001}, 104001},
		{"Vrf104001", VRF{}, 104001},
		{"Vrfblue", VRF{}, VRFTable("Vrfblue", VRF{})},
	}
	for _, tc := range tests {
		if got := VRFTable(tc.name, tc.vrf); got != tc.want {
			t.Errorf("VRFTable(%s, %+v) = %d, want %d", tc.name, tc.vrf, got, tc.want)
		}
	}
	if n := VRFTable("Vrfblue", VRF{}); n < 100_000_000 || n >= 200_000_000 {
		t.Errorf("hashed table %d outside 1e8..2e8", n)
	}
}
