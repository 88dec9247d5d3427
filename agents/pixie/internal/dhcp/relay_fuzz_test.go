package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"
)

// FuzzHandle4Relayed: whatever reaches a relayed-only pixie from
// whichever address, it answers only a relay on the PXE network (at its
// port 67, option 82 echoed byte for byte) or a client renewing from its
// PXE address (at its port 68) — never a broadcast.
func FuzzHandle4Relayed(f *testing.F) {
	agent := dhcpv4.OptRelayAgentInfo(dhcpv4.OptGeneric(dhcpv4.AgentCircuitIDSubOption, []byte("Vlan4000:Ethernet8")))
	f.Add(discover(f, "52:54:00:00:00:01", dhcpv4.WithGatewayIP(net.ParseIP("10.1.0.1")), dhcpv4.WithOption(agent)).ToBytes(), []byte{10, 1, 0, 1})
	f.Add(discover(f, "52:54:00:00:00:02").ToBytes(), []byte{0, 0, 0, 0})
	hw, _ := net.ParseMAC("52:54:00:00:00:03")
	renew, _ := dhcpv4.New(dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(net.ParseIP("10.1.0.100")))
	f.Add(renew.ToBytes(), []byte{10, 1, 0, 100})
	s, _ := relayed4(f)
	f.Fuzz(func(t *testing.T, b, src []byte) {
		req, err := dhcpv4.FromBytes(b)
		if err != nil {
			return
		}
		from, _ := netip.AddrFromSlice(src)
		resp, dst := s.Handle(req, from)
		if resp == nil {
			return
		}
		to, _ := netip.AddrFromSlice(dst.IP)
		to = to.Unmap()
		gi, ci := ip4(req.GatewayIPAddr), ip4(req.ClientIPAddr)
		switch {
		case dst.Port == 67 && to == gi && s.cfg.Prefix.Contains(gi):
		case dst.Port == 68 && to == ci && ci == from && s.cfg.Prefix.Contains(ci):
		default:
			t.Fatalf("reply to %v for giaddr %v ciaddr %v from %v", dst, gi, ci, from)
		}
		if got, want := resp.Options.Get(dhcpv4.OptionRelayAgentInformation), req.Options.Get(dhcpv4.OptionRelayAgentInformation); !bytes.Equal(got, want) {
			t.Fatalf("option 82 %x, request had %x", got, want)
		}
		if _, err := dhcpv4.FromBytes(resp.ToBytes()); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
	})
}

// FuzzHandleRelay6: whatever arrives as a relay message, pixie answers
// only a Relay-Forward, with a Relay-Reply that parses, goes to the
// sender, and nests exactly like the request, each level with its link,
// peer, hop count and Interface-ID.
func FuzzHandleRelay6(f *testing.F) {
	hw, _ := net.ParseMAC("52:54:00:00:00:09")
	sol, _ := dhcpv6.NewSolicit(hw, dhcpv6.WithUserClass([]byte("iPXE")), dhcpv6.WithArchType(iana.EFI_BC))
	one := forward(sol, "fd00:10:1::1", "fe80::1", dhcpv6.OptInterfaceID([]byte("Vlan4000")), dhcpv6.OptClientLinkLayerAddress(iana.HWTypeEthernet, hw))
	f.Add(one.ToBytes(), uint16(547))
	f.Add(forward(one, "::", "fd00:10:1::1", dhcpv6.OptRelayPort(1547)).ToBytes(), uint16(1547))
	f.Add(forward(sol, "fd00:99::1", "fe80::1").ToBytes(), uint16(547))
	f.Add([]byte{12, 0}, uint16(547))
	s, _ := relayed6(f, true)
	relay := netip.MustParseAddr("fd00:172:30::1")
	f.Fuzz(func(t *testing.T, b []byte, port uint16) {
		msg, err := dhcpv6.FromBytes(b)
		if err != nil {
			return
		}
		rm, ok := msg.(*dhcpv6.RelayMessage)
		if !ok {
			if s.Handle(msg.(*dhcpv6.Message)) != nil {
				t.Fatal("relayed only: answered a message no relay carried")
			}
			return
		}
		resp, to := s.HandleRelay(rm, netip.AddrPortFrom(relay, port))
		if resp == nil {
			return
		}
		if to.Addr() != relay || to.Port() != 547 && to.Port() != port {
			t.Fatalf("reply to %v", to)
		}
		out, err := dhcpv6.FromBytes(resp.ToBytes())
		if err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
		var in dhcpv6.DHCPv6 = rm
		for in.IsRelay() {
			fw, rp := in.(*dhcpv6.RelayMessage), out.(*dhcpv6.RelayMessage)
			if fw.MessageType != dhcpv6.MessageTypeRelayForward || rp.MessageType != dhcpv6.MessageTypeRelayReply || rp.HopCount != fw.HopCount ||
				!rp.LinkAddr.Equal(fw.LinkAddr) || !rp.PeerAddr.Equal(fw.PeerAddr) || !bytes.Equal(rp.Options.InterfaceID(), fw.Options.InterfaceID()) {
				t.Fatalf("reply level %s for %s", rp, fw)
			}
			in, out = fw.Options.RelayMessage(), rp.Options.RelayMessage()
		}
		if _, ok := out.(*dhcpv6.Message); !ok {
			t.Fatalf("reply nests deeper than the request: %T", out)
		}
	})
}
