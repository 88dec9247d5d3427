package spec

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

func resolveAll(name string) (string, bool) {
	if strings.HasPrefix(name, "Eth") && !strings.HasPrefix(name, "Ethernet") {
		return "Ethernet" + strings.TrimPrefix(name, "Eth"), true
	}
	return name, strings.HasPrefix(name, "Ethernet")
}

func valid() *agentv1.SwitchDocument {
	return &agentv1.SwitchDocument{
		Name: "leaf01", Asn: 4200000011, RouterId: "10.0.0.11", Loopback: "10.0.0.11", PxeVlanId: 4000,
		Vrfs: []*agentv1.SwitchVrf{{Vni: 104002, VlanId: 1002, Cidrs: []string{"10.2.0.0/22"}}, {Vni: 104001, VlanId: 1001, Cidrs: []string{"10.1.0.0/22", "10.1.1.0/24", "2001:db8::/48", "10.0.0.0/8"}}},
		Ports: []*agentv1.SwitchPort{
			{Name: "Ethernet12", Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_TENANT, VrfVni: 104001},
			{Name: "Ethernet4", Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_TENANT, VrfVni: 104001},
			{Name: "Ethernet120", Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UPLINK},
			{Name: "Ethernet0", Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UNPROVISIONED, AdminState: agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_DOWN},
		},
	}
}

func TestBuild(t *testing.T) {
	s, err := Build(valid(), resolveAll)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range s.Ports {
		names = append(names, fmt.Sprintf("%s:%d:%v:%s", p.Name, p.MTU, p.AdminUp, p.VRF))
	}
	if want := []string{"Ethernet0:9000:false:", "Ethernet4:9000:true:Vrf104001", "Ethernet12:9000:true:Vrf104001", "Ethernet120:9216:true:"}; !slices.Equal(names, want) {
		t.Errorf("ports %v, want %v", names, want)
	}
	if s.VRFs[0].Name != "Vrf104001" || !slices.Equal(s.VRFs[0].Ports, []string{"Ethernet4", "Ethernet12"}) {
		t.Errorf("VRF %+v", s.VRFs[0])
	}
	if fmt.Sprint(s.VRFs[0].V4, s.VRFs[0].V6) != "[10.0.0.0/8] [2001:db8::/48]" {
		t.Errorf("compacted prefixes %v %v", s.VRFs[0].V4, s.VRFs[0].V6)
	}
	if g := s.Groups[GroupMachine]; g.MaximumPrefix != 24000 || g.Hold != 8 {
		t.Errorf("MACHINE defaults %+v", g)
	}
}

// TestBuildRefuses: document-wide faults refuse the whole document.
func TestBuildRefuses(t *testing.T) {
	tests := []struct {
		name   string
		change func(d *agentv1.SwitchDocument)
		err    string
	}{
		{"no switch part", nil, "no switch part"},
		{"no asn", func(d *agentv1.SwitchDocument) { d.Asn = 0 }, "asn"},
		{"router id v6", func(d *agentv1.SwitchDocument) { d.RouterId = "::1" }, "router_id"},
		{"pxe vlan in tenant range", func(d *agentv1.SwitchDocument) { d.PxeVlanId = 1500 }, "pxe_vlan_id"},
		{"vni zero", func(d *agentv1.SwitchDocument) { d.Vrfs[0].Vni = 0 }, "vrfs[0].vni"},
		{"vni too big", func(d *agentv1.SwitchDocument) { d.Vrfs[0].Vni = 1 << 24 }, "vrfs[0].vni"},
		{"vlan out of range", func(d *agentv1.SwitchDocument) { d.Vrfs[0].VlanId = 4000 }, "vrfs[0].vlan_id"},
		{"vlan twice", func(d *agentv1.SwitchDocument) { d.Vrfs[1].VlanId = 1002 }, "also VRF Vrf104002"},
		{"vni twice", func(d *agentv1.SwitchDocument) { d.Vrfs[1].Vni = 104002 }, "twice"},
		{"bad cidr", func(d *agentv1.SwitchDocument) { d.Vrfs[0].Cidrs = []string{"10.0.0.0/33"} }, "vrfs[0].cidrs"},
		{"unknown group", func(d *agentv1.SwitchDocument) { d.PeerGroups = []*agentv1.BgpPeerGroup{{Name: "SPINE"}} }, "peer_groups[0].name"},
		{"bad remote as", func(d *agentv1.SwitchDocument) {
			d.PeerGroups = []*agentv1.BgpPeerGroup{{Name: "FABRIC", RemoteAs: "spine"}}
		}, "remote_as"},
		{"hold below keepalives", func(d *agentv1.SwitchDocument) {
			d.PeerGroups = []*agentv1.BgpPeerGroup{{Name: "FABRIC", KeepaliveSeconds: 5, HoldSeconds: 6}}
		}, "hold time"},
		{"set src without v4 loopback", func(d *agentv1.SwitchDocument) { d.SetSourceLoopback, d.Loopback = true, "" }, "set_source_loopback"},
		{"host name with a newline", func(d *agentv1.SwitchDocument) { d.Name = "leaf01\nrouter bgp 1" }, "name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var d *agentv1.SwitchDocument
			if tt.change != nil {
				d = valid()
				tt.change(d)
			}
			_, err := Build(d, resolveAll)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("err %v, want %q", err, tt.err)
			}
		})
	}
}

