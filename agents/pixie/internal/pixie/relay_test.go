package pixie

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/pin/tftp/v3"
	"google.golang.org/grpc"

	"github.com/metalfleet/metalfleet/agents/agent/nettest"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/lease"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// syncBuf collects a child's output for the failure message.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// spawn starts a command inside the network namespace ns (`ip netns
// exec` execs it, so the PID is the command's) and kills that PID, and
// only that, when the test ends.
func spawn(t *testing.T, ns string, args ...string) *syncBuf {
	t.Helper()
	out := &syncBuf{}
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns}, args...)...)
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", args[0], err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("%s output:\n%s", args[0], out.String())
		}
	})
	return out
}

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// dhclientEnv runs ISC dhclient (family "-4" or "-6") in the client
// namespace until it is bound and returns the variables it hands its
// script, which is where a real client puts what it was told.
func dhclientEnv(t *testing.T, ns, ifname, family, conf string) map[string]string {
	t.Helper()
	dir := t.TempDir()
	bound := filepath.Join(dir, "bound")
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\ncase \"$reason\" in BOUND|BOUND6) env > "+bound+".tmp && mv "+bound+".tmp "+bound+";; esac\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "dhclient.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"dhclient", family, "-d", "-v", "-cf", filepath.Join(dir, "dhclient.conf"), "-lf", filepath.Join(dir, "leases"),
		"-pf", filepath.Join(dir, "pid"), "-sf", script}
	if family == "-6" {
		args = append(args, "-D", "LL") // the DUID carries the MAC, as iPXE's does
	}
	out := spawn(t, ns, append(args, ifname)...)
	deadline := time.Now().Add(45 * time.Second)
	for {
		b, err := os.ReadFile(bound)
		if err == nil {
			env := map[string]string{}
			sc := bufio.NewScanner(bytes.NewReader(b))
			for sc.Scan() {
				if k, v, ok := strings.Cut(sc.Text(), "="); ok {
					env[k] = v
				}
			}
			return env
		}
		if time.Now().After(deadline) {
			t.Fatalf("dhclient %s got no lease through the relay:\n%s", family, out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestRelayedWithISCRelay puts Debian's ISC dhcrelay between a real DHCP
// client and a relayed-only pixie, the way a leaf's dhcp_relay serves a
// routed PXE network:
//
//	client ns ──veth── relay ns (dhcrelay -4 / -6, forwarding) ──veth── pixie
//	PXE net, leased    "Vlan4000": <pxe>.1, <pxe6>::1                  management address only,
//	                   upstream:   <mgmt>.1, <mgmt6>::1                routes to the PXE net via the relay
func TestRelayedWithISCRelay(t *testing.T) {
	nettest.Skip(t)
	for _, bin := range []string{"dhcrelay", "dhclient"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("needs %s (apt-get install isc-dhcp-relay isc-dhcp-client): %v", bin, err)
		}
	}
	b := randBytes(3)
	n4, n6 := int(b[0])%250+1, int(b[1])<<8|int(b[2])
	var (
		mgmt4  = fmt.Sprintf("198.19.%d", n4)
		pxe4   = fmt.Sprintf("100.64.%d", n4)
		mgmt6  = fmt.Sprintf("fd60:%x", n6)
		pxe6   = fmt.Sprintf("fd61:%x", n6)
		srv4   = mgmt4 + ".11"
		srv6   = mgmt6 + "::11"
		leaf4  = pxe4 + ".1"
		leaf6  = pxe6 + "::1"
		relay4 = mgmt4 + ".1"
		relay6 = mgmt6 + "::1"
	)
	// Pixie's side: the test's namespace holds its management address only.
	up := nettest.NewLink(t, []string{srv4 + "/24", srv6 + "/64"}, []string{relay4 + "/24", relay6 + "/64"})
	relayNS := up.NS
	// The client's link: its far end moves into the relay's namespace,
	// where it plays the leaf's Vlan4000.
	down := nettest.NewLink(t, nil, nil)
	vlan := down.Host
	run(t, "ip", "link", "set", vlan, "netns", relayNS)
	run(t, "ip", "netns", "exec", relayNS, "sh", "-c", "echo 0 > /proc/sys/net/ipv6/conf/"+vlan+"/accept_dad && sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
	run(t, "ip", "-n", relayNS, "addr", "add", leaf4+"/24", "dev", vlan)
	run(t, "ip", "-n", relayNS, "addr", "add", leaf6+"/64", "dev", vlan, "nodad")
	run(t, "ip", "-n", relayNS, "link", "set", vlan, "up")
	run(t, "ip", "route", "add", pxe4+".0/24", "via", relay4, "dev", up.Host)
	run(t, "ip", "-6", "route", "add", pxe6+"::/64", "via", relay6, "dev", up.Host)
	t.Cleanup(func() {
		_ = exec.Command("ip", "route", "del", pxe4+".0/24").Run()
		_ = exec.Command("ip", "-6", "route", "del", pxe6+"::/64").Run()
	})

	// Central and pixie.
	ups := &upstream{files: map[string][]byte{"/vmlinuz": randBytes(1000), "/initramfs": randBytes(1000)}}
	us := httptest.NewServer(ups)
	t.Cleanup(us.Close)
	c := &central{
		doc:   &agentv1.PixieDocument{PartitionId: "p1", KernelUrl: us.URL + "/vmlinuz", InitramfsUrl: us.URL + "/initramfs", Cmdline: "console=ttyS0"},
		boots: map[string]*agentv1.BootResponse{},
	}
	c.boots[down.PeerMAC.String()] = &agentv1.BootResponse{Action: agentv1.BootAction_BOOT_ACTION_INSTALLER, MachineId: "m1",
		KernelUrl: c.doc.KernelUrl, InitramfsUrl: c.doc.InitramfsUrl, Cmdline: "console=ttyS0", BootToken: "mfb_relayed"}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	agentv1.RegisterAgentServiceServer(gs, c)
	go func() { _ = gs.Serve(lis) }()
	t.Cleanup(gs.Stop)
	r4, _ := lease.ParseRange(pxe4 + ".100-" + pxe4 + ".150")
	r6, _ := lease.ParseRange(pxe6 + "::100-" + pxe6 + "::1ff")
	cfg := Config{
		Name: "pixie-test", Centrals: []string{lis.Addr().String()}, Token: pixieToken, StateDir: t.TempDir(),
		Interface: up.Host, RelayedOnly: true,
		Range4: r4, ServerIP: netip.MustParseAddr(srv4), Subnet: netip.MustParsePrefix(pxe4 + ".0/24"), Routers: []netip.Addr{netip.MustParseAddr(leaf4)},
		Range6: r6, ServerIP6: netip.MustParseAddr(srv6), Subnet6: netip.MustParsePrefix(pxe6 + "::/64"),
		LeaseTime: 10 * time.Minute, TFTPListen: ":69", IPXEDir: ipxeDir(t), HTTPListen: ":0", BootTimeout: time.Second,
		Log:          slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
		AgentBackoff: 300 * time.Millisecond,
	}
	p, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	if err := p.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	defer func() {
		cancel()
		if err := p.Wait(); err != nil {
			t.Errorf("pixie stopped with %v", err)
		}
	}()
	var port4, port6 int
	for _, a := range p.HTTPAddrs() {
		ta := a.(*net.TCPAddr)
		switch ta.IP.String() {
		case srv4:
			port4 = ta.Port
		case srv6:
			port6 = ta.Port
		default:
			t.Fatalf("HTTP listens on %v, want only the server addresses", a)
		}
	}
	if port4 == 0 || port6 == 0 {
		t.Fatalf("HTTP listens on %v, want %s and %s", p.HTTPAddrs(), srv4, srv6)
	}
	waitFor(t, "pixie document", func() bool { return p.Document() != nil })

	// The leaf's relays: giaddr and link-address are Vlan4000's addresses.
	spawn(t, relayNS, "dhcrelay", "-4", "-d", "--no-pid", "-a", "-id", vlan, "-iu", up.Peer, srv4)
	spawn(t, relayNS, "dhcrelay", "-6", "-d", "--no-pid", "-l", vlan, "-u", srv6+"%"+up.Peer)
	mac := down.PeerMAC.String()

	var addr4 string
	t.Run("dhclient -4 through dhcrelay: address, router, next-server, boot file", func(t *testing.T) {
		env := dhclientEnv(t, down.NS, down.Peer, "-4", `option pxe-arch code 93 = unsigned integer 16;
send pxe-arch 0;
send vendor-class-identifier "PXEClient:Arch:00000:UNDI:002001";
`)
		addr4 = env["new_ip_address"]
		if a, err := netip.ParseAddr(addr4); err != nil || !r4.Contains(a) {
			t.Fatalf("address %q, want one of %s (env %v)", addr4, r4, env)
		}
		for k, want := range map[string]string{
			"new_routers": leaf4, "new_subnet_mask": "255.255.255.0", "new_dhcp_server_identifier": srv4,
			"new_next_server": srv4, "new_filename": "undionly.kpxe",
		} {
			if env[k] != want {
				t.Errorf("%s = %q, want %q", k, env[k], want)
			}
		}
		if l, ok := p.Leases().ByMAC(mac, false); !ok || l.Addr.String() != addr4 || !l.Active(time.Now()) {
			t.Fatalf("pixie's lease for %s: %+v %v, want %s", mac, l, ok, addr4)
		}
	})

	t.Run("dhclient -6 through dhcrelay: address and boot file URL", func(t *testing.T) {
		// ISC dhclient knows no User Class for DHCPv6: declared here, sent
		// as iPXE sends it (RFC 8415 21.15: length-prefixed "iPXE").
		env := dhclientEnv(t, down.NS, down.Peer, "-6", `option dhcp6.user-class code 15 = string;
send dhcp6.user-class 00:04:69:50:58:45;
also request dhcp6.bootfile-url;
`)
		a, err := netip.ParseAddr(env["new_ip6_address"])
		if err != nil || !r6.Contains(a) {
			t.Fatalf("address %q, want one of %s (env %v)", env["new_ip6_address"], r6, env)
		}
		want := fmt.Sprintf("http://[%s]:%d/ipxe/boot.ipxe?mac=%s", srv6, port6, strings.ReplaceAll(mac, ":", "%3A"))
		if got := env["new_dhcp6_bootfile_url"]; got != want {
			t.Errorf("boot file URL %q, want %q", got, want)
		}
		if l, ok := p.Leases().ByMAC(mac, true); !ok || l.Addr != a {
			t.Fatalf("pixie's IPv6 lease for %s: %+v %v, want %s", mac, l, ok, a)
		}
	})
	if addr4 == "" {
		t.FailNow()
	}

	t.Run("the machine fetches script and iPXE from pixie, routed through the leaf", func(t *testing.T) {
		down.AddPeerAddr(t, addr4+"/24")
		run(t, "ip", "-n", down.NS, "route", "add", "default", "via", leaf4)
		base := fmt.Sprintf("http://%s:%d", srv4, port4)
		hc := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
			DialContext: func(ctx context.Context, network, to string) (net.Conn, error) {
				var conn net.Conn
				err := down.Do(func() (err error) {
					conn, err = (&net.Dialer{}).DialContext(ctx, "tcp4", to)
					return err
				})
				return conn, err
			}}}
		resp, err := hc.Get(base + "/ipxe/boot.ipxe?mac=" + mac + "&arch=bios")
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || !strings.Contains(string(body), "kernel "+base+"/boot/vmlinuz console=ttyS0 metal.pixie="+base+" metal.boot_token=mfb_relayed") {
			t.Fatalf("script (%d):\n%s", resp.StatusCode, body)
		}
		var got bytes.Buffer
		if err := down.Do(func() error {
			tc, err := tftp.NewClient(srv4 + ":69")
			if err != nil {
				return err
			}
			tc.SetTimeout(2 * time.Second)
			wt, err := tc.Receive("undionly.kpxe", "octet")
			if err != nil {
				return err
			}
			_, err = wt.WriteTo(&got)
			return err
		}); err != nil {
			t.Fatalf("tftp through the leaf: %v", err)
		}
		if want, _ := os.ReadFile(filepath.Join(cfg.IPXEDir, "undionly.kpxe")); !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("tftp: %d bytes, want the file's %d", got.Len(), len(want))
		}
	})

	t.Run("a broadcast DISCOVER on the management network gets nothing", func(t *testing.T) {
		var cl *nclient4.Client
		if err := up.Do(func() (err error) {
			cl, err = nclient4.New(up.Peer, nclient4.WithTimeout(time.Second), nclient4.WithRetry(2))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		dctx, dcancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer dcancel()
		if offer, err := cl.DiscoverOffer(dctx); err == nil {
			t.Fatalf("management host got an offer: %s", offer.Summary())
		}
		if _, ok := p.Leases().ByMAC(up.PeerMAC.String(), false); ok {
			t.Fatal("management host has a lease")
		}
	})

	t.Run("an unrelayed DISCOVER sent to pixie's address is ignored and counted", func(t *testing.T) {
		before := requests(t, p, "dhcp4", "not_relayed")
		hw, _ := net.ParseMAC("52:54:00:00:77:01")
		d, err := dhcpv4.NewDiscovery(hw)
		if err != nil {
			t.Fatal(err)
		}
		if err := up.Do(func() error {
			conn, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.ParseIP(srv4), Port: 67})
			if err != nil {
				return err
			}
			defer conn.Close()
			if _, err := conn.Write(d.ToBytes()); err != nil {
				return err
			}
			_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
			if n, err := conn.Read(make([]byte, 1500)); err == nil {
				return fmt.Errorf("got a %d-byte answer", n)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "not_relayed counted", func() bool { return requests(t, p, "dhcp4", "not_relayed") == before+1 })
	})
}

// requests reads metalfleet_pixie_requests_total{kind,result} from p.
func requests(t *testing.T, p *Pixie, kind, result string) float64 {
	t.Helper()
	mfs, err := p.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "metalfleet_pixie_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["kind"] == kind && labels["result"] == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
