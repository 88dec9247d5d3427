package dhcp

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/dhcpv6/server6"
	"github.com/insomniacslk/dhcp/iana"
	"golang.org/x/net/ipv6"

	"github.com/metalfleet/metalfleet/agents/pixie/internal/lease"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/metric"
)

// Config6 configures the DHCPv6 server (stateful addresses from a pool).
type Config6 struct {
	// Interface is where messages arrive: the PXE network, or with
	// RelayedOnly the network the relays reach pixie on.
	Interface string
	// Prefix is the IPv6 PXE network: Relay-Forwards whose link-address
	// lies in it are answered (invalid: relays are ignored).
	Prefix netip.Prefix
	// RelayedOnly answers nothing but Relay-Forwards, and Listen binds
	// ServerIP (pixie's routed address) instead of joining the servers'
	// multicast group: clients on Interface's link are not PXE clients.
	RelayedOnly bool
	ServerIP    netip.Addr
	// ServerMAC makes pixie's DUID (DUID-LL of the interface).
	ServerMAC net.HardwareAddr
	Pool      lease.Pool
	DNS       []netip.Addr
	LeaseTime time.Duration
	Boot      Boot
	Leases    *lease.Store
	Log       *slog.Logger
	Metrics   *metric.Metrics
}

// Server6 answers DHCPv6.
type Server6 struct {
	cfg  Config6
	duid dhcpv6.DUID
}

// NewServer6 checks cfg.
func NewServer6(cfg Config6) (*Server6, error) {
	if !cfg.Pool.Range.First.Is6() {
		return nil, fmt.Errorf("dhcp6: range %s is not IPv6", cfg.Pool.Range)
	}
	if len(cfg.ServerMAC) == 0 {
		return nil, errors.New("dhcp6: server MAC required for the DUID")
	}
	if cfg.Leases == nil {
		return nil, errors.New("dhcp6: lease store required")
	}
	if cfg.Prefix.IsValid() && (!cfg.Prefix.Addr().Is6() || !cfg.Prefix.Contains(cfg.Pool.Range.First) || !cfg.Prefix.Contains(cfg.Pool.Range.Last)) {
		return nil, fmt.Errorf("dhcp6: range %s is not inside %s", cfg.Pool.Range, cfg.Prefix)
	}
	if cfg.RelayedOnly && (!cfg.Prefix.IsValid() || !cfg.ServerIP.Is6()) {
		return nil, errors.New("dhcp6: relayed only: the PXE network's prefix and pixie's IPv6 address required")
	}
	if cfg.LeaseTime <= 0 {
		cfg.LeaseTime = time.Hour
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Server6{cfg: cfg, duid: &dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: cfg.ServerMAC}}, nil
}

// Listen opens [::]:547 on the interface and joins the servers' group;
// with RelayedOnly it opens [ServerIP]:547 on the interface, where the
// relays send to, and joins nothing.
func (s *Server6) Listen() (net.PacketConn, error) {
	ifi, err := net.InterfaceByName(s.cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("dhcp6: %w", err)
	}
	if s.cfg.RelayedOnly {
		conn, err := server6.NewIPv6UDPConn(s.cfg.Interface, &net.UDPAddr{IP: s.cfg.ServerIP.AsSlice(), Port: dhcpv6.DefaultServerPort})
		if err != nil {
			return nil, fmt.Errorf("dhcp6: listen on [%s]:%d on %s: %w", s.cfg.ServerIP, dhcpv6.DefaultServerPort, s.cfg.Interface, err)
		}
		return conn, nil
	}
	conn, err := server6.NewIPv6UDPConn(s.cfg.Interface, &net.UDPAddr{IP: net.IPv6unspecified, Port: dhcpv6.DefaultServerPort})
	if err != nil {
		return nil, fmt.Errorf("dhcp6: listen on %s: %w", s.cfg.Interface, err)
	}
	if err := ipv6.NewPacketConn(conn).JoinGroup(ifi, &net.UDPAddr{IP: dhcpv6.AllDHCPRelayAgentsAndServers}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("dhcp6: join %s on %s: %w", dhcpv6.AllDHCPRelayAgentsAndServers, s.cfg.Interface, err)
	}
	return conn, nil
}

