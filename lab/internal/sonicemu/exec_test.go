package sonicemu

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"testing"
)

// netns makes a network namespace for the test, with the ports (veth
// pairs: ports[0]↔ports[1], …) in it, and removes it at the end.
func netns(t *testing.T, ports ...string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("no ip (iproute2)")
	}
	ns := fmt.Sprintf("semu%d", os.Getpid())
	sh(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	for i := 0; i+1 < len(ports); i += 2 {
		sh(t, "ip", "-n", ns, "link", "add", ports[i], "type", "veth", "peer", "name", ports[i+1])
	}
	return ns
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
}

// link is what `ip -j addr show` says of a device.
type link struct {
	IfName   string   `json:"ifname"`
	MTU      int      `json:"mtu"`
	Flags    []string `json:"flags"`
	Master   string   `json:"master"`
	AddrInfo []struct {
		Local     string `json:"local"`
		Prefixlen int    `json:"prefixlen"`
	} `json:"addr_info"`
	LinkInfo struct {
		Kind string `json:"info_kind"`
		Data struct {
			Table int `json:"table"`
			ID    int `json:"id"`
		} `json:"info_data"`
	} `json:"linkinfo"`
}

func links(t *testing.T, ns string) map[string]link {
	t.Helper()
	out, err := exec.Command("ip", "-n", ns, "-d", "-j", "addr", "show").Output()
	if err != nil {
		t.Fatalf("ip addr show: %v", err)
	}
	var ls []link
	if err := json.Unmarshal(out, &ls); err != nil {
		t.Fatalf("ip -j: %v", err)
	}
	m := map[string]link{}
	for _, l := range ls {
		m[l.IfName] = l
	}
	return m
}

func (l link) addrs() []string {
	var out []string
	for _, a := range l.AddrInfo {
		if a.Local != "" && !(len(a.Local) > 4 && a.Local[:5] == "fe80:") {
			out = append(out, fmt.Sprintf("%s/%d", a.Local, a.Prefixlen))
		}
	}
	slices.Sort(out)
	return out
}

func (l link) up() bool { return slices.Contains(l.Flags, "UP") }

// TestExecutorHost runs plans for real in a namespace with what every
// kernel has: veth ports, MTU, admin state, addresses (routed ports in
// the default VRF). The rest is TestExecutorLeaf.
func TestExecutorHost(t *testing.T) {
	ns := netns(t, "Ethernet0", "Ethernet4")
	ctx := context.Background()
	x := &Executor{Netns: ns}
	a, _ := Parse(rows{
		"PORT|Ethernet0":                     {"mtu": "9000", "admin_status": "up"},
		"PORT|Ethernet4":                     {"mtu": "1500", "admin_status": "down"},
		"INTERFACE|Ethernet0":                {"ipv6_use_link_local_only": "enable"},
		"INTERFACE|Ethernet0|192.0.2.1/24":   {},
		"INTERFACE|Ethernet0|2001:db8::1/64": {},
	}, "|")
	b, _ := Parse(rows{
		"PORT|Ethernet0":                   {"mtu": "9000", "admin_status": "up"},
		"PORT|Ethernet4":                   {"mtu": "9216", "admin_status": "up"},
		"INTERFACE|Ethernet0":              {"ipv6_use_link_local_only": "enable"},
		"INTERFACE|Ethernet0|192.0.2.2/24": {},
	}, "|")
	steps := []struct {
		name       string
		plan       []Cmd
		e0, e4     bool // admin up
		e0mtu, e4m int
		e0addrs    []string
	}{
		{"create", Plan(State{}, a), true, false, 9000, 1500, []string{"192.0.2.1/24", "2001:db8::1/64"}},
		{"create again", Plan(State{}, a), true, false, 9000, 1500, []string{"192.0.2.1/24", "2001:db8::1/64"}},
		{"change", Plan(a, b), true, true, 9000, 9216, []string{"192.0.2.2/24"}},
		// The same change again: the deletes find nothing to delete.
		{"change again", Plan(a, b), true, true, 9000, 9216, []string{"192.0.2.2/24"}},
		{"remove", Plan(b, State{}), true, true, 9000, 9216, nil},
	}
	for _, s := range steps {
		if err := x.Apply(ctx, s.plan); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		l := links(t, ns)
		e0, e4 := l["Ethernet0"], l["Ethernet4"]
		if e0.up() != s.e0 || e4.up() != s.e4 || e0.MTU != s.e0mtu || e4.MTU != s.e4m {
			t.Errorf("%s: Ethernet0 up=%v mtu=%d, Ethernet4 up=%v mtu=%d", s.name, e0.up(), e0.MTU, e4.up(), e4.MTU)
		}
		if got := e0.addrs(); !slices.Equal(got, s.e0addrs) {
			t.Errorf("%s: Ethernet0 addresses %v, want %v", s.name, got, s.e0addrs)
		}
	}
	// A command that fails for a reason it does not tolerate is reported
	// and does not stop the rest.
	err := x.Apply(ctx, []Cmd{
		{Args: []string{"ip", "link", "set", "dev", "Ethernet99", "up"}},
		{Args: []string{"ip", "link", "set", "dev", "Ethernet4", "mtu", "1280"}},
	})
	if err == nil {
		t.Fatal("a missing port was not reported")
	}
	if l := links(t, ns); l["Ethernet4"].MTU != 1280 {
		t.Errorf("the command after the failed one did not run")
	}
}

