package core

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/metalfleet/metalfleet/agents/metalcore/internal/frr"
	"github.com/metalfleet/metalfleet/agents/metalcore/redistest"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// central is a fake central agent endpoint (plaintext): it sends its
// document after the welcome and records what the agent reports.
type central struct {
	agentv1.UnimplementedAgentServiceServer
	doc *agentv1.Desired

	mu      sync.Mutex
	hellos  int
	applied uint64
	facts   []*agentv1.Facts
	events  []*agentv1.Event
	changed chan struct{}
}

func (c *central) Sync(stream agentv1.AgentService_SyncServer) error {
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	c.mu.Lock()
	c.hellos++
	if f := m.GetHello().GetFacts(); f != nil {
		c.facts = append(c.facts, f)
	}
	c.mu.Unlock()
	if err := stream.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Welcome{Welcome: &agentv1.Welcome{
		AgentId: "switch-1", HeartbeatInterval: durationpb.New(time.Minute), ReportAcks: true}}}); err != nil {
		return err
	}
	if err := stream.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Desired{Desired: c.doc}}); err != nil {
		return err
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return nil
		}
		r := m.GetReport()
		if r == nil {
			continue
		}
		c.mu.Lock()
		c.applied = max(c.applied, r.GetAppliedRevision())
		if r.GetFacts() != nil {
			c.facts = append(c.facts, r.GetFacts())
		}
		c.events = append(c.events, r.GetEvents()...)
		c.mu.Unlock()
		select {
		case c.changed <- struct{}{}:
		default:
		}
		if r.GetSeq() != 0 {
			if err := stream.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Ack{Ack: &agentv1.Ack{Seq: r.GetSeq(), Result: agentv1.AckResult_ACK_RESULT_STORED}}}); err != nil {
				return nil
			}
		}
	}
}

// startCentral serves c on a loopback port until the test ends.
func startCentral(t *testing.T, c *central) string {
	t.Helper()
	c.changed = make(chan struct{}, 1)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	agentv1.RegisterAgentServiceServer(s, c)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return l.Addr().String()
}

// waitFor polls cond until it holds or 10 s passed.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// unreachable is a loopback address where nothing listens.
func unreachable(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// vtyshStub answers vtysh's BGP query from sessions and runs everything
// else (the check and the reload) for real.
type vtyshStub struct {
	mu       sync.Mutex
	sessions string
}

func (v *vtyshStub) set(s string) {
	v.mu.Lock()
	v.sessions = s
	v.mu.Unlock()
}

func (v *vtyshStub) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if name == "vtysh" && len(args) == 2 && args[0] == "-c" {
		v.mu.Lock()
		defer v.mu.Unlock()
		return []byte(v.sessions), nil
	}
	return frr.Exec{}.Run(ctx, name, args...)
}

// leaf is a switch for the tests: a real Redis with a base CONFIG_DB and
// a directory for frr.conf and the agent's state.
type leaf struct {
	srv   *redistest.Server
	dir   string
	vtysh *vtyshStub
}

func newLeaf(t *testing.T) *leaf {
	srv := redistest.Start(t)
	base := map[string]map[string]string{
		"DEVICE_METADATA|localhost":                 {"hostname": "leaf01", "type": "LeafRouter", "docker_routing_config_mode": "split"},
		"MGMT_INTERFACE|eth0|192.168.101.11/24":     {"gwaddr": "192.168.101.1"},
		"VXLAN_TUNNEL|vtep":                         {"src_ip": "10.0.0.11"},
		"VLAN|Vlan4000":                             {"vlanid": "4000"},
		"VLAN_INTERFACE|Vlan4000":                   {"NULL": "NULL"},
		"VXLAN_TUNNEL_MAP|vtep|map_104000_Vlan4000": {"vlan": "Vlan4000", "vni": "104000"},
	}
	for i, p := range []string{"Ethernet0", "Ethernet4", "Ethernet8", "Ethernet120"} {
		base["PORT|"+p] = map[string]string{"alias": "Eth" + string(rune('1'+i)) + "/1", "lanes": "0", "speed": "25000", "admin_status": "down", "mtu": "9100"}
	}
	srv.Load(t, "CONFIG_DB", base)
	return &leaf{srv: srv, dir: t.TempDir(), vtysh: &vtyshStub{sessions: "{}"}}
}

func (l *leaf) config(t *testing.T, centralAddr string) Config {
	validate := []string{"true"}
	if p, err := exec.LookPath("vtysh"); err == nil {
		validate = []string{p, "--dryrun", "--inputfile", "{file}"}
	}
	return Config{
		Name: "leaf01", Centrals: []string{centralAddr}, Token: "mfa_test", StateDir: filepath.Join(l.dir, "state"),
		Version: "test", DBConfig: l.srv.DBConfig, FRRFile: filepath.Join(l.dir, "frr", "frr.conf"),
		FRRValidate: validate, FRRReload: []string{"true"}, Runner: l.vtysh,
		FactsPoll: time.Hour, BGPPoll: 50 * time.Millisecond, Resync: time.Hour, AgentBackoff: 200 * time.Millisecond,
	}
}

