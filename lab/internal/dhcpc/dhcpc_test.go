package dhcpc

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/vishvananda/netlink"

	"github.com/metalfleet/metalfleet/agents/agent/nettest"
)

// server is a DHCPv4 server the test steers: the address it hands out,
// its lease time, and whether it answers, refuses (NAK) or stays silent.
type server struct {
	ip string // its own, the server identifier

	mu        sync.Mutex
	give      string
	lease     time.Duration
	mode      string // ok, nak, silent
	discovers int
	renewals  int
}

func (s *server) set(f func(s *server)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(s)
}

func (s *server) counts() (discovers, renewals int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.discovers, s.renewals
}

func (s *server) handle(conn net.PacketConn, _ net.Addr, m *dhcpv4.DHCPv4) {
	s.mu.Lock()
	give, lt, mode := s.give, s.lease, s.mode
	mt := dhcpv4.MessageTypeOffer
	switch m.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		s.discovers++
	case dhcpv4.MessageTypeRequest:
		mt = dhcpv4.MessageTypeAck
		if !m.ClientIPAddr.IsUnspecified() {
			s.renewals++
		}
	default:
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	if mode == "silent" {
		return
	}
	mods := []dhcpv4.Modifier{dhcpv4.WithMessageType(mt), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(s.ip)))}
	if mode == "nak" && mt == dhcpv4.MessageTypeAck {
		mods = []dhcpv4.Modifier{dhcpv4.WithMessageType(dhcpv4.MessageTypeNak), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(s.ip))),
			dhcpv4.WithOption(dhcpv4.OptMessage("address gone"))}
	} else {
		mods = append(mods, dhcpv4.WithYourIP(net.ParseIP(give)), dhcpv4.WithNetmask(net.CIDRMask(24, 32)),
			dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(lt)))
	}
	resp, err := dhcpv4.NewReplyFromRequest(m, mods...)
	if err != nil {
		return
	}
	dst := &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
	if !m.ClientIPAddr.IsUnspecified() && resp.MessageType() == dhcpv4.MessageTypeAck {
		dst.IP = m.ClientIPAddr
	}
	_, _ = conn.WriteTo(resp.ToBytes(), dst)
}