// Serve answers on conn until ctx ends; garbage is counted and dropped.
func (s *Server6) Serve(ctx context.Context, conn net.PacketConn) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	buf := make([]byte, 4096)
	for {
		n, peer, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("dhcp6: read: %w", err)
		}
		msg, err := dhcpv6.FromBytes(buf[:n])
		if err != nil {
			s.cfg.Metrics.Request("dhcp6", "malformed")
			s.cfg.Log.Debug("dhcp6: malformed packet dropped", "peer", peer, "bytes", n, "err", bounded([]byte(err.Error()), maxLogBytes))
			continue
		}
		var (
			resp dhcpv6.DHCPv6
			dst  = peer
		)
		switch m := msg.(type) {
		case *dhcpv6.Message:
			if r := s.Handle(m); r != nil {
				resp = r
			}
		case *dhcpv6.RelayMessage:
			ua, _ := peer.(*net.UDPAddr)
			if ua == nil {
				continue
			}
			var to netip.AddrPort
			if resp, to = s.HandleRelay(m, ua.AddrPort()); resp != nil {
				dst = net.UDPAddrFromAddrPort(to)
			}
		}
		if resp == nil {
			continue
		}
		if _, err := conn.WriteTo(resp.ToBytes(), dst); err != nil {
			s.cfg.Log.Warn("dhcp6: send reply", "to", dst, "err", err)
		}
	}
}

// Handle answers one message (nil: no answer).
// With RelayedOnly, a message that no relay carried comes from the
// network pixie's interface is on, not from the PXE network: ignored.
func (s *Server6) Handle(m *dhcpv6.Message) *dhcpv6.Message {
	if s.cfg.RelayedOnly {
		s.cfg.Metrics.Request("dhcp6", "not_relayed")
		s.cfg.Log.Debug("dhcp6: message not relayed ignored (relayed only)", "type", m.Type())
		return nil
	}
	resp, result := s.handle(m, "")
	s.cfg.Metrics.Request("dhcp6", result)
	return resp
}

// mac6 finds the client's MAC in its DUID (LL, LLT). UUID DUIDs carry
// none; the boot script then asks iPXE for it.
func mac6(m *dhcpv6.Message) string {
	switch d := m.Options.ClientID().(type) {
	case *dhcpv6.DUIDLL:
		if d.HWType == iana.HWTypeEthernet && len(d.LinkLayerAddr) == 6 {
			return d.LinkLayerAddr.String()
		}
	case *dhcpv6.DUIDLLT:
		if d.HWType == iana.HWTypeEthernet && len(d.LinkLayerAddr) == 6 {
			return d.LinkLayerAddr.String()
		}
	}
	return ""
}

// classify6 reads what m says about its client's boot; mac is the
// client's MAC when a relay told it, else it comes from the DUID.
func classify6(m *dhcpv6.Message, mac string) client {
	if mac == "" {
		mac = mac6(m)
	}
	c := client{mac: mac}
	if archs := m.Options.ArchTypes(); len(archs) > 0 {
		c.arch, c.hasArch = archs[0], true
	}
	for _, uc := range m.Options.UserClasses() {
		if string(uc) == "iPXE" {
			c.ipxe = true
		}
	}
	for _, vc := range m.Options.VendorClasses() {
		for _, d := range vc.Data {
			c.vendor(string(d))
		}
	}
	return c
}