// run starts c until the returned stop is called.
func run(t *testing.T, c *Core) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	return func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("run did not stop")
		}
	}
}

func document() *agentv1.Desired {
	return &agentv1.Desired{Revision: 7, Switch: &agentv1.SwitchDocument{
		Name: "leaf01", Asn: 4200000011, RouterId: "10.0.0.11", Loopback: "10.0.0.11", PxeVlanId: 4000,
		Vrfs: []*agentv1.SwitchVrf{{Vni: 104001, VlanId: 1001, Cidrs: []string{"10.1.0.0/22"}}},
		Ports: []*agentv1.SwitchPort{
			{Name: "Ethernet120", Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UPLINK},
			{Name: "Ethernet0", Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_TENANT, VrfVni: 104001},
			{Name: "Ethernet4", Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UNPROVISIONED},
		},
	}}
}

// TestFailStatic: metal-core applies central's document, then restarts
// while central is unreachable: it applies the cached document, which
// writes nothing, and CONFIG_DB and frr.conf stay exactly as they were.
func TestFailStatic(t *testing.T) {
	l := newLeaf(t)
	fc := &central{doc: document()}
	addr := startCentral(t, fc)
	c, err := New(l.config(t, addr))
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)
	waitFor(t, "revision 7 applied", func() bool {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		return fc.applied == 7
	})
	stop()

	cdb := l.srv.Client(t, "CONFIG_DB")
	dump := redistest.Dump(t, cdb)
	if !strings.Contains(dump, "INTERFACE|Ethernet0 ipv6_use_link_local_only=enable vrf_name=Vrf104001") {
		t.Fatalf("document not applied:\n%s", dump)
	}
	conf, err := os.ReadFile(c.frr.File())
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(c.frr.File())
	writes := redistest.WriteCommands(t, cdb)

	// Restart with central away.
	c2, err := New(l.config(t, unreachable(t)))
	if err != nil {
		t.Fatal(err)
	}
	stop = run(t, c2)
	waitFor(t, "the cached document applied", func() bool { return c2.Agent().Applied() == 7 })
	stop()
	if got := redistest.Dump(t, cdb); got != dump {
		t.Errorf("CONFIG_DB changed by the restart:\nbefore:\n%s\nafter:\n%s", dump, got)
	}
	if n := redistest.WriteCommands(t, cdb) - writes; n != 0 {
		t.Errorf("the restart wrote %d commands, want none", n)
	}
	got, err := os.ReadFile(c2.frr.File())
	if err != nil || string(got) != string(conf) {
		t.Errorf("frr.conf changed by the restart (%v)", err)
	}
	if st2, _ := os.Stat(c2.frr.File()); !st2.ModTime().Equal(st.ModTime()) {
		t.Errorf("frr.conf rewritten by the restart")
	}

	// A metal-core that never had a document changes nothing either.
	l2 := newLeaf(t)
	before := redistest.Dump(t, l2.srv.Client(t, "CONFIG_DB"))
	c3, err := New(l2.config(t, unreachable(t)))
	if err != nil {
		t.Fatal(err)
	}
	stop = run(t, c3)
	time.Sleep(300 * time.Millisecond)
	stop()
	if got := redistest.Dump(t, l2.srv.Client(t, "CONFIG_DB")); got != before {
		t.Errorf("a metal-core without a document changed CONFIG_DB:\n%s", got)
	}
	if _, err := os.Stat(c3.frr.File()); err == nil {
		t.Errorf("a metal-core without a document wrote frr.conf")
	}
}

