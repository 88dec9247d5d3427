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

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/metalfleet/metalfleet/agents/pixie/internal/lease"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/metric"
)

// offerHold is how long an offered address is kept for the client that
// was offered it, waiting for its REQUEST.
const offerHold = time.Minute

// Config4 configures the DHCPv4 server.
type Config4 struct {
	// Interface is where requests arrive; the socket is bound to it. It
	// is the PXE network itself, or with RelayedOnly the network the
	// relays reach pixie on.
	Interface string
	// ServerIP is pixie's address as clients reach it: server identifier,
	// siaddr (TFTP).
	ServerIP netip.Addr
	// Prefix is the PXE network (its mask goes to clients); relays are
	// served when their giaddr lies in it.
	Prefix netip.Prefix
	// RelayedOnly serves only what relays forward (and the unicast
	// renewals of clients that got their address through one): Interface
	// is not the PXE network, and a broadcast seen there comes from a
	// host that must not be PXE-booted by accident.
	RelayedOnly bool
	Pool        lease.Pool
	Routers     []netip.Addr
	DNS         []netip.Addr
	Domain      string
	LeaseTime   time.Duration
	Boot        Boot
	Leases      *lease.Store
	Log         *slog.Logger
	Metrics     *metric.Metrics

	// Plain hands out addresses only, never a boot answer: the BMC
	// network, where nothing network-boots, and where a server's NIC
	// plugged in by mistake must not start an installer.
	Plain bool
}

// kind is the server's label in pixie's request metrics: the BMC
// network's requests are counted apart from the PXE network's.
func (s *Server4) kind() string {
	if s.cfg.Plain {
		return "dhcp4_bmc"
	}
	return "dhcp4"
}

// Server4 answers DHCPv4.
type Server4 struct {
	cfg Config4
}