// addrs are the IPv4 addresses on the client's interface, with their
// valid lifetime.
func addrs(t *testing.T, link *nettest.Link) map[string]int {
	t.Helper()
	out := map[string]int{}
	if err := link.Do(func() error {
		l, err := netlink.LinkByName(link.Peer)
		if err != nil {
			return err
		}
		as, err := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range as {
			out[a.IPNet.String()] = a.ValidLft
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return out
}

func waitFor(t *testing.T, timeout time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func subnet() int {
	b := make([]byte, 1)
	_, _ = rand.Read(b)
	return int(b[0])%250 + 1
}

// start runs a client on link's peer end; it stops with the test.
func start(t *testing.T, link *nettest.Link, leases chan<- Lease) *Client {
	t.Helper()
	var c *Client
	if err := link.Do(func() (err error) {
		c, err = New(Config{Interface: link.Peer, Hostname: "bmc-test", Exchange: 2 * time.Second, MaxBackoff: 2 * time.Second,
			Log:     slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
			OnLease: func(l Lease) { leases <- l }})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return c
}

// TestLeaseLife: the client binds what the server offers (the address
// on its interface, with the lease's lifetime), renews it at T1, gives it
// up on a NAK and binds the next one, and drops it when the server stops
// answering until it expires — then finds the server again.
func TestLeaseLife(t *testing.T) {
	n := subnet()
	srv := &server{ip: fmt.Sprintf("198.18.%d.1", n), give: fmt.Sprintf("198.18.%d.50", n), lease: 4 * time.Second, mode: "ok"}
	link := nettest.NewLink(t, []string{srv.ip + "/24"}, nil)
	s, err := server4.NewServer(link.Host, &net.UDPAddr{IP: net.IPv4zero, Port: dhcpv4.ServerPort}, srv.handle)
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve() }()
	t.Cleanup(func() { s.Close() })

	leases := make(chan Lease, 100)
	c := start(t, link, leases)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	l, err := c.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := fmt.Sprintf("198.18.%d.50/24", n)
	if l.Addr.String() != first || l.Server.String() != srv.ip || l.Expires.Sub(l.Bound) != 4*time.Second || l.Renew.Sub(l.Bound) != 2*time.Second {
		t.Fatalf("lease %+v", l)
	}
	if lft, ok := addrs(t, link)[first]; !ok || lft < 1 || lft > 4 {
		t.Fatalf("interface addresses %v: want %s with a lifetime of at most the lease's 4 s", addrs(t, link), first)
	}

	// Renewed at T1 (2 s): the address stays, past the first expiry.
	waitFor(t, 10*time.Second, "two renewals", func() bool { _, r := srv.counts(); return r >= 2 })
	if d, _ := srv.counts(); d != 1 {
		t.Fatalf("%d DISCOVERs: a renewal must not start over", d)
	}
	if cur, ok := c.Lease(); !ok || cur.Addr.String() != first || !cur.Expires.After(l.Expires) {
		t.Fatalf("after renewals: %+v, want %s beyond %s", cur, first, l.Expires)
	}

	// A NAK at the next renewal: the address goes, the next one comes.
	second := fmt.Sprintf("198.18.%d.51/24", n)
	srv.set(func(s *server) { s.mode = "nak" })
	waitFor(t, 10*time.Second, "the address given up after the NAK", func() bool { _, ok := addrs(t, link)[first]; return !ok })
	srv.set(func(s *server) { s.mode, s.give = "ok", fmt.Sprintf("198.18.%d.51", n) })
	waitFor(t, 15*time.Second, "the new address", func() bool { cur, _ := c.Lease(); return cur.Addr.String() == second })
	if as := addrs(t, link); len(as) != 1 || as[second] == 0 {
		t.Fatalf("interface addresses %v, want only %s", as, second)
	}

	// Silence: renewals go unanswered until the lease expires; the
	// address goes with it. Then the server answers again.
	srv.set(func(s *server) { s.mode = "silent" })
	waitFor(t, 15*time.Second, "the expired address removed", func() bool { _, ok := c.Lease(); return !ok && len(addrs(t, link)) == 0 })
	srv.set(func(s *server) { s.mode = "ok" })
	waitFor(t, 15*time.Second, "an address again", func() bool { _, ok := c.Lease(); return ok })

	// OnLease saw every change (renewals repeat the address).
	var seen []string
	for len(leases) > 0 {
		a := (<-leases).Addr.String()
		if len(seen) == 0 || seen[len(seen)-1] != a {
			seen = append(seen, a)
		}
	}
	if want := []string{first, "invalid Prefix", second, "invalid Prefix", second}; fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("OnLease saw %v, want %v", seen, want)
	}
}

// TestLeaseFromMetalPixie: the client against the real metal-pixie binary
// serving the BMC network (no central needed for DHCP: its agent keeps
// trying to connect meanwhile). The BMC's address comes from
// --bmc-dhcp4-range, its renewals keep it, and pixie's leases.json —
// metal-bmc's --lease-file — holds it under the BMC's MAC, active.
func TestLeaseFromMetalPixie(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs metal-pixie")
	}
	nettest.Skip(t)
	bin := filepath.Join(t.TempDir(), "metal-pixie")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/metalfleet/metalfleet/agents/pixie/cmd/metal-pixie").CombinedOutput(); err != nil {
		t.Fatalf("go build metal-pixie: %v\n%s", err, out)
	}
	n := subnet()
	srvIP := fmt.Sprintf("198.19.%d.1", n)
	link := nettest.NewLink(t, []string{srvIP + "/24"}, nil)
	state := t.TempDir()
	p := exec.Command(bin, "--name", "pixie-test", "--central", "127.0.0.1:1", "--insecure-plaintext", "--token", "unused",
		"--state-dir", state, "--tftp-listen", "", "--http-listen", "127.0.0.1:0",
		"--bmc-interface", link.Host, "--bmc-dhcp4-range", fmt.Sprintf("198.19.%d.100-198.19.%d.109", n, n), "--bmc-lease-time", "4s")
	p.Stdout, p.Stderr = t.Output(), t.Output()
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Process.Kill(); _ = p.Wait() })

	c := start(t, link, make(chan Lease, 100))
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	l, err := c.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if a := l.Addr.Addr(); l.Addr.Bits() != 24 || l.Server.String() != srvIP || a.As4()[3] < 100 || a.As4()[3] > 109 {
		t.Fatalf("lease %+v: want an address of the BMC pool from %s", l, srvIP)
	}
	// Past the first expiry, kept by renewals, in the lease file.
	time.Sleep(time.Until(l.Expires) + time.Second)
	cur, ok := c.Lease()
	if !ok || cur.Addr != l.Addr || !cur.Expires.After(l.Expires) {
		t.Fatalf("after the first lease's expiry: %+v (ok %v), want %s renewed", cur, ok, l.Addr)
	}
	b, err := os.ReadFile(filepath.Join(state, "leases.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Leases []struct {
			MAC     string     `json:"mac"`
			Addr    netip.Addr `json:"addr"`
			Expires time.Time  `json:"expires"`
		} `json:"leases"`
	}
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if len(f.Leases) != 1 || f.Leases[0].MAC != link.PeerMAC.String() || f.Leases[0].Addr != l.Addr.Addr() || !f.Leases[0].Expires.After(time.Now()) {
		t.Fatalf("leases.json: %s\nwant the BMC %s at %s, active", b, link.PeerMAC, l.Addr.Addr())
	}
}