func (s *Server6) handle(m *dhcpv6.Message, mac string) (*dhcpv6.Message, string) {
	cid := m.Options.ClientID()
	if cid == nil {
		return nil, "ignored"
	}
	log := s.cfg.Log.With("duid", hex.EncodeToString(cid.ToBytes()), "xid", m.TransactionID.String())
	sid := m.Options.ServerID()
	ours := sid != nil && sid.Equal(s.duid)
	c := classify6(m, mac)

	var (
		typ    dhcpv6.MessageType
		commit bool
	)
	switch m.Type() {
	case dhcpv6.MessageTypeSolicit:
		if sid != nil {
			return nil, "ignored"
		}
		typ = dhcpv6.MessageTypeAdvertise
		if m.GetOneOption(dhcpv6.OptionRapidCommit) != nil {
			typ, commit = dhcpv6.MessageTypeReply, true
		}
	case dhcpv6.MessageTypeRequest, dhcpv6.MessageTypeRenew, dhcpv6.MessageTypeRelease, dhcpv6.MessageTypeDecline:
		if !ours {
			return nil, "other_server"
		}
		typ, commit = dhcpv6.MessageTypeReply, true
	case dhcpv6.MessageTypeRebind, dhcpv6.MessageTypeConfirm, dhcpv6.MessageTypeInformationRequest:
		if sid != nil && !ours {
			return nil, "other_server"
		}
		typ, commit = dhcpv6.MessageTypeReply, true
	default:
		return nil, "ignored"
	}

	resp := &dhcpv6.Message{MessageType: typ, TransactionID: m.TransactionID}
	resp.AddOption(dhcpv6.OptClientID(cid))
	resp.AddOption(dhcpv6.OptServerID(s.duid))
	if typ == dhcpv6.MessageTypeReply && m.Type() == dhcpv6.MessageTypeSolicit {
		resp.AddOption(&dhcpv6.OptionGeneric{OptionCode: dhcpv6.OptionRapidCommit})
	}
	result := "reply"
	switch m.Type() {
	case dhcpv6.MessageTypeRelease, dhcpv6.MessageTypeDecline:
		for _, ia := range m.Options.IANA() {
			for _, a := range ia.Options.Addresses() {
				addr, _ := netip.AddrFromSlice(a.IPv6Addr)
				if m.Type() == dhcpv6.MessageTypeDecline {
					_ = s.cfg.Leases.Decline(addr, s.cfg.LeaseTime)
				} else {
					_ = s.cfg.Leases.Release(iaKey(cid, ia.IaId), addr)
				}
			}
		}
		resp.AddOption(&dhcpv6.OptStatusCode{StatusCode: iana.StatusSuccess})
		return resp, m.Type().String()
	case dhcpv6.MessageTypeConfirm:
		st := iana.StatusSuccess
		for _, ia := range m.Options.IANA() {
			for _, a := range ia.Options.Addresses() {
				if addr, _ := netip.AddrFromSlice(a.IPv6Addr); !s.cfg.Pool.Range.Contains(addr) {
					st = iana.StatusNotOnLink
				}
			}
		}
		resp.AddOption(&dhcpv6.OptStatusCode{StatusCode: st})
		return resp, "confirm"
	case dhcpv6.MessageTypeInformationRequest:
		result = "inform"
	default:
		for _, ia := range m.Options.IANA() {
			resp.AddOption(s.assign(log, m, cid, ia, c.mac, commit))
		}
	}
	if len(s.cfg.DNS) > 0 {
		resp.AddOption(dhcpv6.OptDNS(ips(s.cfg.DNS)...))
	}
	if a, ok := s.cfg.Boot.decide(c, true); ok {
		resp.AddOption(dhcpv6.OptBootFileURL(a.file))
		if a.vendor != "" {
			// UEFI HTTP boot ignores advertisements without its class.
			ent := uint32(343) // Intel, what EDK2 sends
			if vcs := m.Options.VendorClasses(); len(vcs) > 0 {
				ent = vcs[0].EnterpriseNumber
			}
			resp.AddOption(&dhcpv6.OptVendorClass{EnterpriseNumber: ent, Data: [][]byte{[]byte(a.vendor)}})
		}
		log.Info("dhcp6: boot", "type", typ, "mac", c.mac, "boot", a.file, "arch", c.arch)
	}
	if typ == dhcpv6.MessageTypeAdvertise {
		result = "advertise"
	}
	return resp, result
}

func iaKey(cid dhcpv6.DUID, iaid [4]byte) string {
	return "v6:" + hex.EncodeToString(cid.ToBytes()) + "/" + hex.EncodeToString(iaid[:])
}

// assign answers one IA_NA: an address held for the client (advertise)
// or bound to it (reply), or a NoAddrsAvail / NoBinding status.
func (s *Server6) assign(log *slog.Logger, m *dhcpv6.Message, cid dhcpv6.DUID, ia *dhcpv6.OptIANA, mac string, commit bool) *dhcpv6.OptIANA {
	key := iaKey(cid, ia.IaId)
	var hint netip.Addr
	if a := ia.Options.OneAddress(); a != nil {
		hint, _ = netip.AddrFromSlice(a.IPv6Addr)
	}
	out := &dhcpv6.OptIANA{IaId: ia.IaId}
	var (
		l   lease.Lease
		err error
	)
	switch m.Type() {
	case dhcpv6.MessageTypeSolicit, dhcpv6.MessageTypeRequest:
		if l, err = s.cfg.Leases.Offer(key, mac, s.cfg.Pool, hint, offerHold); err == nil && commit {
			l, err = s.cfg.Leases.Commit(key, mac, s.cfg.Pool, l.Addr, s.cfg.LeaseTime)
		}
		if err != nil {
			log.Warn("dhcp6: no address", "err", err)
			out.Options.Add(&dhcpv6.OptStatusCode{StatusCode: iana.StatusNoAddrsAvail, StatusMessage: err.Error()})
			return out
		}
	default: // Renew, Rebind: extend what the client has
		if l, err = s.cfg.Leases.Commit(key, mac, s.cfg.Pool, hint, s.cfg.LeaseTime); err != nil {
			out.Options.Add(&dhcpv6.OptStatusCode{StatusCode: iana.StatusNoBinding, StatusMessage: err.Error()})
			return out
		}
	}
	valid := s.cfg.LeaseTime
	out.T1, out.T2 = s.cfg.LeaseTime/2, s.cfg.LeaseTime*4/5
	out.Options.Add(&dhcpv6.OptIAAddress{IPv6Addr: l.Addr.AsSlice(), PreferredLifetime: valid, ValidLifetime: valid})
	log.Info("dhcp6: address", "type", m.Type(), "address", l.Addr, "mac", mac, "committed", commit)
	return out
}
