package topo

import (
	"strings"
	"testing"
)

func TestLoadDefaultTopology(t *testing.T) {
	top, err := Load("../../topologies/mini.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if got := top.Nodes(KindMachine); strings.Join(got, ",") != "machine01,machine02" {
		t.Fatalf("machines = %v", got)
	}
	if got := top.Ifaces("machine01"); strings.Join(got, ",") != "eth0,eth1" {
		t.Fatalf("machine01 ifaces = %v", got)
	}
	m := top.Node("machine01")
	if m.Firmware != "uefi" || m.Memory != 1024 || m.UUID == "" || m.BMCUser != "admin" {
		t.Fatalf("machine01 defaults not applied: %+v", m)
	}
	// One BMC by DHCP, one at a fixed address: metal-bmc's union of
	// leases and its static list.
	if !top.LeasedBMC("machine01") || top.LeasedBMC("machine02") {
		t.Fatalf("machine01's BMC leased %v, machine02's %v; want leased and fixed", top.LeasedBMC("machine01"), top.LeasedBMC("machine02"))
	}
	// Both kinds of BMC: Redfish (the default) and IPMI.
	if b1, b2 := top.Node("machine01").BMC, top.Node("machine02").BMC; b1 != BMCRedfish || b2 != BMCIPMI {
		t.Fatalf("BMCs %s and %s, want redfish and ipmi", b1, b2)
	}
	if top.Mgmt.HostIPv4 != "172.30.0.1" || top.Mgmt.HostIPv6 != "fd00:172:30::1" {
		t.Fatalf("host addresses = %s %s", top.Mgmt.HostIPv4, top.Mgmt.HostIPv6)
	}
	// Stable across loads, different per node and interface.
	again, err := Load("../../topologies/mini.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if again.Node("machine01").UUID != m.UUID || again.MAC("machine01", "eth0") != top.MAC("machine01", "eth0") {
		t.Fatal("UUID or MAC not stable across loads")
	}
	seen := map[string]bool{}
	for _, n := range top.Nodes(KindMachine) {
		for _, i := range top.Ifaces(n) {
			mac := top.MAC(n, i)
			if seen[mac] || !strings.HasPrefix(mac, "52:54:00:") {
				t.Fatalf("MAC %s of %s:%s repeated or not QEMU's prefix", mac, n, i)
			}
			seen[mac] = true
		}
	}
	if top.Node("machine01").UUID == top.Node("machine02").UUID {
		t.Fatal("two machines with one UUID")
	}
}

const base = `
name: t
mgmt: {ipv4-subnet: 172.30.0.0/24}
partition:
  id: lab
  sizes: [{id: s1, cores: 1-8, memory: 1GiB-2GiB, storage: 1GiB-9GiB}]
  images: [{id: i, os: o, version: "1", file: f}]
  networks: [{id: n, type: external, prefixes: [10.2.0.0/24]}]
  tenant: t1
  project: p1
topology:
  nodes:
    central: {kind: central, mgmt-ipv4: 172.30.0.10}
    pixie: {kind: pixie, mgmt-ipv4: 172.30.0.11, pxe-ipv4: 10.1.0.1/24, dhcp4-range: 10.1.0.100-10.1.0.199}
    leaf01: {kind: leaf}
    m1: {kind: machine, bmc-ipv4: 172.30.0.101 EXTRA}
  links:
    - endpoints: ["pixie:pxe1", "leaf01:uplink"]
    - endpoints: ["m1:eth0", "leaf01:swp1"]
`

