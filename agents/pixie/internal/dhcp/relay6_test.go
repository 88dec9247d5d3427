package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/metalfleet/metalfleet/agents/pixie/internal/lease"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/metric"
)

// relayed6 is a pixie at fd00:172:30::11 on the management network
// serving the routed PXE network fd00:10:1::/64.
func relayed6(t testing.TB, relayedOnly bool) (*Server6, *prometheus.Registry) {
	t.Helper()
	st, _, _ := lease.Open("")
	reg := prometheus.NewRegistry()
	r, _ := lease.ParseRange("fd00:10:1::100-fd00:10:1::1ff")
	mac, _ := net.ParseMAC("02:00:00:00:00:11")
	s, err := NewServer6(Config6{
		Prefix: netip.MustParsePrefix("fd00:10:1::/64"), RelayedOnly: relayedOnly, ServerIP: netip.MustParseAddr("fd00:172:30::11"),
		ServerMAC: mac, Pool: lease.Pool{Range: r}, LeaseTime: time.Hour,
		Boot:   Boot{BaseURL: "http://[fd00:172:30::11]", TFTPHost: "[fd00:172:30::11]", BIOSFile: "undionly.kpxe", EFIFile: "ipxe.efi"},
		Leases: st, Metrics: metric.New(reg),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, reg
}

// forward wraps m in a Relay-Forward as a relay on link does.
func forward(m dhcpv6.DHCPv6, link, peer string, opts ...dhcpv6.Option) *dhcpv6.RelayMessage {
	hops := uint8(0)
	if r, ok := m.(*dhcpv6.RelayMessage); ok {
		hops = r.HopCount + 1
	}
	rm := &dhcpv6.RelayMessage{MessageType: dhcpv6.MessageTypeRelayForward, HopCount: hops, LinkAddr: net.ParseIP(link), PeerAddr: net.ParseIP(peer)}
	for _, o := range opts {
		rm.AddOption(o)
	}
	rm.AddOption(dhcpv6.OptRelayMessage(m))
	return rm
}

// reparse sends a message through its wire form, as the server gets it.
func reparse(t testing.TB, m dhcpv6.DHCPv6) *dhcpv6.RelayMessage {
	t.Helper()
	got, err := dhcpv6.FromBytes(m.ToBytes())
	if err != nil {
		t.Fatal(err)
	}
	return got.(*dhcpv6.RelayMessage)
}

// TestRelayed6: a Relay-Forward for the PXE network's link gets a
// Relay-Reply to the relay's port 547 with its Interface-ID, the address
// and boot file URL a client on pixie's own link gets, and a lease under
// the MAC the relay saw (RFC 6939) — not the one in the DUID, which may
// be another NIC's.
func TestRelayed6(t *testing.T) {
	s, reg := relayed6(t, true)
	duidMAC, _ := net.ParseMAC("52:54:00:00:00:99")
	wireMAC, _ := net.ParseMAC("52:54:00:00:00:77")
	ipxe := []dhcpv6.Modifier{dhcpv6.WithUserClass([]byte("iPXE")), dhcpv6.WithArchType(iana.EFI_BC)}
	relay := netip.MustParseAddrPort("[fd00:10:1::1]:547")
	ifid := dhcpv6.OptInterfaceID([]byte("Vlan4000"))

	sol, err := dhcpv6.NewSolicit(duidMAC, ipxe...)
	if err != nil {
		t.Fatal(err)
	}
	fw := reparse(t, forward(sol, "fd00:10:1::1", "fe80::5054:ff:fe00:77", ifid, dhcpv6.OptClientLinkLayerAddress(iana.HWTypeEthernet, wireMAC)))
	resp, to := s.HandleRelay(fw, relay)
	if resp == nil {
		t.Fatal("no answer to a relayed SOLICIT")
	}
	if to != relay {
		t.Fatalf("reply to %v, want %v", to, relay)
	}
	rep := reparse(t, resp)
	if rep.MessageType != dhcpv6.MessageTypeRelayReply || rep.HopCount != 0 || !rep.LinkAddr.Equal(net.ParseIP("fd00:10:1::1")) || !rep.PeerAddr.Equal(net.ParseIP("fe80::5054:ff:fe00:77")) {
		t.Fatalf("relay reply %s", rep.Summary())
	}
	if id := rep.Options.InterfaceID(); string(id) != "Vlan4000" {
		t.Fatalf("Interface-ID %q, want it back", id)
	}
	adv, ok := rep.Options.RelayMessage().(*dhcpv6.Message)
	if !ok || adv.Type() != dhcpv6.MessageTypeAdvertise || adv.TransactionID != sol.TransactionID {
		t.Fatalf("inner %v", rep.Options.RelayMessage())
	}
	if got, want := adv.Options.BootFileURL(), "http://[fd00:172:30::11]/ipxe/boot.ipxe?arch=efi&mac=52%3A54%3A00%3A00%3A00%3A77"; got != want {
		t.Fatalf("boot file URL %q, want %q (the MAC the relay saw)", got, want)
	}
	req, err := dhcpv6.NewRequestFromAdvertise(adv, ipxe...)
	if err != nil {
		t.Fatal(err)
	}
	resp, _ = s.HandleRelay(reparse(t, forward(req, "fd00:10:1::1", "fe80::5054:ff:fe00:77", ifid, dhcpv6.OptClientLinkLayerAddress(iana.HWTypeEthernet, wireMAC))), relay)
	reply, _ := reparse(t, resp).Options.RelayMessage().(*dhcpv6.Message)
	if reply == nil || reply.Type() != dhcpv6.MessageTypeReply {
		t.Fatalf("relayed REQUEST: %v", resp)
	}
	addr := reply.Options.OneIANA().Options.OneAddress().IPv6Addr.String()
	if l, ok := s.cfg.Leases.ByMAC(wireMAC.String(), true); !ok || l.Addr.String() != addr || !strings.HasPrefix(addr, "fd00:10:1::1") {
		t.Fatalf("lease for %s: %v %v, want %s", wireMAC, l, ok, addr)
	}

	// Without option 79 the MAC comes from the DUID, as on pixie's own link.
	sol2, _ := dhcpv6.NewSolicit(duidMAC, ipxe...)
	resp, _ = s.HandleRelay(reparse(t, forward(sol2, "fd00:10:1::1", "fe80::1")), relay)
	if adv, _ := reparse(t, resp).Options.RelayMessage().(*dhcpv6.Message); adv == nil || !strings.HasSuffix(adv.Options.BootFileURL(), "mac=52%3A54%3A00%3A00%3A00%3A99") {
		t.Fatalf("without option 79: %v", resp)
	}

	before := count(t, reg, "dhcp6", "not_relayed")
	if r := s.Handle(sol); r != nil || count(t, reg, "dhcp6", "not_relayed") != before+1 {
		t.Fatalf("relayed only: answered a SOLICIT no relay carried: %v", r)
	}
}

// TestRelayChains6 covers nesting (RFC 8415 §19–20), other links and
// what no conforming relay sends.
func TestRelayChains6(t *testing.T) {
	hw, _ := net.ParseMAC("52:54:00:00:00:55")
	sol, _ := dhcpv6.NewSolicit(hw)
	// A source port other than 547: the reply still goes to 547 unless
	// the relay asks otherwise.
	from := netip.MustParseAddrPort("[fd00:172:30::1]:40000")
	deep := dhcpv6.DHCPv6(sol)
	for range maxRelayDepth + 1 {
		deep = forward(deep, "fd00:10:1::1", "fe80::1")
	}
	replyForw := &dhcpv6.RelayMessage{MessageType: dhcpv6.MessageTypeRelayReply, LinkAddr: net.ParseIP("fd00:10:1::1"), PeerAddr: net.ParseIP("fe80::1")}
	replyForw.AddOption(dhcpv6.OptRelayMessage(sol))
	noMsg := &dhcpv6.RelayMessage{MessageType: dhcpv6.MessageTypeRelayForward, LinkAddr: net.ParseIP("fd00:10:1::1"), PeerAddr: net.ParseIP("fe80::1")}
	noMsg.AddOption(dhcpv6.OptInterfaceID([]byte("x")))

	for _, tc := range []struct {
		name   string
		msg    dhcpv6.DHCPv6
		result string
		ifids  []string // Interface-IDs in the reply, outermost first; nil = no reply
		to     string
	}{
		{"nested: leaf relay inside an aggregation relay",
			forward(forward(sol, "fd00:10:1::1", "fe80::5054:ff:fe00:55", dhcpv6.OptInterfaceID([]byte("Ethernet8"))), "fd00:172:30::1", "fd00:10:1::1", dhcpv6.OptInterfaceID([]byte("uplink"))),
			"advertise", []string{"uplink", "Ethernet8"}, "[fd00:172:30::1]:547"},
		{"leaf identifies the link by Interface-ID only: the next relay's link-address counts",
			forward(forward(sol, "::", "fe80::5054:ff:fe00:55", dhcpv6.OptInterfaceID([]byte("Vlan4000"))), "fd00:10:1::2", "fe80::2"),
			"advertise", []string{"", "Vlan4000"}, "[fd00:172:30::1]:547"},
		{"relay source port (RFC 8357): reply to the port it sent from",
			forward(sol, "fd00:10:1::1", "fe80::1", dhcpv6.OptRelayPort(1547)), "advertise", []string{""}, "[fd00:172:30::1]:1547"},
		{"relay of another network", forward(sol, "fd00:99::1", "fe80::1"), "foreign_relay", nil, ""},
		{"outer relay on the PXE network, client elsewhere", forward(forward(sol, "fd00:99::1", "fe80::1"), "fd00:10:1::1", "fe80::2"), "foreign_relay", nil, ""},
		{"no link-address anywhere", forward(sol, "::", "fe80::1"), "foreign_relay", nil, ""},
		{"nested deeper than the hop limit", deep, "malformed", nil, ""},
		{"Relay-Reply inside a Relay-Forward", forward(replyForw, "fd00:10:1::1", "fe80::1"), "malformed", nil, ""},
		{"Relay-Forward without a Relay Message", noMsg, "malformed", nil, ""},
		{"Relay-Reply sent to the server", replyForw, "ignored", nil, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, reg := relayed6(t, false)
			rm, err := dhcpv6.FromBytes(tc.msg.ToBytes())
			if err != nil {
				t.Fatalf("test message does not parse: %v", err)
			}
			src := from
			if strings.HasSuffix(tc.to, ":1547") {
				src = netip.AddrPortFrom(from.Addr(), 1547) // the relay sends from its own port
			}
			resp, to := s.HandleRelay(rm.(*dhcpv6.RelayMessage), src)
			if got := count(t, reg, "dhcp6", tc.result); got != 1 {
				t.Fatalf("requests_total{result=%q} = %v, want 1", tc.result, got)
			}
			if tc.ifids == nil {
				if resp != nil {
					t.Fatalf("answered: %s", resp.Summary())
				}
				return
			}
			if resp == nil || to.String() != tc.to {
				t.Fatalf("reply %v to %v, want one to %s", resp, to, tc.to)
			}
			// The reply nests like the request, level for level.
			in, _ := dhcpv6.FromBytes(tc.msg.ToBytes())
			out, err := dhcpv6.FromBytes(resp.ToBytes())
			if err != nil {
				t.Fatal(err)
			}
			for i, want := range tc.ifids {
				fw, rp := in.(*dhcpv6.RelayMessage), out.(*dhcpv6.RelayMessage)
				if rp.MessageType != dhcpv6.MessageTypeRelayReply || rp.HopCount != fw.HopCount || !rp.LinkAddr.Equal(fw.LinkAddr) || !rp.PeerAddr.Equal(fw.PeerAddr) {
					t.Fatalf("level %d: %s for %s", i, rp, fw)
				}
				if got := rp.Options.InterfaceID(); !bytes.Equal(got, []byte(want)) {
					t.Fatalf("level %d: Interface-ID %q, want %q", i, got, want)
				}
				in, out = fw.Options.RelayMessage(), rp.Options.RelayMessage()
			}
			if m, ok := out.(*dhcpv6.Message); !ok || m.Type() != dhcpv6.MessageTypeAdvertise {
				t.Fatalf("innermost %v", out)
			}
		})
	}
}
