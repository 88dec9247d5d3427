// Package nettest gives tests a real link to talk over: a veth pair whose
// one end stays in the test's network namespace (where the server under
// test listens) and whose other end lives in a fresh namespace (where the
// test's client runs). Everything made is deleted in t.Cleanup.
package nettest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// Link is a veth pair between the test's namespace and NS.
type Link struct {
	NS         string
	Host, Peer string
	PeerMAC    net.HardwareAddr
	handle     netns.NsHandle
}

// Skip skips t unless it runs as root with iproute2 (network namespaces
// and veth need both).
func Skip(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces and veth pairs")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2 (ip)")
	}
}

func ip(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// NewLink makes the pair and assigns hostAddrs (CIDR) to the host end and
// peerAddrs to the peer end. IPv6 duplicate address detection is off on
// both ends, so addresses (link-local ones too) are usable at once.
func NewLink(t testing.TB, hostAddrs, peerAddrs []string) *Link {
	t.Helper()
	Skip(t)
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	id := hex.EncodeToString(b)
	l := &Link{NS: "pxt-" + id, Host: "pxh" + id, Peer: "pxp" + id}
	ip(t, "netns", "add", l.NS)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", l.NS).Run() })
	ip(t, "link", "add", l.Host, "type", "veth", "peer", "name", l.Peer, "netns", l.NS)
	// Deleting the namespace deletes the peer and with it the pair; this
	// covers a test that dies between the two.
	t.Cleanup(func() { _ = exec.Command("ip", "link", "del", l.Host).Run() })
	if err := os.WriteFile("/proc/sys/net/ipv6/conf/"+l.Host+"/accept_dad", []byte("0"), 0o644); err != nil {
		t.Fatalf("disable DAD on %s: %v", l.Host, err)
	}
	if out, err := exec.Command("ip", "netns", "exec", l.NS, "sh", "-c", "echo 0 > /proc/sys/net/ipv6/conf/"+l.Peer+"/accept_dad").CombinedOutput(); err != nil {
		t.Fatalf("disable DAD on %s: %v: %s", l.Peer, err, out)
	}
	for _, a := range hostAddrs {
		ip(t, addrArgs(a, "", l.Host)...)
	}
	for _, a := range peerAddrs {
		l.AddPeerAddr(t, a)
	}
	ip(t, "link", "set", l.Host, "up")
	ip(t, "-n", l.NS, "link", "set", "lo", "up")
	ip(t, "-n", l.NS, "link", "set", l.Peer, "up")
	h, err := netns.GetFromName(l.NS)
	if err != nil {
		t.Fatalf("open namespace %s: %v", l.NS, err)
	}
	l.handle = h
	t.Cleanup(func() { h.Close() })
	if err := l.Do(func() error {
		ifi, err := net.InterfaceByName(l.Peer)
		if err == nil {
			l.PeerMAC = ifi.HardwareAddr
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return l
}

func addrArgs(cidr, ns, dev string) []string {
	args := []string{}
	if ns != "" {
		args = append(args, "-n", ns)
	}
	args = append(args, "addr", "add", cidr, "dev", dev)
	if strings.Contains(cidr, ":") {
		args = append(args, "nodad")
	}
	return args
}

// AddPeerAddr assigns cidr to the peer end (what a DHCP client would do
// with its lease).
func (l *Link) AddPeerAddr(t testing.TB, cidr string) {
	t.Helper()
	ip(t, addrArgs(cidr, l.NS, l.Peer)...)
}

// Do runs f on an OS thread switched into the peer's namespace. Sockets f
// opens stay in that namespace after Do returns, so a client made in f
// can be used from any goroutine.
func (l *Link) Do(f func() error) error {
	done := make(chan error, 1)
	// A goroutine of its own: should leaving the namespace fail, it exits
	// still locked, and Go throws its thread away instead of reusing it.
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			done <- fmt.Errorf("current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(l.handle); err != nil {
			done <- fmt.Errorf("enter %s: %w", l.NS, err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			done <- fmt.Errorf("leave %s: %w", l.NS, err)
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}
