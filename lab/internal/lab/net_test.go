package lab

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/lab/internal/netlab"
	"github.com/metalfleet/metalfleet/lab/internal/topo"
)

// testTopology is the default topology under a random name and a
// management subnet of its own, so it cannot meet a lab that is up.
func testTopology(t *testing.T) *topo.Topology {
	t.Helper()
	b, err := os.ReadFile("../../topologies/mini.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := make([]byte, 3)
	_, _ = rand.Read(r)
	name := "t" + hex.EncodeToString(r)[:5]
	s := strings.Replace(string(b), "name: mini", "name: "+name, 1)
	s = strings.ReplaceAll(s, "172.30.0.", fmt.Sprintf("172.29.%d.", r[2]))
	top, err := topo.Parse([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return top
}

// TestNetworkCarriesPXEAndMgmt builds the default topology's network and
// checks the paths the lab depends on: the host reaches central on mgmt;
// a machine's NIC behind either leaf reaches central through pixie's PXE
// network and routing, over IPv4 and IPv6. Then it tears it down and
// checks that nothing is left, as a later `up` after a crash would.
func TestNetworkCarriesPXEAndMgmt(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	top := testTopology(t)
	t.Cleanup(func() { _ = teardownNetwork(top) })
	if err := buildNetwork(top); err != nil {
		t.Fatal(err)
	}
	central := top.Node(top.Central())
	listen := func(addr string) net.Listener {
		var l net.Listener
		if err := netlab.Do(top.Namespace(top.Central()), func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
			t.Fatal(err)
		}
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				_, _ = c.Write([]byte("central"))
				c.Close()
			}
		}()
		t.Cleanup(func() { l.Close() })
		return l
	}
	l4 := listen(net.JoinHostPort(central.MgmtIPv4, "8443"))
	l6 := listen(net.JoinHostPort(central.MgmtIPv6, "8443"))
	dial := func(ns, addr string) error {
		var c net.Conn
		if err := netlab.Do(ns, func() (err error) { c, err = net.DialTimeout("tcp", addr, 5*time.Second); return err }); err != nil {
			return err
		}
		defer c.Close()
		b, _ := io.ReadAll(c)
		if string(b) != "central" {
			return fmt.Errorf("read %q", b)
		}
		return nil
	}
	if err := dial("", l4.Addr().String()); err != nil {
		t.Fatalf("host → central: %v", err)
	}
	if err := dial("", l6.Addr().String()); err != nil {
		t.Fatalf("host → central over IPv6: %v", err)
	}

	// Stand in for the VMs: addresses on the machines' NIC bridges, as
	// DHCP from pixie would give them.
	for i, path := range []struct{ machine, iface string }{{"machine01", "eth0"}, {"machine02", "eth1"}} {
		ns := top.Namespace(path.machine)
		if err := netlab.Addr(ns, bridgeOf(path.iface), fmt.Sprintf("10.1.0.%d/24", 50+i), fmt.Sprintf("fd00:10:1::%x/64", 0x50+i)); err != nil {
			t.Fatal(err)
		}
		if err := netlab.Route(ns, central.MgmtIPv4+"/32", "10.1.0.1"); err != nil {
			t.Fatal(err)
		}
		if err := netlab.Route(ns, central.MgmtIPv6+"/128", "fd00:10:1::1"); err != nil {
			t.Fatal(err)
		}
		for _, addr := range []string{l4.Addr().String(), l6.Addr().String()} {
			if err := dial(ns, addr); err != nil {
				t.Fatalf("%s:%s via its leaf and pixie → central %s: %v", path.machine, path.iface, addr, err)
			}
		}
	}

	if err := buildNetwork(top); err == nil {
		t.Fatal("building over an existing lab succeeded")
	}
	if err := teardownNetwork(top); err != nil {
		t.Fatal(err)
	}
	if ns, _ := netlab.ListNS(top.NamespacePrefix()); len(ns) != 0 {
		t.Fatalf("namespaces left: %v", ns)
	}
	if links, _ := netlab.Links(""); strings.Contains(strings.Join(links, " "), top.HostLink()) {
		t.Fatalf("host link %s left", top.HostLink())
	}
	// Torn down, it builds again.
	if err := buildNetwork(top); err != nil {
		t.Fatalf("build after teardown: %v", err)
	}
}

func TestProcAliveAndStop(t *testing.T) {
	top := testTopology(t)
	l := &Lab{top: top, dir: t.TempDir(), state: &State{}}
	if err := os.MkdirAll(l.dir+"/logs", 0o700); err != nil {
		t.Fatal(err)
	}
	p, err := l.spawn("sleeper", "", []string{"sleep", "60"})
	if err != nil {
		t.Fatal(err)
	}
	if !p.Alive() {
		t.Fatal("just started, not alive")
	}
	saved, err := loadState(l.statePath())
	if err != nil || len(saved.Procs) != 1 || saved.Procs[0].PID != p.PID {
		t.Fatalf("state on disk = %+v, %v", saved, err)
	}
	// Another start time under the same PID is a stranger: left alone.
	stranger := p
	stranger.Start++
	if stranger.Alive() {
		t.Fatal("a process with another start time counts as ours")
	}
	if err := stranger.stop(time.Second); err != nil {
		t.Fatal(err)
	}
	if !p.Alive() {
		t.Fatal("stopping a stranger ended our process")
	}
	if err := p.stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if p.Alive() {
		t.Fatal("still alive after stop")
	}
}
