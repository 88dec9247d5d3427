package facts

import (
	"context"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// inNetns runs fn on a goroutine whose thread is moved into a new network
// namespace. The thread is never unlocked, so it exits with the goroutine
// and the namespace (with everything created in it) goes away with it.
func inNetns(t *testing.T, fn func() error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	errc := make(chan error, 1)
	skip := make(chan string, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			skip <- "cannot create a network namespace: " + err.Error()
			return
		}
		errc <- fn()
	}()
	select {
	case s := <-skip:
		t.Skip(s)
	case err := <-errc:
		if err != nil {
			t.Fatal(err)
		}
	}
}

func vethPair(a, b string) error {
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a}, PeerName: b}); err != nil {
		return err
	}
	for _, n := range []string{a, b} {
		l, err := netlink.LinkByName(n)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
	}
	return nil
}

// TestNeighboursVeth sends hand-built LLDP frames into one end of a veth
// pair and has Neighbours find them on the other end: a live neighbour,
// one announcing its shutdown (TTL 0), and junk with the LLDP ethertype.
func TestNeighboursVeth(t *testing.T) {
	var got map[string][]*agentv1.LLDPNeighbour
	var nerr error
	inNetns(t, func() error {
		if err := vethPair("sw0", "srv0"); err != nil {
			return err
		}
		if err := vethPair("sw1", "srv1"); err != nil {
			return err
		}
		ifi, err := net.InterfaceByName("sw0")
		if err != nil {
			return err
		}
		tx, err := packet.Listen(ifi, packet.Raw, lldpEtherType, nil)
		if err != nil {
			return err
		}
		defer tx.Close()
		frames := [][]byte{
			frame(nearestBridge, tlv(tlvChassisID, sub(7, "leaf-gone")...), tlv(tlvPortID, sub(5, "swp9")...), ttl(0), tlv(tlvEnd)),
			frame(nearestBridge, []byte{0xde, 0xad}),
			frame(nearestBridge, tlv(tlvChassisID, 4, 0x0c, 0x42, 0xa1, 0, 0, 1), tlv(tlvPortID, sub(5, "swp1")...), ttl(120),
				tlv(tlvSysName, []byte("leaf01")...), tlv(tlvPortDesc, []byte("server eth0")...), tlv(tlvEnd)),
		}
		stop := make(chan struct{})
		done := make(chan struct{})
		go func() {
			defer close(done)
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			for {
				for _, f := range frames {
					_, _ = tx.WriteTo(f, &packet.Addr{HardwareAddr: nearestBridge})
				}
				select {
				case <-stop:
					return
				case <-tick.C:
				}
			}
		}()
		// srv1 hears nobody: Neighbours waits it out and reports nothing
		// for it; "nosuch" cannot be opened and lands in the error.
		got, nerr = Neighbours(context.Background(), []string{"srv0", "srv1", "nosuch"}, 2*time.Second)
		close(stop)
		<-done
		return nil
	})
	if nerr == nil || !strings.Contains(nerr.Error(), "nosuch") {
		t.Errorf("error = %v, want one naming the missing interface", nerr)
	}
	want := []*agentv1.LLDPNeighbour{{ChassisId: "0c:42:a1:00:00:01", PortId: "swp1", SystemName: "leaf01", PortDescription: "server eth0"}}
	if len(got["srv0"]) != 1 || !proto.Equal(got["srv0"][0], want[0]) {
		t.Errorf("srv0 learned %v, want %v", got["srv0"], want)
	}
	if ns, ok := got["srv1"]; !ok || len(ns) != 0 {
		t.Errorf("srv1 learned %v (present %v), want an empty entry", ns, ok)
	}
	if _, ok := got["nosuch"]; ok {
		t.Errorf("result has an entry for an interface that does not exist")
	}
}

// A single interface returns as soon as it heard a neighbour, long before
// the wait is over.
func TestNeighboursReturnsEarly(t *testing.T) {
	var elapsed time.Duration
	var got map[string][]*agentv1.LLDPNeighbour
	inNetns(t, func() error {
		if err := vethPair("sw0", "srv0"); err != nil {
			return err
		}
		ifi, err := net.InterfaceByName("sw0")
		if err != nil {
			return err
		}
		tx, err := packet.Listen(ifi, packet.Raw, lldpEtherType, nil)
		if err != nil {
			return err
		}
		defer tx.Close()
		go func() {
			time.Sleep(100 * time.Millisecond)
			_, _ = tx.WriteTo(frame(nearestBridge, tlv(tlvChassisID, sub(7, "leaf02")...), tlv(tlvPortID, sub(5, "swp2")...), ttl(120)),
				&packet.Addr{HardwareAddr: nearestBridge})
		}()
		start := time.Now()
		var err2 error
		got, err2 = Neighbours(context.Background(), []string{"srv0"}, time.Minute)
		elapsed = time.Since(start)
		return err2
	})
	if len(got["srv0"]) != 1 || got["srv0"][0].ChassisId != "leaf02" {
		t.Errorf("learned %v, want leaf02", got)
	}
	if elapsed > 30*time.Second {
		t.Errorf("Neighbours took %v although the only interface heard a neighbour", elapsed)
	}
}
