package frr

import (
	"context"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/metalfleet/metalfleet/agents/metalcore/internal/spec"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

var update = flag.Bool("update", false, "rewrite the golden frr.conf files under testdata")

func resolve(name string) (string, bool) { return name, strings.HasPrefix(name, "Ethernet") }

func port(name string, role agentv1.SwitchPortRole, vni uint32) *agentv1.SwitchPort {
	return &agentv1.SwitchPort{Name: name, Role: role, VrfVni: vni}
}

const (
	uplink       = agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UPLINK
	pxe          = agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UNPROVISIONED
	tenant       = agentv1.SwitchPortRole_SWITCH_PORT_ROLE_TENANT
	firewallRole = agentv1.SwitchPortRole_SWITCH_PORT_ROLE_FIREWALL
)

func baseDoc() *agentv1.SwitchDocument {
	return &agentv1.SwitchDocument{Name: "leaf01", Asn: 4200000011, RouterId: "10.0.0.11", Loopback: "10.0.0.11", PxeVlanId: 4000,
		Ports: []*agentv1.SwitchPort{port("Ethernet120", uplink, 0), port("Ethernet124", uplink, 0)}}
}

// goldenDocs are the documents whose frr.conf is kept under testdata.
func goldenDocs() map[string]*agentv1.SwitchDocument {
	empty := baseDoc()
	empty.Ports = nil

	pxeOnly := baseDoc()
	pxeOnly.Ports = append(pxeOnly.Ports, port("Ethernet0", pxe, 0), port("Ethernet4", pxe, 0))

	vrfs := baseDoc()
	vrfs.Vrfs = []*agentv1.SwitchVrf{
		{Vni: 104001, VlanId: 1001, Cidrs: []string{"10.1.0.0/22", "2001:db8:1::/48", "10.1.0.0/24"}},
		{Vni: 104002, VlanId: 1002, Cidrs: []string{"10.2.0.0/22", "10.2.8.1/32"}},
		{Vni: 104003, VlanId: 1003, Cidrs: []string{"2001:db8:3::/48"}},
	}
	vrfs.Ports = append(vrfs.Ports, port("Ethernet0", tenant, 104001), port("Ethernet4", tenant, 104001),
		port("Ethernet8", tenant, 104002), port("Ethernet12", tenant, 104003), port("Ethernet16", pxe, 0))

	fw := baseDoc()
	fw.Vrfs = []*agentv1.SwitchVrf{{Vni: 104001, VlanId: 1001, Cidrs: []string{"10.1.0.0/22"}}}
	fwPort := port("Ethernet12", firewallRole, 0)
	fwPort.FirewallFilter = &agentv1.FirewallFilter{Vnis: []uint32{104001, 104000}, Cidrs: []string{"10.1.0.0/22", "185.1.2.0/24", "2001:db8:1::/48"}}
	fw.Ports = append(fw.Ports, fwPort, port("Ethernet0", tenant, 104001))
	fw.ManagementGateway = "192.168.101.1"
	fw.SetSourceLoopback = true
	fw.PeerGroups = []*agentv1.BgpPeerGroup{{Name: "FABRIC", KeepaliveSeconds: 3, HoldSeconds: 9}, {Name: "MACHINE", MaximumPrefix: 100}}

	return map[string]*agentv1.SwitchDocument{"empty": empty, "pxe": pxeOnly, "vrfs": vrfs, "firewall": fw}
}

// vtysh returns the path of FRR's vtysh; the test is skipped without it
// (`make deps` installs Debian's frr, so CI runs it).
func vtysh(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("vtysh")
	if err != nil {
		t.Skip("vtysh not installed (make deps installs Debian's frr): FRR's own check cannot run")
	}
	return p
}

// TestRenderGolden renders each document, compares it with its golden
// file and has FRR's own parser check it.
func TestRenderGolden(t *testing.T) {
	tpl, err := ParseTemplate("")
	if err != nil {
		t.Fatal(err)
	}
	vty := vtysh(t)
	for name, d := range goldenDocs() {
		t.Run(name, func(t *testing.T) {
			sp, err := spec.Build(d, resolve)
			if err != nil {
				t.Fatal(err)
			}
			got, err := tpl.Render(sp)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join("testdata", name+".conf")
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("%v (run with -update)", err)
			}
			if string(got) != string(want) {
				t.Errorf("%s differs (run with -update after checking):\n%s", path, got)
			}
			if out, err := exec.Command(vty, "--dryrun", "--inputfile", path).CombinedOutput(); err != nil {
				t.Errorf("FRR refuses %s: %v: %s", path, err, out)
			}
		})
	}
}

