package netlab

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func needRoot(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return "mft-" + hex.EncodeToString(b) + "-"
}

// TestRoutedThroughBridgeAndRouter builds a small routed network, as the
// lab does: A ── bridge in B ── R (router) ── C, and talks TCP from A to C
// over IPv4 and IPv6, then deletes everything.
func TestRoutedThroughBridgeAndRouter(t *testing.T) {
	p := needRoot(t)
	ns := func(s string) string { return p + s }
	for _, n := range []string{"a", "b", "r", "c"} {
		if err := CreateNS(ns(n)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = DeleteNS(ns(n)) })
	}
	if err := CreateNS(ns("a")); err == nil {
		t.Fatal("creating an existing namespace succeeded")
	}
	steps := []error{
		Veth(End{NS: ns("a"), Name: "eth0", MAC: "52:54:00:00:00:0a"}, End{NS: ns("b"), Name: "p1"}),
		Veth(End{NS: ns("r"), Name: "down"}, End{NS: ns("b"), Name: "p2"}),
		Veth(End{NS: ns("r"), Name: "up"}, End{NS: ns("c"), Name: "eth0"}),
		Bridge(ns("b"), "br0", "p1", "p2"),
		Tap(ns("b"), "tap0", "br0"),
		Addr(ns("a"), "eth0", "10.9.1.2/24", "fd00:9:1::2/64"),
		Addr(ns("r"), "down", "10.9.1.1/24", "fd00:9:1::1/64"),
		Addr(ns("r"), "up", "10.9.2.1/24", "fd00:9:2::1/64"),
		Addr(ns("c"), "eth0", "10.9.2.2/24", "fd00:9:2::2/64"),
		Sysctl(ns("r"), "net/ipv4/ip_forward", "1"),
		Sysctl(ns("r"), "net/ipv6/conf/all/forwarding", "1"),
		Route(ns("a"), "10.9.2.0/24", "10.9.1.1"),
		Route(ns("a"), "fd00:9:2::/64", "fd00:9:1::1"),
		Route(ns("c"), "10.9.1.0/24", "10.9.2.1"),
		Route(ns("c"), "fd00:9:1::/64", "fd00:9:2::1"),
	}
	for i, err := range steps {
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	// The router's link-local addresses are usable at once: while one is
	// tentative, the kernel sends no neighbour solicitation on its link
	// and forwarded packets fail with "no route to host".
	if err := Do(ns("r"), func() error {
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_V6)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if a.IP.IsLinkLocalUnicast() && a.Flags&unix.IFA_F_TENTATIVE != 0 {
				return fmt.Errorf("%s is tentative", a.IPNet)
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("addresses of r: %v", err)
	}
	links, err := Links(ns("b"))
	if err != nil || !slices.Contains(links, "tap0") || !slices.Contains(links, "br0") {
		t.Fatalf("links of b = %v, %v", links, err)
	}
	if err := Route(ns("a"), "10.9.3.0/24", "nonsense"); err == nil {
		t.Fatal("route with a bad gateway accepted")
	}

	for _, addr := range []string{"10.9.2.2:7000", "[fd00:9:2::2]:7000"} {
		var l net.Listener
		if err := Do(ns("c"), func() (err error) { l, err = net.Listen("tcp", addr); return err }); err != nil {
			t.Fatal(err)
		}
		go func() {
			c, err := l.Accept()
			if err == nil {
				_, _ = c.Write([]byte("hello from c"))
				c.Close()
			}
		}()
		var c net.Conn
		if err := Do(ns("a"), func() (err error) { c, err = net.DialTimeout("tcp", addr, 5*time.Second); return err }); err != nil {
			t.Fatalf("dial %s from a: %v", addr, err)
		}
		b, _ := io.ReadAll(c)
		c.Close()
		l.Close()
		if string(b) != "hello from c" {
			t.Fatalf("read %q over %s", b, addr)
		}
	}

	// A process started in a namespace lives there.
	cmd := exec.Command("cat", "/proc/self/net/dev")
	var out strings.Builder
	cmd.Stdout = &out
	if err := Start(ns("b"), cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil || !strings.Contains(out.String(), "tap0") {
		t.Fatalf("process in b sees %q (%v)", out.String(), err)
	}

	listed, err := ListNS(p)
	if err != nil || len(listed) != 4 {
		t.Fatalf("ListNS = %v, %v", listed, err)
	}
	for _, n := range listed {
		if err := DeleteNS(n); err != nil {
			t.Fatal(err)
		}
	}
	if listed, _ := ListNS(p); len(listed) != 0 {
		t.Fatalf("namespaces left: %v", listed)
	}
	if err := DeleteNS(ns("a")); err != nil {
		t.Fatalf("deleting a missing namespace: %v", err)
	}
}
