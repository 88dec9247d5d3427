package sonicemu

import (
	"context"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"
)

// udp6 listens on port of dev (SO_BINDTODEVICE).
func udp6(dev string, port int) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptString(int(fd), syscall.SOL_SOCKET, syscall.SO_BINDTODEVICE, dev)
		}); err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp6", net.JoinHostPort("::", itoa(port)))
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

func itoa(i int) string { return strconv.Itoa(i) }

// TestRelayDHCPv6 relays a real SOLICIT → ADVERTISE through the real
// dhcrelay -6 the emulation starts for dhcpv6_servers@: the client's
// SOLICIT to ff02::1:2 on the VLAN goes to the server (the test's own) as
// RELAY-FORW through the uplink, whose RELAY-REPL comes back as an
// ADVERTISE to the client. The VLAN is the client link's own end here
// (the relay does not care how Vlan4000 is made; the v4 test renders it).
func TestRelayDHCPv6(t *testing.T) {
	if _, err := exec.LookPath("dhcrelay"); err != nil {
		t.Skip("no dhcrelay (Debian's isc-dhcp-relay)")
	}
	ns := netns(t)
	client, server := ns+"c", ns+"s"
	for _, n := range []string{client, server} {
		sh(t, "ip", "netns", "add", n)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n).Run() })
	}
	// No duplicate address detection: addresses usable at once.
	for _, n := range []string{ns, client, server} {
		sh(t, "ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
	}
	sh(t, "ip", "-n", ns, "link", "add", "Vlan4000", "type", "veth", "peer", "name", "eth0", "netns", client)
	sh(t, "ip", "-n", ns, "link", "add", "Ethernet4", "type", "veth", "peer", "name", "eth0", "netns", server)
	for _, c := range [][]string{
		{"-n", client, "link", "set", "eth0", "up"},
		{"-n", server, "link", "set", "eth0", "up"},
		{"-n", ns, "link", "set", "Vlan4000", "up"},
		{"-n", ns, "link", "set", "Ethernet4", "up"},
		{"-n", ns, "addr", "add", "fd00:ff::1/64", "dev", "Vlan4000", "nodad"},
		{"-n", ns, "addr", "add", "fd00:1::1/64", "dev", "Ethernet4", "nodad"},
		{"-n", server, "addr", "add", "fd00:1::2/64", "dev", "eth0", "nodad"},
		{"-n", server, "route", "add", "fd00:ff::/64", "via", "fd00:1::1"},
	} {
		sh(t, append([]string{"ip"}, c...)...)
	}
	s, bad := Parse(map[string]map[string]string{
		"VLAN|Vlan4000":                         {"dhcpv6_servers@": "fd00:1::2"},
		"VLAN_INTERFACE|Vlan4000":               {},
		"VLAN_INTERFACE|Vlan4000|fd00:ff::1/64": {},
	}, "|")
	if len(bad) > 0 {
		t.Fatal(bad)
	}
	relays := &Relays{Starter: &ExecStarter{Netns: ns, LogDir: t.TempDir()}, Upstreams: &RouteUpstreams{Netns: ns}, Log: testLog(t)}
	defer relays.Close()
	relays.Update(context.Background(), s)
	if got := relays.Running(); len(got) != 1 || strings.Join(got[0].Args, " ") != "-d -6 --no-pid -l Vlan4000 -u fd00:1::2%Ethernet4" {
		t.Fatalf("relays %+v", got)
	}

	var srv *net.UDPConn
	inNetns(t, server, func() (err error) { srv, err = udp6("eth0", 547); return err })
	defer srv.Close()
	relayed := make(chan *dhcpv6.RelayMessage, 16)
	go func() {
		buf := make([]byte, 1500)
		mac, _ := net.ParseMAC("02:00:00:00:00:02")
		for {
			n, from, err := srv.ReadFromUDP(buf)
			if err != nil {
				return
			}
			m, err := dhcpv6.FromBytes(buf[:n])
			if err != nil {
				continue
			}
			fw, ok := m.(*dhcpv6.RelayMessage)
			if !ok || fw.MessageType != dhcpv6.MessageTypeRelayForward {
				continue
			}
			inner, err := fw.GetInnerMessage()
			if err != nil || inner.MessageType != dhcpv6.MessageTypeSolicit {
				continue
			}
			relayed <- fw
			adv, err := dhcpv6.NewAdvertiseFromSolicit(inner, dhcpv6.WithServerID(&dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: mac}))
			if err != nil {
				continue
			}
			repl, err := dhcpv6.NewRelayReplFromRelayForw(fw, adv)
			if err != nil {
				continue
			}
			_, _ = srv.WriteToUDP(repl.ToBytes(), from)
			t.Logf("server: RELAY-FORW from %v (link address %v) → RELAY-REPL", from, fw.LinkAddr)
		}
	}()

	var cl *net.UDPConn
	inNetns(t, client, func() (err error) { cl, err = udp6("eth0", 546); return err })
	defer cl.Close()
	out, err := exec.Command("ip", "netns", "exec", client, "cat", "/sys/class/net/eth0/address").Output()
	if err != nil {
		t.Fatal(err)
	}
	mac, _ := net.ParseMAC(strings.TrimSpace(string(out)))
	sol, err := dhcpv6.NewSolicit(mac)
	if err != nil {
		t.Fatal(err)
	}
	// The zone by index: a zone by name is looked up in this thread's
	// namespace, where eth0 is another device.
	idx, err := exec.Command("ip", "netns", "exec", client, "cat", "/sys/class/net/eth0/ifindex").Output()
	if err != nil {
		t.Fatal(err)
	}
	zone := strings.TrimSpace(string(idx))
	start := time.Now()
	buf := make([]byte, 1500)
	for time.Since(start) < 30*time.Second {
		if _, err := cl.WriteToUDP(sol.ToBytes(), &net.UDPAddr{IP: net.ParseIP("ff02::1:2"), Port: 547, Zone: zone}); err != nil {
			// IPv6 on a link that just came up: its routes come a moment later.
			t.Logf("client send: %v", err)
			time.Sleep(200 * time.Millisecond)
			continue
		}
		_ = cl.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, _, err := cl.ReadFromUDP(buf)
			if err != nil {
				break
			}
			m, err := dhcpv6.FromBytes(buf[:n])
			if err != nil {
				continue
			}
			adv, ok := m.(*dhcpv6.Message)
			if !ok || adv.MessageType != dhcpv6.MessageTypeAdvertise || adv.TransactionID != sol.TransactionID {
				continue
			}
			fw := <-relayed
			if !fw.LinkAddr.Equal(net.ParseIP("fd00:ff::1")) {
				t.Fatalf("RELAY-FORW link address %v, want the VLAN's fd00:ff::1", fw.LinkAddr)
			}
			t.Logf("client: ADVERTISE %v after the first SOLICIT", time.Since(start))
			return
		}
	}
	t.Fatal("no ADVERTISE through the relay within 30 s")
}