// TestApply swaps frr.conf in with FRR's real check and real reload
// commands (true and false stand in for frr-reload.py).
func TestApply(t *testing.T) {
	vty := vtysh(t)
	good, err := os.ReadFile(filepath.Join("testdata", "vrfs.conf"))
	if err != nil {
		t.Fatal(err)
	}
	const old = "frr defaults datacenter\nhostname leaf01\n!\n"
	invalid := append([]byte(nil), good...)
	invalid = append(invalid, []byte("router bgp 4200000011\n neighbor FABRIC bogus-option\n")...)
	tests := []struct {
		name     string
		previous string // "" means no file
		conf     []byte
		reload   string
		changed  bool
		err      string
		live     string // what the live file must hold after; "-" none
		bak      bool
	}{
		{"first", "", good, "true", true, "", string(good), false},
		{"replace", old, good, "true", true, "", string(good), true},
		{"unchanged", string(good), good, "false", false, "", string(good), false},
		{"refused by FRR", old, invalid, "true", false, "refused by FRR's check", old, false},
		{"reload fails", old, good, "false", false, "reload failed, previous configuration restored", old, false},
		{"reload fails, none before", "", good, "false", false, "reload failed", "-", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			live := filepath.Join(dir, "frr.conf")
			if tt.previous != "" {
				if err := os.WriteFile(live, []byte(tt.previous), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			a, err := NewApplier(Config{File: live, Validate: []string{vty, "--dryrun", "--inputfile", FilePlaceholder}, Reload: []string{tt.reload}})
			if err != nil {
				t.Fatal(err)
			}
			changed, err := a.Apply(context.Background(), tt.conf)
			if changed != tt.changed || (tt.err == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("changed %v, err %v; want %v, %q", changed, err, tt.changed, tt.err)
			}
			b, rerr := os.ReadFile(live)
			switch {
			case tt.live == "-" && rerr == nil:
				t.Errorf("live file left behind")
			case tt.live != "-" && string(b) != tt.live:
				t.Errorf("live file %q, want %q", b, tt.live)
			}
			if _, err := os.Stat(live + ".bak"); (err == nil) != tt.bak {
				t.Errorf("backup there: %v, want %v", err == nil, tt.bak)
			}
			if _, err := os.Stat(live + ".tmp"); err == nil {
				t.Errorf("candidate file left behind")
			}
		})
	}
}

// runner is a Runner that records what it is asked and answers from out.
type runner struct {
	calls []string
	out   []byte
	err   error
}

func (r *runner) Run(_ context.Context, name string, args ...string) ([]byte, error) {
	r.calls = append(r.calls, name+" "+strings.Join(args, " "))
	return r.out, r.err
}

func TestCommand(t *testing.T) {
	tests := []struct {
		cmd  []string
		want string
	}{
		{[]string{"/usr/lib/frr/frr-reload.py", "--reload", "{file}"}, "/usr/lib/frr/frr-reload.py --reload /x"},
		{[]string{"systemctl", "start", "frr-reload"}, "systemctl start frr-reload /x"},
		{[]string{"sh", "-c", "frr-reload.py {file} --reload --confdir /etc/sonic/frr"}, "sh -c frr-reload.py /x --reload --confdir /etc/sonic/frr"},
		// frr-reload.py must get the file's own directory as --confdir,
		// or it overwrites the file with vtysh's `write`.
		{DefaultReload(), "/usr/lib/frr/frr-reload.py --reload --confdir /etc/sonic/frr /etc/sonic/frr/frr.conf"},
	}
	for _, tt := range tests {
		name, args := command(tt.cmd, "/etc/sonic/frr/frr.conf")
		tt.want = strings.ReplaceAll(tt.want, "/x", "/etc/sonic/frr/frr.conf")
		if got := name + " " + strings.Join(args, " "); got != tt.want {
			t.Errorf("%v: %q, want %q", tt.cmd, got, tt.want)
		}
	}
}

// TestSessions parses what FRR 8.4's bgpd answered (two bgpd on the
// loopback, captured for this test) and an unnumbered leaf's sessions.
func TestSessions(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "neighbors-frr8.4.json"))
	if err != nil {
		t.Fatal(err)
	}
	r := &runner{out: b}
	got, via, err := BGP{Runner: r}.Sessions(context.Background())
	if err != nil || via != "vtysh" {
		t.Fatal(via, err)
	}
	if len(r.calls) != 1 || r.calls[0] != "vtysh -c show bgp vrf all neighbors json" {
		t.Errorf("calls %v", r.calls)
	}
	if len(got) != 2 {
		t.Fatalf("%d sessions, want 2: %v", len(got), got)
	}
	if s := got[0]; s.Vrf != "Vrf104001" || s.Port != "127.0.0.3" || s.PeerGroup != "MACHINE" || s.State != agentv1.BgpState_BGP_STATE_IDLE || s.EstablishedSince != nil {
		t.Errorf("vrf session %v", s)
	}
	if s := got[1]; s.Vrf != "default" || s.Port != "127.0.0.1" || s.State != agentv1.BgpState_BGP_STATE_ESTABLISHED ||
		s.EstablishedSince.GetSeconds() != 1796332746 || s.RemoteAs != 65002 || s.RemoteHostname != "b" ||
		len(s.AddressFamilies) != 1 || s.AddressFamilies[0].Name != "ipv4Unicast" {
		t.Errorf("default session %v", s)
	}

	unnumbered := `{"default":{"vrfId":0,"vrfName":"default",
	  "Ethernet120":{"remoteAs":4200000001,"hostname":"spine01","peerGroup":"FABRIC","bgpState":"Established","bgpTimerUpEstablishedEpoch":1700000000,
	    "addressFamilyInfo":{"ipv6Unicast":{"acceptedPrefixCounter":12,"sentPrefixCounter":3},"l2VpnEvpn":{"acceptedPrefixCounter":40,"sentPrefixCounter":7}}},
	  "Ethernet4":{"remoteAs":4210000001,"peerGroup":"FIREWALL","bgpState":"Active"}},
	 "Vrf104001":{"vrfId":12,"vrfName":"Vrf104001",
	  "Ethernet0":{"remoteAs":4210000010,"hostname":"machine-1","peerGroup":"MACHINE","bgpState":"OpenSent"}}}`
	got, err = ParseNeighbors([]byte(unnumbered))
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, s := range got {
		line := s.Vrf + " " + s.Port + " " + s.PeerGroup + " " + s.State.String()
		for _, f := range s.AddressFamilies {
			line += " " + f.Name
		}
		lines = append(lines, line)
	}
	want := []string{
		"Vrf104001 Ethernet0 MACHINE BGP_STATE_OPEN_SENT",
		"default Ethernet4 FIREWALL BGP_STATE_ACTIVE",
		"default Ethernet120 FABRIC BGP_STATE_ESTABLISHED ipv6Unicast l2VpnEvpn",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("sessions:\n%s\nwant:\n%s", strings.Join(lines, "\n"), strings.Join(want, "\n"))
	}
	if f := got[2].AddressFamilies[1]; f.PrefixesAccepted != 40 || f.PrefixesSent != 7 {
		t.Errorf("evpn counters %v", f)
	}

	r = &runner{err: errors.New("exit status 1: bgpd is not running")}
	if _, _, err := (BGP{Vtysh: "/usr/bin/vtysh", Runner: r}).Sessions(context.Background()); err == nil || !strings.Contains(err.Error(), "bgpd is not running") {
		t.Errorf("err %v", err)
	}
	for _, bad := range []string{`[1]`, `{"default": 5}`, `{"default":{"Ethernet0":{"remoteAs":"x"}}}`} {
		if _, err := ParseNeighbors([]byte(bad)); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

// FuzzParseNeighbors: vtysh's output is untrusted bytes; the parser must
// neither panic nor return sessions without a VRF or port.
func FuzzParseNeighbors(f *testing.F) {
	if b, err := os.ReadFile(filepath.Join("testdata", "neighbors-frr8.4.json")); err == nil {
		f.Add(b)
	}
	f.Add([]byte(`{"default":{"vrfId":0,"vrfName":"default","Ethernet120":{"bgpState":"Established","bgpTimerUpEstablishedEpoch":1e30,"addressFamilyInfo":{"x":{"acceptedPrefixCounter":-1}}}}}`))
	f.Add([]byte(`{"v":{"vrfName":"","n":{"remoteAs":99999999999}}}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseNeighbors(b)
		if err != nil {
			return
		}
		for _, s := range got {
			if s.GetVrf() == "" || s.GetPort() == "" {
				t.Errorf("session without VRF or port: %v", s)
			}
		}
	})
}
