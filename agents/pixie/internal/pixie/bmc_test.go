package pixie

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/metalfleet/metalfleet/agents/agent/nettest"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/lease"
)

// TestBMCNetworkOverRealNetwork: pixie serves the PXE network on one link
// and the BMC network on another, both from one lease store. A BMC gets an
// address of the BMC pool and no boot answer even when it claims to be a
// PXE client; a machine on the PXE link still gets its boot file; the BMC's
// lease is in leases.json (metal-bmc's --lease-file) and is renewed there.
func TestBMCNetworkOverRealNetwork(t *testing.T) {
	h := newHarness(t)
	n := int(randBytes(1)[0])%250 + 1
	bmcIP := fmt.Sprintf("198.19.%d.1", n)
	bmc := nettest.NewLink(t, []string{bmcIP + "/24"}, nil)
	r, _ := lease.ParseRange(fmt.Sprintf("198.19.%d.100-198.19.%d.109", n, n))
	h.cfg.BMC = BMCNetwork{Interface: bmc.Host, Range: r, LeaseTime: 4 * time.Second}
	h.start()
	defer h.shutdown()

	pxe := []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64))}
	var c *nclient4.Client
	if err := bmc.Do(func() (err error) {
		c, err = nclient4.New(bmc.Peer, nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(4))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	l, err := c.Request(ctx, pxe...)
	if err != nil {
		t.Fatalf("BMC's DHCP: %v", err)
	}
	ack := l.ACK
	addr, _ := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !r.Contains(addr) || !ack.ServerIdentifier().Equal(net.ParseIP(bmcIP)) {
		t.Fatalf("BMC's ack: %s, want an address of %s from %s", ack.Summary(), r, bmcIP)
	}
	if ack.BootFileNameOption() != "" || ack.BootFileName != "" || ack.ClassIdentifier() != "" {
		t.Fatalf("the BMC network got a boot answer: %s", ack.Summary())
	}
	if lt := ack.IPAddressLeaseTime(0); lt != 4*time.Second {
		t.Fatalf("BMC lease time %v, want --bmc-lease-time's 4s", lt)
	}

	// The PXE network is served as before, from its own pool.
	m := h.dhcp4("52:54:00:bb:00:01", pxe...)
	if a, _ := netip.AddrFromSlice(m.ACK.YourIPAddr.To4()); !h.cfg.Range4.Contains(a) || m.ACK.BootFileNameOption() != "ipxe.efi" {
		t.Fatalf("PXE ack: %s", m.ACK.Summary())
	}

	// The lease file metal-bmc reads: the BMC by its MAC; a renewal
	// (as the BMC sends it, with its address bound) moves the expiry on.
	bmcLease := func() lease.Lease {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(h.cfg.StateDir, "leases.json"))
		if err != nil {
			t.Fatal(err)
		}
		all, err := lease.Decode(b)
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range all {
			if x.MAC == bmc.PeerMAC.String() {
				return x
			}
		}
		t.Fatalf("no lease of the BMC's MAC %s in leases.json: %+v", bmc.PeerMAC, all)
		return lease.Lease{}
	}
	first := bmcLease()
	if first.Addr != addr {
		t.Fatalf("leases.json: BMC at %s, want %s", first.Addr, addr)
	}
	bmc.AddPeerAddr(t, addr.String()+"/24")
	time.Sleep(1100 * time.Millisecond)
	renewed, err := c.Renew(ctx, l)
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	if !renewed.ACK.YourIPAddr.Equal(ack.YourIPAddr) {
		t.Fatalf("renewal moved the BMC to %s", renewed.ACK.YourIPAddr)
	}
	if again := bmcLease(); !again.Expires.After(first.Expires) || again.Addr != addr {
		t.Fatalf("after the renewal leases.json has %+v, want %s expiring after %s", again, addr, first.Expires)
	}
}