// TestReportsOnChange: facts go to central with the hello, and again as
// soon as a port's link, its LLDP neighbour or a BGP session changes —
// through keyspace notifications and the BGP poll, the slow poll being an
// hour here.
func TestReportsOnChange(t *testing.T) {
	l := newLeaf(t)
	fc := &central{doc: document()}
	addr := startCentral(t, fc)
	c, err := New(l.config(t, addr))
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)
	defer stop()
	last := func() *agentv1.SwitchFacts {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		if len(fc.facts) == 0 {
			return nil
		}
		return fc.facts[len(fc.facts)-1].GetSwitch()
	}
	waitFor(t, "facts in hello", func() bool { return last() != nil })
	sf := last()
	if sf.GetName() != "leaf01" || sf.GetManagementAddress() != "192.168.101.11" || len(sf.GetPorts()) != 4 ||
		sf.GetPorts()[0].GetOperState() != agentv1.SwitchOperState_SWITCH_OPER_STATE_UNKNOWN {
		t.Fatalf("facts %v", sf)
	}
	waitFor(t, "revision 7 applied", func() bool {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		return fc.applied == 7
	})
	// The apply changed PORT rows (mtu, admin status): reported as well.
	waitFor(t, "applied MTU reported", func() bool { return last().GetPorts()[0].GetMtu() == 9000 })

	ctx := context.Background()
	appl := l.srv.Client(t, "APPL_DB")
	appl.HSet(ctx, "PORT_TABLE:Ethernet0", "oper_status", "up")
	appl.HSet(ctx, "LLDP_ENTRY_TABLE:Ethernet0", "lldp_rem_sys_name", "machine-1", "lldp_rem_port_id", "aa:bb:cc:00:00:01")
	waitFor(t, "link and neighbour reported", func() bool {
		p := last().GetPorts()[0]
		return p.GetOperState() == agentv1.SwitchOperState_SWITCH_OPER_STATE_UP && len(p.GetNeighbours()) == 1 && p.GetNeighbours()[0].GetSystemName() == "machine-1"
	})

	l.vtysh.set(`{"default":{"vrfId":0,"vrfName":"default","Ethernet120":{"remoteAs":4200000001,"hostname":"spine01","peerGroup":"FABRIC","bgpState":"Established","bgpTimerUpEstablishedEpoch":1700000000}}}`)
	waitFor(t, "BGP session reported", func() bool {
		s := last().GetBgpSessions()
		return len(s) == 1 && s[0].GetPort() == "Ethernet120" && s[0].GetState() == agentv1.BgpState_BGP_STATE_ESTABLISHED
	})

	// Nothing changed: nothing more is reported.
	fc.mu.Lock()
	n := len(fc.facts)
	fc.mu.Unlock()
	time.Sleep(500 * time.Millisecond)
	fc.mu.Lock()
	defer fc.mu.Unlock()
	if len(fc.facts) != n {
		t.Errorf("%d reports of unchanged facts", len(fc.facts)-n)
	}
	if proto.Equal(fc.facts[0], fc.facts[n-1]) {
		t.Errorf("first and last facts equal")
	}
}

// TestRefusedDocumentChangesNothing: a document that fails its checks
// (here a VRF without a valid VLAN) is refused whole; the switch keeps
// what it had and central hears why.
func TestRefusedDocumentChangesNothing(t *testing.T) {
	l := newLeaf(t)
	d := document()
	d.Switch.Vrfs[0].VlanId = 4000
	fc := &central{doc: d}
	addr := startCentral(t, fc)
	before := redistest.Dump(t, l.srv.Client(t, "CONFIG_DB"))
	c, err := New(l.config(t, addr))
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)
	waitFor(t, "the apply error reported", func() bool {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		for _, e := range fc.events {
			if e.GetType() == "ApplyFailed" && strings.Contains(e.GetMessage(), "vrfs[0].vlan_id 4000") {
				return true
			}
		}
		return false
	})
	stop()
	if got := redistest.Dump(t, l.srv.Client(t, "CONFIG_DB")); got != before {
		t.Errorf("a refused document changed CONFIG_DB:\n%s", got)
	}
}

func TestMergeFlags(t *testing.T) {
	for _, tt := range []struct{ cur, want string }{
		{"", "Khg"}, {"AKE", "AKE"}, {"ghK", "ghK"}, {"El", "ElKhg"}, {"KA", "KA"},
	} {
		if got := mergeFlags(tt.cur, keyspaceFlags); got != tt.want {
			t.Errorf("%q: %q, want %q", tt.cur, got, tt.want)
		}
	}
}

func TestSONiCVersion(t *testing.T) {
	p := filepath.Join(t.TempDir(), "sonic_version.yml")
	os.WriteFile(p, []byte("---\nbuild_version: 'SONiC.202311.0-metal'\ndebian_version: '12.5'\n"), 0o644)
	if v := sonicVersion(p); v != "SONiC.202311.0-metal" {
		t.Errorf("%q", v)
	}
	if v := sonicVersion(filepath.Join(t.TempDir(), "none")); v != "" {
		t.Errorf("%q", v)
	}
}

// TestRetryAfterFailedReload: the reload fails while FRR is "busy"; the
// apply is retried with backoff, and when it succeeds central hears so.
func TestRetryAfterFailedReload(t *testing.T) {
	l := newLeaf(t)
	fc := &central{doc: document()}
	addr := startCentral(t, fc)
	busy := filepath.Join(l.dir, "busy")
	if err := os.WriteFile(busy, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := l.config(t, addr)
	cfg.FRRReload = []string{"sh", "-c", "test ! -e " + busy}
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)
	defer stop()
	events := func(typ string) bool {
		fc.mu.Lock()
		defer fc.mu.Unlock()
		for _, e := range fc.events {
			if e.GetType() == typ {
				return true
			}
		}
		return false
	}
	waitFor(t, "the failed reload reported", func() bool { return events("ApplyFailed") })
	if _, err := os.Stat(c.frr.File()); err == nil {
		t.Errorf("frr.conf left in place after the failed reload")
	}
	os.Remove(busy)
	waitFor(t, "the retry reported", func() bool { return events("Synced") })
	if _, err := os.Stat(c.frr.File()); err != nil {
		t.Errorf("frr.conf not in place after the retry: %v", err)
	}
}