// NewServer4 checks cfg.
func NewServer4(cfg Config4) (*Server4, error) {
	if !cfg.ServerIP.Is4() {
		return nil, fmt.Errorf("dhcp4: server address %v is not IPv4", cfg.ServerIP)
	}
	if !cfg.Prefix.IsValid() || !cfg.Prefix.Addr().Is4() {
		return nil, fmt.Errorf("dhcp4: network %v is not an IPv4 prefix", cfg.Prefix)
	}
	if !cfg.Pool.Range.First.Is4() || !cfg.Prefix.Contains(cfg.Pool.Range.First) || !cfg.Prefix.Contains(cfg.Pool.Range.Last) {
		return nil, fmt.Errorf("dhcp4: range %s is not inside %s", cfg.Pool.Range, cfg.Prefix)
	}
	if cfg.Leases == nil {
		return nil, errors.New("dhcp4: lease store required")
	}
	for _, r := range cfg.Routers {
		if !cfg.Prefix.Contains(r) {
			return nil, fmt.Errorf("dhcp4: router %s is not inside %s", r, cfg.Prefix)
		}
	}
	if cfg.RelayedOnly {
		// Relayed clients reach pixie only through a router; without one
		// they get an address and nothing to fetch the boot file from.
		if len(cfg.Routers) == 0 {
			return nil, errors.New("dhcp4: relayed only: routers (the relays' addresses on the PXE network) required")
		}
		if cfg.Prefix.Contains(cfg.ServerIP) {
			return nil, fmt.Errorf("dhcp4: relayed only: server address %s is inside the PXE network %s", cfg.ServerIP, cfg.Prefix)
		}
	}
	if cfg.LeaseTime <= 0 {
		cfg.LeaseTime = time.Hour
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	cfg.Pool.Exclude = append(cfg.Pool.Exclude, cfg.ServerIP)
	cfg.Pool.Exclude = append(cfg.Pool.Exclude, cfg.Routers...)
	return &Server4{cfg: cfg}, nil
}

// Listen opens the server socket on the interface (port 67, broadcast
// allowed, bound to the device so that replies to 255.255.255.255 leave
// through it). With RelayedOnly it binds ServerIP, where relays and
// renewing clients send to: broadcasts on the interface's network do not
// even reach pixie.
func (s *Server4) Listen() (net.PacketConn, error) {
	ip := net.IPv4zero
	if s.cfg.RelayedOnly {
		ip = s.cfg.ServerIP.AsSlice()
	}
	conn, err := server4.NewIPv4UDPConn(s.cfg.Interface, &net.UDPAddr{IP: ip, Port: dhcpv4.ServerPort})
	if err != nil {
		return nil, fmt.Errorf("dhcp4: listen on %s: %w", s.cfg.Interface, err)
	}
	return conn, nil
}

// Serve answers on conn until ctx ends. Packets that do not parse are
// counted and dropped; nothing a client sends stops the loop.
func (s *Server4) Serve(ctx context.Context, conn net.PacketConn) error {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	buf := make([]byte, 4096)
	for {
		n, peer, err := conn.ReadFrom(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("dhcp4: read: %w", err)
		}
		req, err := dhcpv4.FromBytes(buf[:n])
		if err != nil {
			s.cfg.Metrics.Request(s.kind(), "malformed")
			s.cfg.Log.Debug("dhcp4: malformed packet dropped", "peer", peer, "bytes", n, "err", bounded([]byte(err.Error()), maxLogBytes))
			continue
		}
		var from netip.Addr
		if ua, ok := peer.(*net.UDPAddr); ok {
			from = ip4(ua.IP)
		}
		resp, dst := s.Handle(req, from)
		if resp == nil {
			continue
		}
		if _, err := conn.WriteTo(resp.ToBytes(), dst); err != nil {
			s.cfg.Log.Warn("dhcp4: send reply", "to", dst, "err", err)
		}
	}
}

// Handle answers one request that came from the (IP source) address
// from: the reply and where it goes, or nil when the request gets no
// answer.
func (s *Server4) Handle(req *dhcpv4.DHCPv4, from netip.Addr) (*dhcpv4.DHCPv4, *net.UDPAddr) {
	resp, dst, result := s.handle(req, from)
	s.cfg.Metrics.Request(s.kind(), result)
	return resp, dst
}

// renewal reports whether req is a client of the PXE network talking to
// pixie directly, as RFC 2131 has a bound client do (REQUEST when
// renewing, RELEASE, INFORM): unicast from its address, which it got
// through a relay. Anything else without a relay did not come from the
// PXE network.
func (s *Server4) renewal(req *dhcpv4.DHCPv4, from netip.Addr) bool {
	ci := ip4(req.ClientIPAddr)
	if !ci.IsValid() || ci != from || !s.cfg.Prefix.Contains(ci) {
		return false
	}
	switch req.MessageType() {
	case dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeRelease, dhcpv4.MessageTypeInform:
		return true
	}
	return false
}

func (s *Server4) handle(req *dhcpv4.DHCPv4, from netip.Addr) (*dhcpv4.DHCPv4, *net.UDPAddr, string) {
	log := s.cfg.Log
	if req.OpCode != dhcpv4.OpcodeBootRequest {
		return nil, nil, "ignored"
	}
	if req.HWType != iana.HWTypeEthernet || len(req.ClientHWAddr) != 6 {
		log.Debug("dhcp4: not an Ethernet client", "hwtype", req.HWType)
		return nil, nil, "ignored"
	}
	gi := ip4(req.GatewayIPAddr)
	relayed := gi.IsValid() && !gi.IsUnspecified()
	if relayed && !s.cfg.Prefix.Contains(gi) {
		// A relay from another network: pixie's pool is this network's.
		log.Debug("dhcp4: relayed request from another network ignored", "giaddr", gi)
		return nil, nil, "foreign_relay"
	}
	if !relayed && s.cfg.RelayedOnly && !s.renewal(req, from) {
		log.Debug("dhcp4: request not relayed ignored (relayed only)", "from", from, "mac", req.ClientHWAddr.String(), "type", req.MessageType())
		return nil, nil, "not_relayed"
	}
	if relayed {
		log = log.With("giaddr", gi)
		if ri := req.RelayAgentInfo(); ri != nil {
			// The relay's circuit (e.g. SONiC's "Vlan4000:Ethernet8")
			// says which switch port the machine is on.
			log = log.With("circuit", bounded(ri.Get(dhcpv4.AgentCircuitIDSubOption), 64), "remote", bounded(ri.Get(dhcpv4.AgentRemoteIDSubOption), 64))
		}
	}
	mac := req.ClientHWAddr.String()
	key := "v4:" + mac
	if id := req.Options.Get(dhcpv4.OptionClientIdentifier); len(id) > 0 && len(id) <= 64 {
		key = "v4:id:" + hex.EncodeToString(id)
	}
	c := classify4(req)
	log = log.With("mac", mac, "xid", req.TransactionID.String())

	switch mt := req.MessageType(); mt {
	case dhcpv4.MessageTypeDiscover:
		l, err := s.cfg.Leases.Offer(key, mac, s.cfg.Pool, ip4(req.RequestedIPAddress()), offerHold)
		if err != nil {
			log.Warn("dhcp4: no address to offer", "err", err)
			return nil, nil, "exhausted"
		}
		resp, err := s.reply(req, c, dhcpv4.MessageTypeOffer, l.Addr)
		if err != nil {
			log.Error("dhcp4: build offer", "err", err)
			return nil, nil, "error"
		}
		// Without option 93 the zero arch would read "Intel x86PC": a
		// BMC's offer would claim a PXE client's architecture.
		arch := ""
		if c.hasArch {
			arch = c.arch.String()
		}
		log.Info("dhcp4: offer", "address", l.Addr, "boot", resp.BootFileNameOption(), "arch", arch, "vendor", req.ClassIdentifier())
		return resp, s.dest(req, resp), "offer"

	case dhcpv4.MessageTypeRequest:
		if sid := ip4(req.ServerIdentifier()); sid.IsValid() && sid != s.cfg.ServerIP {
			return nil, nil, "other_server"
		}
		want := ip4(req.RequestedIPAddress())
		if !want.IsValid() || want.IsUnspecified() {
			want = ip4(req.ClientIPAddr) // RENEWING, REBINDING
		}
		var l lease.Lease
		err := errors.New("no address requested")
		if want.IsValid() && !want.IsUnspecified() {
			l, err = s.cfg.Leases.Commit(key, mac, s.cfg.Pool, want, s.cfg.LeaseTime)
		}
		if err != nil {
			log.Info("dhcp4: nak", "requested", want, "err", err)
			return s.nak(req, err.Error()), s.dest(req, nil), "nak"
		}
		resp, err := s.reply(req, c, dhcpv4.MessageTypeAck, l.Addr)
		if err != nil {
			log.Error("dhcp4: build ack", "err", err)
			return nil, nil, "error"
		}
		log.Info("dhcp4: ack", "address", l.Addr, "until", l.Expires.Format(time.RFC3339), "boot", resp.BootFileNameOption())
		return resp, s.dest(req, resp), "ack"

	case dhcpv4.MessageTypeRelease:
		if err := s.cfg.Leases.Release(key, ip4(req.ClientIPAddr)); err != nil {
			log.Error("dhcp4: release", "err", err)
		}
		return nil, nil, "release"

	case dhcpv4.MessageTypeDecline:
		if a := ip4(req.RequestedIPAddress()); a.IsValid() && s.cfg.Pool.Range.Contains(a) {
			log.Warn("dhcp4: client declined address (in use by someone else?)", "address", a)
			if err := s.cfg.Leases.Decline(a, s.cfg.LeaseTime); err != nil {
				log.Error("dhcp4: decline", "err", err)
			}
		}
		return nil, nil, "decline"

	case dhcpv4.MessageTypeInform:
		resp, err := s.reply(req, c, dhcpv4.MessageTypeAck, netip.Addr{})
		if err != nil {
			return nil, nil, "error"
		}
		return resp, s.dest(req, resp), "inform"

	default:
		log.Debug("dhcp4: message type not served", "type", mt)
		return nil, nil, "ignored"
	}
}

func ip4(ip net.IP) netip.Addr {
	a, ok := netip.AddrFromSlice(ip)
	if !ok {
		return netip.Addr{}
	}
	return a.Unmap()
}

func classify4(req *dhcpv4.DHCPv4) client {
	c := client{mac: req.ClientHWAddr.String()}
	c.vendor(req.ClassIdentifier())
	if archs := req.ClientArch(); len(archs) > 0 {
		c.arch, c.hasArch = archs[0], true
	}
	if raw := req.Options.Get(dhcpv4.OptionUserClassInformation); string(raw) == "iPXE" {
		c.ipxe = true
	}
	for _, uc := range req.UserClass() {
		if uc == "iPXE" {
			c.ipxe = true
		}
	}
	// Option 175 carries iPXE's own settings: only iPXE sends it.
	if req.Options.Has(dhcpv4.GenericOptionCode(175)) {
		c.ipxe = true
	}
	return c
}

// reply builds an OFFER or ACK; yiaddr stays empty for an INFORM.
func (s *Server4) reply(req *dhcpv4.DHCPv4, c client, mt dhcpv4.MessageType, yiaddr netip.Addr) (*dhcpv4.DHCPv4, error) {
	cfg := s.cfg
	mods := []dhcpv4.Modifier{
		dhcpv4.WithMessageType(mt),
		dhcpv4.WithServerIP(cfg.ServerIP.AsSlice()),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(cfg.ServerIP.AsSlice())),
		dhcpv4.WithNetmask(net.CIDRMask(cfg.Prefix.Bits(), 32)),
	}
	if yiaddr.IsValid() {
		mods = append(mods,
			dhcpv4.WithYourIP(yiaddr.AsSlice()),
			dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(cfg.LeaseTime)),
			dhcpv4.WithOption(dhcpv4.OptRenewTimeValue(cfg.LeaseTime/2)),
			dhcpv4.WithOption(dhcpv4.OptRebindingTimeValue(cfg.LeaseTime*7/8)),
		)
	}
	if len(cfg.Routers) > 0 {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptRouter(ips(routersFor(cfg.Routers, ip4(req.GatewayIPAddr)))...)))
	}
	if len(cfg.DNS) > 0 {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDNS(ips(cfg.DNS)...)))
	}
	if cfg.Domain != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptDomainName(cfg.Domain)))
	}
	if a, ok := cfg.Boot.decide(c, false); ok && !cfg.Plain {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptBootFileName(a.file)))
		if len(a.file) < 128 {
			// Old PXE ROMs read only the header field.
			mods = append(mods, func(d *dhcpv4.DHCPv4) { d.BootFileName = a.file })
		}
		if a.tftp {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptTFTPServerName(cfg.ServerIP.String())))
		}
		if a.vendor != "" {
			mods = append(mods, dhcpv4.WithOption(dhcpv4.OptClassIdentifier(a.vendor)))
		}
	}
	return dhcpv4.NewReplyFromRequest(req, mods...)
}