// TestBuildBadPorts: a bad port is left out alone.
func TestBuildBadPorts(t *testing.T) {
	tests := []struct {
		name string
		port *agentv1.SwitchPort
		err  string
	}{
		{"unknown port", &agentv1.SwitchPort{Name: "xe-0/0/1", Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UNPROVISIONED}, "no such port"},
		{"no role", &agentv1.SwitchPort{Name: "Ethernet64"}, "role"},
		{"unknown vrf", &agentv1.SwitchPort{Name: "Ethernet64", Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_TENANT, VrfVni: 9}, "vrf_vni 9"},
		{"vrf on pxe port", &agentv1.SwitchPort{Name: "Ethernet64", Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UNPROVISIONED, VrfVni: 104001}, "only tenant ports"},
		{"mtu too big", &agentv1.SwitchPort{Name: "Ethernet64", Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UPLINK, Mtu: 9217}, "mtu"},
		{"bad filter", &agentv1.SwitchPort{Name: "Ethernet64", Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_FIREWALL,
			FirewallFilter: &agentv1.FirewallFilter{Cidrs: []string{"x"}}}, "firewall_filter.cidrs"},
		{"twice", &agentv1.SwitchPort{Name: "Ethernet0", Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UNPROVISIONED}, "more than once"},
		{"same sonic port", &agentv1.SwitchPort{Name: "Eth4", Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UNPROVISIONED}, "is SONiC port Ethernet4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := valid()
			d.Ports = append(d.Ports, tt.port)
			s, err := Build(d, resolveAll)
			if err != nil {
				t.Fatal(err)
			}
			if e := s.Bad[tt.port.Name]; e == nil || !strings.Contains(e.Error(), tt.err) {
				t.Errorf("bad %v, want %q for %s", s.Bad, tt.err, tt.port.Name)
			}
			for _, p := range s.Ports {
				if p.DocName == tt.port.Name {
					t.Errorf("bad port %s still managed", p.DocName)
				}
			}
			if len(s.Ports) < 2 {
				t.Errorf("the good ports went too: %v", s.Ports)
			}
		})
	}
}

func TestComparePorts(t *testing.T) {
	got := []string{"Ethernet120", "Ethernet4", "Ethernet0", "Ethernet12", "Eth1/10", "Eth1/2", "Ethernet004"}
	slices.SortFunc(got, ComparePorts)
	want := []string{"Eth1/2", "Eth1/10", "Ethernet0", "Ethernet4", "Ethernet004", "Ethernet12", "Ethernet120"}
	if !slices.Equal(got, want) {
		t.Errorf("%v, want %v", got, want)
	}
}

func TestParseVRFName(t *testing.T) {
	for name, want := range map[string]uint32{"Vrf104001": 104001, "Vrf0": 0, "Vrf": 0, "VrfOps": 0, "default": 0, "Vrf016": 0, "Vrf16777216": 0, "vrf5": 0} {
		if got, ok := ParseVRFName(name); got != want || ok != (want != 0) {
			t.Errorf("%s: %d %v, want %d", name, got, ok, want)
		}
	}
}