func TestParseRefusesBadTopologies(t *testing.T) {
	tests := []struct {
		name, from, to, want string
	}{
		{"valid", " EXTRA", "", ""},
		{"unknown field", " EXTRA", ", colour: red", "colour"},
		{"unknown kind", "kind: leaf}", "kind: switch}", `kind "switch"`},
		{"exit without a fabric", "leaf01: {kind: leaf}", "leaf01: {kind: leaf}\n    x1: {kind: exit}", "an exit needs a spine"},
		{"bmc outside mgmt", "bmc-ipv4: 172.30.0.101 EXTRA", "bmc-ipv4: 10.9.9.9", "not in the management subnet"},
		{"duplicate address", "bmc-ipv4: 172.30.0.101 EXTRA", "bmc-ipv4: 172.30.0.10", "already central's"},
		{"link to unknown node", `"m1:eth0", "leaf01:swp1"`, `"m9:eth0", "leaf01:swp1"`, `no node "m9"`},
		{"endpoint twice", `"m1:eth0", "leaf01:swp1"`, `"m1:eth0", "leaf01:uplink"`, "used by another link"},
		{"machine to pixie", `"m1:eth0", "leaf01:swp1"`, `"m1:eth0", "pixie:pxe2"`, "cannot be linked"},
		{"bad endpoint", `"m1:eth0", "leaf01:swp1"`, `"m1", "leaf01:swp1"`, "want node:iface"},
		{"bad firmware", " EXTRA", ", firmware: coreboot", `firmware "coreboot"`},
		{"bad uuid", " EXTRA", ", uuid: nope", `uuid "nope"`},
		{"two BMC users", "leaf01: {kind: leaf}", "leaf01: {kind: leaf}\n    m2: {kind: machine, bmc-ipv4: 172.30.0.102, bmc-user: root}", `bmc-user "root"`},
		{"bad mac", " EXTRA", ", macs: {eth0: zz}", `macs.eth0 "zz"`},
		{"small memory", " EXTRA", ", memory: 128", "at least 512 MiB"},
		{"bad disk size", " EXTRA", ", disk-size: lots", "disk-size"},
		{"long name", "name: t", "name: toolongname", "name \"toolongname\""},
		{"no pixie", "    pixie: {kind: pixie", "    pixie: {kind: central", "exactly one central and one pixie"},
		{"bad prefix", "[10.2.0.0/24]", "[10.2.0.0/99]", "prefixes[0]"},
		{"unknown BMC protocol", " EXTRA", ", bmc: amt", `bmc "amt": want redfish or ipmi`},
		{"IPMI BMC", " EXTRA", ", bmc: ipmi", ""},
		{"leased BMC without a pool", "bmc-ipv4: 172.30.0.101 EXTRA", "bmc-user: admin", "bmc-ipv4: required unless pixie serves the BMC network"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := strings.Replace(base, tc.from, tc.to, 1)
			_, err := Parse([]byte(strings.Replace(src, " EXTRA", "", 1)))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid topology refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"4GiB": 4 << 30, "512MiB": 512 << 20, "2G": 2e9, "100": 100} {
		if got, err := ParseBytes(in); err != nil || got != want {
			t.Errorf("ParseBytes(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1GiB", "GiB", "1.5GiB"} {
		if _, err := ParseBytes(in); err == nil {
			t.Errorf("ParseBytes(%q) accepted", in)
		}
	}
}

func TestFabric(t *testing.T) {
	top, err := Load("../../topologies/fabric.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !top.Fabric() {
		t.Fatal("fabric.yaml is no fabric")
	}
	if got, want := strings.Join(top.Routers(), ","), "exit01,leaf01,leaf02,spine01"; got != want {
		t.Fatalf("routers %s, want %s", got, want)
	}
	if p, ok := top.Peer("leaf01", "swp49"); !ok || p != (Endpoint{"spine01", "swp1"}) {
		t.Fatalf("peer of leaf01:swp49 = %v %v", p, ok)
	}
	for in, want := range map[string]string{"swp1": "Ethernet0", "swp2": "Ethernet4", "swp49": "Ethernet192"} {
		if got, ok := SONiCPort(in); !ok || got != want {
			t.Errorf("SONiCPort(%s) = %s %v, want %s", in, got, ok, want)
		}
	}
	for _, in := range []string{"swp0", "eth1", "swp", "swp1000"} {
		if _, ok := SONiCPort(in); ok {
			t.Errorf("SONiCPort(%s) accepted", in)
		}
	}
	mini, err := Load("../../topologies/mini.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if mini.Fabric() || len(mini.Routers()) != 0 {
		t.Fatal("mini.yaml is a fabric")
	}
}

const fabric = `
name: f
mgmt: {ipv4-subnet: 172.30.0.0/24}
partition:
  id: lab
  sizes: [{id: s1, cores: 1-8, memory: 1GiB-2GiB, storage: 1GiB-9GiB}]
  images: [{id: i, os: o, version: "1", file: f}]
  networks: [{id: n, type: external, prefixes: [10.2.0.0/24]}]
  tenant: t1
  project: p1
topology:
  nodes:
    central: {kind: central, mgmt-ipv4: 172.30.0.10}
    pixie: {kind: pixie, mgmt-ipv4: 172.30.0.11, pxe-ipv4: 10.1.0.1/24, dhcp4-range: 10.1.0.100-10.1.0.199}
    leaf01: {kind: leaf, mgmt-ipv4: 172.30.0.21}
    spine01: {kind: spine}
    m1: {kind: machine, bmc-ipv4: 172.30.0.101}
  links:
    - endpoints: ["leaf01:swp49", "spine01:swp1"]
    - endpoints: ["m1:eth0", "leaf01:swp1"]
`

func TestFabricRules(t *testing.T) {
	tests := []struct{ name, from, to, want string }{
		{"valid", "", "", ""},
		{"port not swpN", `"m1:eth0", "leaf01:swp1"`, `"m1:eth0", "leaf01:port1"`, "a router guest's ports are swp1"},
		{"pixie linked", `"m1:eth0", "leaf01:swp1"]`, `"m1:eth0", "leaf01:swp1"]` + "\n" + `    - endpoints: ["pixie:pxe1", "leaf01:swp2"]`, "pixie has no links"},
		{"leaf without mgmt", "leaf01: {kind: leaf, mgmt-ipv4: 172.30.0.21}", "leaf01: {kind: leaf}", "needs a management address"},
		{"leaf without uplink", `"leaf01:swp49", "spine01:swp1"`, `"m1:eth1", "leaf01:swp49"`, "needs a link to a spine"},
		{"machine to spine", `"m1:eth0", "leaf01:swp1"`, `"m1:eth0", "spine01:swp2"`, "cannot be linked"},
		{"bad external", "spine01: {kind: spine}", "spine01: {kind: spine, external: [x]}", `external[0] "x"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(strings.Replace(fabric, tc.from, tc.to, 1)))
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("valid fabric refused: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}

// TestUUIDLowerCase: a machine's UUID is kept in lower case, as its BMC
// and installer report it and as central's BMC intents take it.
func TestUUIDLowerCase(t *testing.T) {
	src := strings.Replace(base, " EXTRA", ", uuid: 5C1F7A52-3F9E-4BB1-9D55-0D7C2C1A0001", 1)
	top, err := Parse([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if got := top.Node("m1").UUID; got != "5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0001" {
		t.Fatalf("uuid %q", got)
	}
}

// TestLeasedBMCs: a machine without bmc-ipv4 gets its BMC's address from
// pixie's BMC pool, which lies in the management subnet and holds no
// fixed address.
func TestLeasedBMCs(t *testing.T) {
	const pool = "dhcp4-range: 10.1.0.100-10.1.0.199}"
	leased := strings.Replace(strings.Replace(base, "bmc-ipv4: 172.30.0.101 EXTRA", "bmc-user: admin", 1),
		pool, "dhcp4-range: 10.1.0.100-10.1.0.199, bmc-dhcp4-range: 172.30.0.150-172.30.0.199}", 1)
	top, err := Parse([]byte(leased))
	if err != nil {
		t.Fatal(err)
	}
	first, last, ok := top.BMCRange()
	if !ok || first.String() != "172.30.0.150" || last.String() != "172.30.0.199" || !top.LeasedBMC("m1") || top.LeasedBMC("pixie") {
		t.Fatalf("pool %s-%s (%v), m1 leased %v", first, last, ok, top.LeasedBMC("m1"))
	}
	for _, tc := range []struct{ name, from, to, want string }{
		{"pool outside mgmt", "172.30.0.150-172.30.0.199", "10.9.0.1-10.9.0.9", "not inside the management subnet"},
		{"pool upside down", "172.30.0.150-172.30.0.199", "172.30.0.199-172.30.0.150", "first not after last"},
		{"pool not a range", "172.30.0.150-172.30.0.199", "172.30.0.150", "want first-last"},
		{"fixed address in the pool", "mgmt-ipv4: 172.30.0.10}", "mgmt-ipv4: 172.30.0.160}", "lies in pixie's bmc-dhcp4-range"},
		{"IPMI BMC by DHCP", "bmc-user: admin", "bmc-user: admin, bmc: ipmi", "bmc ipmi: needs a bmc-ipv4"},
		{"the host's address in the pool", "172.30.0.150-172.30.0.199", "172.30.0.1-172.30.0.9", "holds the host's address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(strings.Replace(leased, tc.from, tc.to, 1)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one containing %q", err, tc.want)
			}
		})
	}
}
