package sonicemu

import (
	"context"
	"errors"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/metalfleet/metalfleet/agents/metalcore/redistest"
)

func TestParseLLDP(t *testing.T) {
	read := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", "lldp", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	for _, tc := range []struct {
		name    string
		in      []byte
		want    map[string]Neighbour
		wantErr bool
	}{
		{
			// Captured from lldpd 1.0.16 (Debian 12): a neighbour whose
			// lldpd has portidsubtype ifname, as the lab's guests.
			name: "one neighbour", in: read("one.json"),
			want: map[string]Neighbour{"Ethernet0": {
				ChassisIDSubtype: "4", ChassisID: "42:a9:35:c5:3e:ce",
				PortIDSubtype: "5", PortID: "eth9", PortDesc: "eth9",
				SysName: "machine1", MgmtAddr: "fe80::40a9:35ff:fec5:3ece",
				SysDesc: "Debian GNU/Linux 12 (bookworm) Linux 6.18.44-fc-v1252 #1 SMP PREEMPT_DYNAMIC @0 x86_64",
			}},
		},
		{name: "no neighbour", in: read("none.json"), want: map[string]Neighbour{}},
		{name: "garbled", in: []byte(`{"lldp": [{"interface": "x"`), wantErr: true},
		{name: "an interface without chassis", in: []byte(`{"lldp":[{"interface":[{"name":"Ethernet4"}]}]}`), want: map[string]Neighbour{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseLLDP(tc.in)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && !maps.Equal(got, tc.want) {
				t.Fatalf("got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

// fakeLinks and fakeLLDP are sources whose state the test sets; Redis is
// real.
type fakeLinks struct {
	mu    sync.Mutex
	links map[string]LinkState
	c     chan struct{}
	err   error
}

func (f *fakeLinks) set(name string, l LinkState, exists bool) {
	f.mu.Lock()
	if exists {
		f.links[name] = l
	} else {
		delete(f.links, name)
	}
	f.mu.Unlock()
	f.c <- struct{}{}
}

func (f *fakeLinks) Links(context.Context) (map[string]LinkState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.links), f.err
}

func (f *fakeLinks) Watch(context.Context) (<-chan struct{}, error) { return f.c, nil }

type fakeLLDP struct {
	mu   sync.Mutex
	nbrs map[string]Neighbour
	err  error
	c    chan struct{}
}

func (f *fakeLLDP) set(nbrs map[string]Neighbour, err error) {
	f.mu.Lock()
	f.nbrs, f.err = nbrs, err
	f.mu.Unlock()
	f.c <- struct{}{}
}

func (f *fakeLLDP) Neighbours(context.Context) (map[string]Neighbour, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.nbrs), f.err
}

func (f *fakeLLDP) Watch(context.Context) (<-chan struct{}, error) { return f.c, nil }

// applRows reads APPL_DB's table into item → fields.
func applRows(t *testing.T, c *redis.Client, table string) map[string]map[string]string {
	t.Helper()
	ctx := context.Background()
	keys, err := c.Keys(ctx, table+":*").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]map[string]string{}
	for _, k := range keys {
		out[k[len(table)+1:]] = c.HGetAll(ctx, k).Val()
	}
	return out
}

// eventually waits up to 5 s for table to hold want.
func eventually(t *testing.T, c *redis.Client, table string, want map[string]map[string]string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var got map[string]map[string]string
	for time.Now().Before(deadline) {
		got = applRows(t, c, table)
		if maps.EqualFunc(got, want, maps.Equal) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("APPL_DB %s:\n got %v\nwant %v", table, got, want)
}

func startObserver(t *testing.T) (*redistest.Server, *redis.Client, *fakeLinks, *fakeLLDP) {
	t.Helper()
	srv := redistest.Start(t)
	cfg, csep, err := Open(srv.DBConfig)
	if err != nil {
		t.Fatal(err)
	}
	appl, asep, err := OpenAppl(srv.DBConfig)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cfg.Close(); appl.Close() })
	if asep != ":" || appl.Options().DB != 0 {
		t.Fatalf("APPL_DB is db %d with %q, want 0 and ':' (database_config.json)", appl.Options().DB, asep)
	}
	// A row an earlier run left for a port that is gone, and a stale
	// field of a port that is still there.
	srv.Load(t, "APPL_DB", map[string]map[string]string{
		"PORT_TABLE:Ethernet99":      {"oper_status": "up"},
		"PORT_TABLE:Ethernet0":       {"oper_status": "up", "stale": "x"},
		"LLDP_ENTRY_TABLE:Ethernet8": {"lldp_rem_sys_name": "gone"},
	})
	load(t, cfg, map[string]map[string]string{
		"PORT|Ethernet0": {"admin_status": "up"},
		"PORT|Ethernet4": {"admin_status": "up"},
		"PORT|Ethernet8": {},
		// Garbled rows: logged, the others are written.
		"PORT|": {}, "PORT|a|b": {},
		"VLAN|Vlan4000": {},
	})
	links := &fakeLinks{c: make(chan struct{}, 8), links: map[string]LinkState{
		"Ethernet0": {AdminUp: true, OperUp: true, MTU: 9100},
		"Ethernet4": {AdminUp: true, MTU: 9100},
		"lo":        {AdminUp: true, OperUp: true, MTU: 65536},
	}}
	lldp := &fakeLLDP{c: make(chan struct{}, 8), nbrs: map[string]Neighbour{
		"Ethernet0": {ChassisIDSubtype: "4", ChassisID: "52:54:00:00:00:01", PortIDSubtype: "5", PortID: "eth0", SysName: "machine1"},
		// lldpd may see an interface CONFIG_DB does not name.
		"eth7": {ChassisID: "x", SysName: "other"},
	}}
	o := &Observer{
		Config: cfg, ConfigSep: csep, Appl: &Writer{Client: appl, Sep: asep},
		Links: links, LLDP: lldp, Poll: time.Hour,
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return srv, srv.Client(t, "APPL_DB"), links, lldp
}

func TestObserverWritesAPPLDB(t *testing.T) {
	_, appl, links, lldp := startObserver(t)
	up := map[string]string{"admin_status": "up", "oper_status": "up", "mtu": "9100"}
	ports := map[string]map[string]string{
		"Ethernet0": up,
		"Ethernet4": {"admin_status": "up", "oper_status": "down", "mtu": "9100"},
		// No netdev (not renamed yet): down.
		"Ethernet8": {"admin_status": "down", "oper_status": "down"},
	}
	eventually(t, appl, PortTable, ports)
	nbr := map[string]string{
		"lldp_rem_chassis_id_subtype": "4", "lldp_rem_chassis_id": "52:54:00:00:00:01",
		"lldp_rem_port_id_subtype": "5", "lldp_rem_port_id": "eth0", "lldp_rem_sys_name": "machine1",
	}
	eventually(t, appl, LLDPTable, map[string]map[string]string{"Ethernet0": nbr})

	// The peer goes down, a port appears: both follow.
	links.set("Ethernet0", LinkState{AdminUp: true, MTU: 9100}, true)
	links.set("Ethernet8", LinkState{AdminUp: true, OperUp: true, MTU: 1500}, true)
	ports["Ethernet0"] = map[string]string{"admin_status": "up", "oper_status": "down", "mtu": "9100"}
	ports["Ethernet8"] = map[string]string{"admin_status": "up", "oper_status": "up", "mtu": "1500"}
	eventually(t, appl, PortTable, ports)

	// lldpd fails: the neighbours stay (a restarting lldpd is no news).
	lldp.set(nil, errors.New("unable to connect to socket"))
	time.Sleep(100 * time.Millisecond)
	eventually(t, appl, LLDPTable, map[string]map[string]string{"Ethernet0": nbr})

	// A second neighbour comes, then the first goes: its row goes.
	n4 := Neighbour{ChassisIDSubtype: "4", ChassisID: "52:54:00:00:00:02", PortID: "Ethernet120", PortDesc: "Ethernet120", SysName: "spine01"}
	lldp.set(map[string]Neighbour{
		"Ethernet0": {ChassisIDSubtype: "4", ChassisID: "52:54:00:00:00:01", PortIDSubtype: "5", PortID: "eth0", SysName: "machine1"},
		"Ethernet4": n4,
	}, nil)
	row4 := map[string]string{"lldp_rem_chassis_id_subtype": "4", "lldp_rem_chassis_id": "52:54:00:00:00:02",
		"lldp_rem_port_id": "Ethernet120", "lldp_rem_port_desc": "Ethernet120", "lldp_rem_sys_name": "spine01"}
	eventually(t, appl, LLDPTable, map[string]map[string]string{"Ethernet0": nbr, "Ethernet4": row4})
	lldp.set(map[string]Neighbour{"Ethernet4": n4}, nil)
	eventually(t, appl, LLDPTable, map[string]map[string]string{"Ethernet4": row4})
}

func TestObserverPortRemovedFromConfigDB(t *testing.T) {
	srv, appl, links, _ := startObserver(t)
	eventually(t, appl, PortTable, map[string]map[string]string{
		"Ethernet0": {"admin_status": "up", "oper_status": "up", "mtu": "9100"},
		"Ethernet4": {"admin_status": "up", "oper_status": "down", "mtu": "9100"},
		"Ethernet8": {"admin_status": "down", "oper_status": "down"},
	})
	cfg := srv.Client(t, "CONFIG_DB")
	if err := cfg.Del(context.Background(), "PORT|Ethernet8", "PORT|Ethernet4").Err(); err != nil {
		t.Fatal(err)
	}
	links.c <- struct{}{} // the next write (the poll in the guest)
	eventually(t, appl, PortTable, map[string]map[string]string{
		"Ethernet0": {"admin_status": "up", "oper_status": "up", "mtu": "9100"},
	})
	eventually(t, appl, LLDPTable, map[string]map[string]string{"Ethernet0": {
		"lldp_rem_chassis_id_subtype": "4", "lldp_rem_chassis_id": "52:54:00:00:00:01",
		"lldp_rem_port_id_subtype": "5", "lldp_rem_port_id": "eth0", "lldp_rem_sys_name": "machine1",
	}})
}

// TestObserverNetlink follows a real port: a veth pair in a namespace,
// the port's oper_status in APPL_DB going down and up with its peer.
// Runs where veth exists (the host and the router guest).
func TestObserverNetlink(t *testing.T) {
	ns := netns(t, "Ethernet0", "peer0")
	sh(t, "ip", "-n", ns, "link", "set", "Ethernet0", "up")
	sh(t, "ip", "-n", ns, "link", "set", "peer0", "up")
	srv := redistest.Start(t)
	cfg, csep, err := Open(srv.DBConfig)
	if err != nil {
		t.Fatal(err)
	}
	applC, asep, err := OpenAppl(srv.DBConfig)
	if err != nil {
		t.Fatal(err)
	}
	load(t, cfg, map[string]map[string]string{"PORT|Ethernet0": {"admin_status": "up"}, "PORT|Ethernet4": {}})
	o := &Observer{Config: cfg, ConfigSep: csep, Appl: &Writer{Client: applC, Sep: asep},
		Links: &NetlinkLinks{Netns: ns}, Poll: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	defer func() { cancel(); <-done }()
	appl := srv.Client(t, "APPL_DB")
	want := func(oper string) map[string]map[string]string {
		return map[string]map[string]string{
			"Ethernet0": {"admin_status": "up", "oper_status": oper, "mtu": "1500"},
			"Ethernet4": {"admin_status": "down", "oper_status": "down"},
		}
	}
	eventually(t, appl, PortTable, want("up"))
	// No poll (an hour): only the link events can bring these.
	start := time.Now()
	sh(t, "ip", "-n", ns, "link", "set", "peer0", "down")
	eventually(t, appl, PortTable, want("down"))
	t.Logf("peer down → oper_status down in %v", time.Since(start))
	start = time.Now()
	sh(t, "ip", "-n", ns, "link", "set", "peer0", "up")
	eventually(t, appl, PortTable, want("up"))
	t.Logf("peer up → oper_status up in %v", time.Since(start))
}

// TestObserverLLDPD runs two real lldpd, one in the leaf's namespace on
// Ethernet0 and one in a machine's on its end of the link, and checks the
// leaf's LLDP_ENTRY_TABLE row come and go with the machine's lldpd.
func TestObserverLLDPD(t *testing.T) {
	lldpd, err := exec.LookPath("lldpd")
	if err != nil {
		t.Skip("no lldpd (Debian's lldpd)")
	}
	ns := netns(t)
	peer := ns + "m"
	sh(t, "ip", "netns", "add", peer)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", peer).Run() })
	sh(t, "ip", "-n", ns, "link", "add", "Ethernet0", "type", "veth", "peer", "name", "eth0", "netns", peer)
	sh(t, "ip", "-n", ns, "link", "set", "Ethernet0", "up")
	sh(t, "ip", "-n", peer, "link", "set", "eth0", "up")
	dir, err := os.MkdirTemp("", "lldp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// lldpd's unprivileged half creates the socket's lock file beside it.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	start := func(netns, iface, name string) *exec.Cmd {
		sock := filepath.Join(dir, name+".sock")
		log, err := os.Create(filepath.Join(dir, name+".log"))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("ip", "netns", "exec", netns, lldpd, "-d", "-u", sock, "-I", iface)
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		// The socket answers once lldpd has dropped its privileges.
		for i := 0; ; i++ {
			err := exec.Command("lldpcli", "-u", sock, "show", "configuration").Run()
			if err == nil {
				break
			}
			if i == 100 {
				t.Fatalf("lldpd on %s did not answer within 5 s: %v", sock, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		// As rcS configures the guest's lldpd; a 1 s interval so that the
		// test does not wait for lldpd's 30 s.
		for _, c := range [][]string{{"configure", "lldp", "portidsubtype", "ifname"}, {"configure", "system", "hostname", name}, {"configure", "lldp", "tx-interval", "1"}} {
			sh(t, append([]string{"lldpcli", "-u", sock}, c...)...)
		}
		return cmd
	}
	start(ns, "Ethernet0", "leaf01")
	machine := start(peer, "eth0", "machine1")

	srv := redistest.Start(t)
	cfg, csep, _ := Open(srv.DBConfig)
	applC, asep, _ := OpenAppl(srv.DBConfig)
	load(t, cfg, map[string]map[string]string{"PORT|Ethernet0": {"admin_status": "up"}})
	o := &Observer{Config: cfg, ConfigSep: csep, Appl: &Writer{Client: applC, Sep: asep},
		Links: &NetlinkLinks{Netns: ns}, LLDP: &LLDPCli{Socket: filepath.Join(dir, "leaf01.sock")}, Poll: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- o.Run(ctx) }()
	defer func() { cancel(); <-done }()
	appl := srv.Client(t, "APPL_DB")

	key := "LLDP_ENTRY_TABLE:Ethernet0"
	deadline := time.Now().Add(10 * time.Second)
	var row map[string]string
	for time.Now().Before(deadline) {
		if row = appl.HGetAll(ctx, key).Val(); row["lldp_rem_sys_name"] != "" {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if row["lldp_rem_sys_name"] != "machine1" || row["lldp_rem_port_id"] != "eth0" || row["lldp_rem_port_id_subtype"] != "5" ||
		row["lldp_rem_chassis_id_subtype"] != "4" || len(row["lldp_rem_chassis_id"]) != 17 {
		t.Fatalf("%s = %v, want machine1's eth0 by ifname and its MAC as chassis id", key, row)
	}
	// The machine's lldpd stops (SIGTERM: it sends a shutdown LLDPDU):
	// the row goes, through lldpcli watch (no poll for an hour).
	_ = machine.Process.Signal(os.Interrupt)
	deadline = time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && appl.Exists(ctx, key).Val() == 1 {
		time.Sleep(50 * time.Millisecond)
	}
	if appl.Exists(ctx, key).Val() == 1 {
		t.Fatalf("%s still there after the neighbour's lldpd stopped: %v", key, appl.HGetAll(ctx, key).Val())
	}
}