func (s *Server4) nak(req *dhcpv4.DHCPv4, msg string) *dhcpv4.DHCPv4 {
	resp, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(s.cfg.ServerIP.AsSlice())),
		dhcpv4.WithOption(dhcpv4.OptMessage(msg)),
	)
	if err != nil {
		return nil
	}
	return resp
}

// dest follows RFC 2131 4.1: to the relay, else to a client that has an
// address (not for a NAK), else broadcast — a client without an address
// cannot receive unicast before it has one, and pixie sends no raw
// frames to fake it.
func (s *Server4) dest(req, resp *dhcpv4.DHCPv4) *net.UDPAddr {
	if gi := ip4(req.GatewayIPAddr); gi.IsValid() && !gi.IsUnspecified() {
		return &net.UDPAddr{IP: gi.AsSlice(), Port: dhcpv4.ServerPort}
	}
	// A NAK is broadcast (RFC 2131 4.3.2), except with RelayedOnly: a
	// broadcast would stay on the management network, and the renewing
	// client sits behind a router, where only its address reaches it.
	if ci := ip4(req.ClientIPAddr); (resp != nil || s.cfg.RelayedOnly) && ci.IsValid() && !ci.IsUnspecified() {
		return &net.UDPAddr{IP: ci.AsSlice(), Port: dhcpv4.ClientPort}
	}
	return &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
}

// routersFor puts the relay that carried a request first among the
// routers: clients use the first, and the relay is the one router that
// surely sits on the client's segment of the PXE network.
func routersFor(routers []netip.Addr, giaddr netip.Addr) []netip.Addr {
	for i, r := range routers {
		if r == giaddr && i > 0 {
			out := append([]netip.Addr{r}, routers[:i]...)
			return append(out, routers[i+1:]...)
		}
	}
	return routers
}

func ips(as []netip.Addr) []net.IP {
	out := make([]net.IP, 0, len(as))
	for _, a := range as {
		out = append(out, a.AsSlice())
	}
	return out
}
