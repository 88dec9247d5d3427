package sonicemu

import (
	"context"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	vnetns "github.com/vishvananda/netns"
)

// inNetns runs fn on a thread in the named network namespace: a socket
// made there stays there.
func inNetns(t *testing.T, ns string, fn func() error) {
	t.Helper()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	orig, err := vnetns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	target, err := vnetns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer target.Close()
	if err := vnetns.Set(target); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := vnetns.Set(orig); err != nil {
			panic(err) // the thread would stay in ns
		}
	}()
	if err := fn(); err != nil {
		t.Fatal(err)
	}
}

// udp4 listens on port of dev (SO_BINDTODEVICE) with SO_BROADCAST.
func udp4(dev string, port int) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = syscall.SetsockoptString(int(fd), syscall.SOL_SOCKET, syscall.SO_BINDTODEVICE, dev); serr != nil {
				return
			}
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_BROADCAST, 1)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", ":"+strconv.Itoa(port))
	if err != nil {
		return nil, err
	}
	return pc.(*net.UDPConn), nil
}

// dhcrelays returns the PIDs of the dhcrelay processes whose parent is
// this test (the relays must be the emulation's own children).
func dhcrelays(t *testing.T) []int {
	t.Helper()
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid …
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || !strings.Contains(s[:i], "(dhcrelay") {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(os.Getpid()) {
			out = append(out, pid)
		}
	}
	return out
}

