package dhcp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"
)

// maxRelayDepth bounds how deeply Relay-Forwards may nest: RFC 8415's
// HOP_COUNT_LIMIT (8) relays, plus the one that counted from 0.
const maxRelayDepth = 9

// relayed is what pixie reads from a chain of Relay-Forwards (RFC 8415
// §19–20): outermost first, the client's own message inside the last.
type relayed struct {
	chain []*dhcpv6.RelayMessage
	msg   *dhcpv6.Message
	// link is the address identifying the client's link: the link-address
	// of the relay nearest the client, or, where that is unspecified
	// (a relay that identifies the link by Interface-ID), of the next
	// relay outward (RFC 8415 §13.1).
	link netip.Addr
	// mac is the client's MAC from the Client Link-Layer Address option
	// (RFC 6939) of the relay nearest the client ("" without one).
	mac string
	// relayPort: the relay asks for its Relay-Reply on the port it sent
	// from (Relay Source Port option, RFC 8357) instead of 547.
	relayPort bool
}

// unwrapRelay walks a Relay-Forward down to the client's message. It
// fails on anything a conforming relay does not send, so that the caller
// can drop it as malformed.
func unwrapRelay(rm *dhcpv6.RelayMessage) (relayed, error) {
	var r relayed
	var cur dhcpv6.DHCPv6 = rm
	for {
		switch m := cur.(type) {
		case *dhcpv6.Message:
			r.msg = m
		case *dhcpv6.RelayMessage:
			if m.MessageType != dhcpv6.MessageTypeRelayForward {
				return r, fmt.Errorf("%s inside a relay chain", m.MessageType)
			}
			if len(r.chain) == maxRelayDepth {
				return r, fmt.Errorf("relay messages nested deeper than %d", maxRelayDepth)
			}
			if len(m.LinkAddr) != net.IPv6len || len(m.PeerAddr) != net.IPv6len {
				return r, errors.New("relay message without link or peer address")
			}
			r.chain = append(r.chain, m)
			if cur = m.Options.RelayMessage(); cur == nil {
				return r, errors.New("relay message without a Relay Message option")
			}
			continue
		default:
			return r, fmt.Errorf("unexpected %T in a relay chain", cur)
		}
		break
	}
	for i := len(r.chain) - 1; i >= 0 && !r.link.IsValid(); i-- {
		if a, _ := netip.AddrFromSlice(r.chain[i].LinkAddr); !a.IsUnspecified() {
			r.link = a
		}
	}
	if ht, hw := r.chain[len(r.chain)-1].Options.ClientLinkLayerAddress(); ht == iana.HWTypeEthernet && len(hw) == 6 {
		r.mac = hw.String()
	}
	r.relayPort = r.chain[0].Options.RelayPort() != nil
	return r, nil
}

// HandleRelay answers a Relay-Forward that arrived from the relay at
// from: the Relay-Reply (nesting like the request, each level with its
// Interface-ID) and where it goes, or nil. Relays of links outside the
// PXE network are ignored; a chain no conforming relay sends is dropped
// as malformed.
func (s *Server6) HandleRelay(rm *dhcpv6.RelayMessage, from netip.AddrPort) (dhcpv6.DHCPv6, netip.AddrPort) {
	resp, to, result := s.handleRelay(rm, from)
	s.cfg.Metrics.Request("dhcp6", result)
	return resp, to
}

func (s *Server6) handleRelay(rm *dhcpv6.RelayMessage, from netip.AddrPort) (dhcpv6.DHCPv6, netip.AddrPort, string) {
	log := s.cfg.Log.With("relay", from.Addr())
	if rm.MessageType != dhcpv6.MessageTypeRelayForward {
		log.Debug("dhcp6: relay message that is not a Relay-Forward ignored", "type", rm.MessageType)
		return nil, netip.AddrPort{}, "ignored"
	}
	r, err := unwrapRelay(rm)
	if err != nil {
		log.Debug("dhcp6: malformed relay message dropped", "err", bounded([]byte(err.Error()), maxLogBytes))
		return nil, netip.AddrPort{}, "malformed"
	}
	if !s.cfg.Prefix.IsValid() || !r.link.IsValid() || !s.cfg.Prefix.Contains(r.link) {
		// A relay of another link: pixie's pool is this network's.
		log.Debug("dhcp6: relayed message from another network ignored", "link", r.link)
		return nil, netip.AddrPort{}, "foreign_relay"
	}
	inner, result := s.handle(r.msg, r.mac)
	if inner == nil {
		return nil, netip.AddrPort{}, result
	}
	// Wrap the answer as the request was wrapped, from the inside out:
	// each relay finds its link, peer and Interface-ID again (RFC 8415
	// §19.3) and passes the rest down towards the client.
	var out dhcpv6.DHCPv6 = inner
	for i := len(r.chain) - 1; i >= 0; i-- {
		fw := r.chain[i]
		rep := &dhcpv6.RelayMessage{MessageType: dhcpv6.MessageTypeRelayReply, HopCount: fw.HopCount, LinkAddr: fw.LinkAddr, PeerAddr: fw.PeerAddr}
		if id := fw.Options.GetOne(dhcpv6.OptionInterfaceID); id != nil {
			rep.AddOption(id)
		}
		rep.AddOption(dhcpv6.OptRelayMessage(out))
		out = rep
	}
	to := netip.AddrPortFrom(from.Addr(), dhcpv6.DefaultServerPort)
	if r.relayPort {
		to = from
	}
	log.Debug("dhcp6: relayed", "link", r.link, "mac", r.mac, "hops", len(r.chain))
	return out, to, result
}