// TestExecutorLeaf renders a whole leaf (VRF, VLAN-aware bridge, SVIs,
// VXLAN, loopback) and moves a port from the PXE VLAN into a VRF and back.
// It needs what the host kernel here lacks (vrf, 8021q, vlan_filtering,
// dummy); it runs inside the router guest (docs/lab.md).
func TestExecutorLeaf(t *testing.T) {
	ns := netns(t, "Ethernet0", "spine0", "Ethernet4", "machine0", "Ethernet8", "machine1")
	for _, probe := range [][]string{
		{"ip", "-n", ns, "link", "add", "probe0", "type", "vrf", "table", "9"},
		{"ip", "-n", ns, "link", "add", "probe1", "type", "dummy"},
		{"ip", "-n", ns, "link", "add", "probe2", "type", "bridge", "vlan_filtering", "1"},
	} {
		if out, err := exec.Command(probe[0], probe[1:]...).CombinedOutput(); err != nil {
			t.Skipf("this kernel cannot %v (%s): vrf, dummy, 802.1Q and vlan filtering need the router guest's kernel (docs/lab.md, machine-facts.md §3)", probe[3:], out)
		}
	}
	ctx := context.Background()
	x := &Executor{Netns: ns}
	tenant := with(with(leaf, vrf("104001", "1001")), rows{
		"VLAN_MEMBER|Vlan4000|Ethernet4": nil,
		"INTERFACE|Ethernet4":            {"ipv6_use_link_local_only": "enable", "vrf_name": "Vrf104001"},
	})
	pxe, _ := Parse(leaf, "|")
	ten, _ := Parse(tenant, "|")
	for _, s := range []struct {
		name  string
		plan  []Cmd
		check func(map[string]link) error
	}{
		{"pxe", Plan(State{}, pxe), func(l map[string]link) error {
			if l["Ethernet4"].Master != BridgeName || l["Vlan4000"].LinkInfo.Kind != "vlan" || l["vtep-4000"].LinkInfo.Data.ID != 104000 {
				return fmt.Errorf("Ethernet4 %+v, Vlan4000 %+v, vtep-4000 %+v", l["Ethernet4"], l["Vlan4000"], l["vtep-4000"])
			}
			if !slices.Equal(l["Loopback0"].addrs(), []string{"10.0.0.11/32"}) {
				return fmt.Errorf("Loopback0 %v", l["Loopback0"].addrs())
			}
			return nil
		}},
		{"tenant", Plan(pxe, ten), func(l map[string]link) error {
			if l["Ethernet4"].Master != "Vrf104001" || l["Vrf104001"].LinkInfo.Data.Table != 104001 || l["Vlan1001"].Master != "Vrf104001" {
				return fmt.Errorf("Ethernet4 %+v, Vrf104001 %+v, Vlan1001 %+v", l["Ethernet4"], l["Vrf104001"], l["Vlan1001"])
			}
			return nil
		}},
		{"tenant resync", Plan(State{}, ten), func(map[string]link) error { return nil }},
		{"back to pxe", Plan(ten, pxe), func(l map[string]link) error {
			if _, ok := l["Vrf104001"]; ok || l["Ethernet4"].Master != BridgeName {
				return fmt.Errorf("Vrf104001 still there or Ethernet4 %+v", l["Ethernet4"])
			}
			return nil
		}},
	} {
		if err := x.Apply(ctx, s.plan); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if err := s.check(links(t, ns)); err != nil {
			t.Errorf("%s: %v", s.name, err)
		}
	}
}