// TestRelayDHCPv4 relays a real DHCP exchange through the real dhcrelay:
// a client namespace behind the leaf's port Ethernet0 (in the PXE VLAN
// 4000, whose SVI has 10.255.0.1/24) broadcasts a DISCOVER; the relay the
// emulation started for CONFIG_DB's dhcp_servers@ forwards it to a server
// namespace behind the routed port Ethernet4 (the test's own small DHCP
// server), whose OFFER comes back to the client. On the router guest's
// kernel the leaf is rendered from CONFIG_DB as in the lab (VLAN-aware
// bridge, SVI); on a kernel without 802.1Q and vlan filtering (the
// host's), Vlan4000 is the client link's own end, addressed by hand.
// Then the relay is killed and must be restarted, and its field removed
// and it must stop.
func TestRelayDHCPv4(t *testing.T) {
	if _, err := exec.LookPath("dhcrelay"); err != nil {
		t.Skip("no dhcrelay (Debian's isc-dhcp-relay)")
	}
	ns := netns(t)
	client, server := ns+"c", ns+"s"
	for _, n := range []string{client, server} {
		sh(t, "ip", "netns", "add", n)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", n).Run() })
	}
	leafKernel := exec.Command("ip", "-n", ns, "link", "add", "probe", "type", "bridge", "vlan_filtering", "1").Run() == nil
	_ = exec.Command("ip", "-n", ns, "link", "del", "probe").Run()
	down := "Ethernet0"
	if !leafKernel {
		down = "Vlan4000"
	}
	sh(t, "ip", "-n", ns, "link", "add", down, "type", "veth", "peer", "name", "eth0", "netns", client)
	sh(t, "ip", "-n", ns, "link", "add", "Ethernet4", "type", "veth", "peer", "name", "eth0", "netns", server)
	for _, n := range []string{client, server} {
		sh(t, "ip", "-n", n, "link", "set", "eth0", "up")
	}
	sh(t, "ip", "-n", server, "addr", "add", "10.1.0.2/30", "dev", "eth0")
	sh(t, "ip", "-n", server, "route", "add", "10.255.0.0/24", "via", "10.1.0.1")

	rows := map[string]map[string]string{
		"PORT|Ethernet0":                        {"admin_status": "up"},
		"PORT|Ethernet4":                        {"admin_status": "up"},
		"VLAN|Vlan4000":                         {"vlanid": "4000", "dhcp_servers@": "10.1.0.2"},
		"VLAN_MEMBER|Vlan4000|Ethernet0":        {"tagging_mode": "untagged"},
		"VLAN_INTERFACE|Vlan4000":               {},
		"VLAN_INTERFACE|Vlan4000|10.255.0.1/24": {},
		"INTERFACE|Ethernet4":                   {},
		"INTERFACE|Ethernet4|10.1.0.1/30":       {},
	}
	c, sep := startRedis(t)
	load(t, c, rows)
	relays := &Relays{
		Starter:   &ExecStarter{Netns: ns, LogDir: t.TempDir()},
		Upstreams: &RouteUpstreams{Netns: ns},
		Backoff:   100 * time.Millisecond, MaxBackoff: time.Second,
		Log: testLog(t),
	}
	defer relays.Close()
	ctx := context.Background()
	var x Applier = &Executor{Netns: ns}
	if !leafKernel {
		// Only what this kernel can: the ports' addresses and state; the
		// VLAN's rendering is replaced by the hand-made Vlan4000.
		sh(t, "ip", "-n", ns, "addr", "add", "10.255.0.1/24", "dev", "Vlan4000")
		sh(t, "ip", "-n", ns, "link", "set", "Vlan4000", "up")
		x = hostOnly{x}
	}
	e := &Emulator{Client: c, Sep: sep, Apply: x, Relays: relays, Log: testLog(t)}
	if _, err := e.Sync(ctx, true); err != nil {
		t.Fatalf("render: %v", err)
	}
	if got := relays.Running(); len(got) != 1 || !strings.Contains(strings.Join(got[0].Args, " "), "-id Vlan4000 -iu Ethernet4 10.1.0.2") {
		t.Fatalf("relays %+v, want Vlan4000's to 10.1.0.2 through Ethernet4", got)
	}

	// The DHCP server: answers a relayed DISCOVER with an OFFER to the
	// relay (giaddr), as metal-pixie does.
	var srv *net.UDPConn
	inNetns(t, server, func() (err error) { srv, err = udp4("eth0", 67); return err })
	defer srv.Close()
	relayed := make(chan *dhcpv4.DHCPv4, 16)
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := srv.ReadFromUDP(buf)
			if err != nil {
				return
			}
			req, err := dhcpv4.FromBytes(buf[:n])
			if err != nil || req.MessageType() != dhcpv4.MessageTypeDiscover {
				continue
			}
			relayed <- req
			offer, err := dhcpv4.NewReplyFromRequest(req,
				dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer),
				dhcpv4.WithYourIP(net.IPv4(10, 255, 0, 100)),
				dhcpv4.WithServerIP(net.IPv4(10, 1, 0, 2)),
				dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.IPv4(10, 1, 0, 2))),
				dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
			)
			if err != nil {
				continue
			}
			_, _ = srv.WriteToUDP(offer.ToBytes(), &net.UDPAddr{IP: req.GatewayIPAddr, Port: 67})
			t.Logf("server: DISCOVER from %v (giaddr %v, hops %d) → OFFER", from, req.GatewayIPAddr, req.HopCount)
		}
	}()

	exchange := func() {
		t.Helper()
		var cl *net.UDPConn
		inNetns(t, client, func() (err error) { cl, err = udp4("eth0", 68); return err })
		defer cl.Close()
		ifc := exec.Command("ip", "netns", "exec", client, "cat", "/sys/class/net/eth0/address")
		out, err := ifc.Output()
		if err != nil {
			t.Fatal(err)
		}
		mac, err := net.ParseMAC(strings.TrimSpace(string(out)))
		if err != nil {
			t.Fatal(err)
		}
		disc, err := dhcpv4.NewDiscovery(mac, dhcpv4.WithBroadcast(true))
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		buf := make([]byte, 1500)
		// dhcrelay needs a moment to open its sockets (seconds under TCG):
		// the client retries as a real one does.
		for time.Since(start) < 30*time.Second {
			if _, err := cl.WriteToUDP(disc.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: 67}); err != nil {
				t.Fatalf("client send: %v", err)
			}
			_ = cl.SetReadDeadline(time.Now().Add(time.Second))
			for {
				n, _, err := cl.ReadFromUDP(buf)
				if err != nil {
					break
				}
				offer, err := dhcpv4.FromBytes(buf[:n])
				if err != nil || offer.TransactionID != disc.TransactionID || offer.MessageType() != dhcpv4.MessageTypeOffer {
					continue
				}
				if !offer.YourIPAddr.Equal(net.IPv4(10, 255, 0, 100)) {
					t.Fatalf("OFFER of %v, want 10.255.0.100", offer.YourIPAddr)
				}
				t.Logf("client: OFFER %v %v after DISCOVER", offer.YourIPAddr, time.Since(start))
				select {
				case req := <-relayed:
					if !req.GatewayIPAddr.Equal(net.IPv4(10, 255, 0, 1)) || req.HopCount != 1 {
						t.Fatalf("the server got giaddr %v hops %d, want the SVI's 10.255.0.1 and 1", req.GatewayIPAddr, req.HopCount)
					}
				default:
					t.Fatal("an OFFER without a relayed DISCOVER")
				}
				for len(relayed) > 0 {
					<-relayed
				}
				return
			}
		}
		t.Fatalf("no OFFER through the relay within 30 s")
	}
	exchange()

	pids := dhcrelays(t)
	if len(pids) != 1 {
		t.Fatalf("dhcrelay children of the emulation: %v, want one", pids)
	}
	// It dies: the supervisor starts another, which relays again.
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if p := dhcrelays(t); len(p) == 1 && p[0] != pids[0] {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if p := dhcrelays(t); len(p) != 1 || p[0] == pids[0] {
		t.Fatalf("after killing dhcrelay %d: %v", pids[0], p)
	}
	exchange()

	// The servers go from CONFIG_DB: the relay stops.
	if err := c.HDel(ctx, "VLAN|Vlan4000", "dhcp_servers@").Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	if p := dhcrelays(t); len(p) != 0 || len(relays.Running()) != 0 {
		t.Fatalf("dhcrelay %v still running after dhcp_servers@ went", p)
	}
}

// hostOnly runs the commands this kernel can (links' state and
// addresses), for the relay test on a kernel without VLANs.
type hostOnly struct{ Applier }

func (h hostOnly) Apply(ctx context.Context, plan []Cmd) error {
	var keep []Cmd
	for _, c := range plan {
		s := c.String()
		if strings.Contains(s, "Ethernet4") && !strings.Contains(s, "master") {
			keep = append(keep, c)
		}
	}
	return h.Applier.Apply(ctx, keep)
}

// testLog logs into the test's log.
func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}
