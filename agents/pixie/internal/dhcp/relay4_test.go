package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/metalfleet/metalfleet/agents/pixie/internal/lease"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/metric"
)

// relayed4 is a pixie on the management network (172.30.0.11) serving
// the routed PXE network 10.1.0.0/24 behind two leaves.
func relayed4(t testing.TB) (*Server4, *prometheus.Registry) {
	t.Helper()
	st, _, err := lease.Open("")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	r, _ := lease.ParseRange("10.1.0.100-10.1.0.150")
	s, err := NewServer4(Config4{
		ServerIP: netip.MustParseAddr("172.30.0.11"), Prefix: netip.MustParsePrefix("10.1.0.0/24"), RelayedOnly: true,
		Pool: lease.Pool{Range: r}, Routers: []netip.Addr{netip.MustParseAddr("10.1.0.1"), netip.MustParseAddr("10.1.0.2")},
		LeaseTime: time.Hour, Boot: Boot{BaseURL: "http://172.30.0.11", BIOSFile: "undionly.kpxe", EFIFile: "ipxe.efi"},
		Leases: st, Metrics: metric.New(reg),
	})
	if err != nil {
		t.Fatal(err)
	}
	return s, reg
}

func count(t *testing.T, reg *prometheus.Registry, kind, result string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "metalfleet_pixie_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var k, res string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "kind":
					k = l.GetValue()
				case "result":
					res = l.GetValue()
				}
			}
			if k == kind && res == result {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

func TestNewServer4Relayed(t *testing.T) {
	r, _ := lease.ParseRange("10.1.0.100-10.1.0.150")
	st, _, _ := lease.Open("")
	base := Config4{ServerIP: netip.MustParseAddr("172.30.0.11"), Prefix: netip.MustParsePrefix("10.1.0.0/24"), RelayedOnly: true,
		Pool: lease.Pool{Range: r}, Routers: []netip.Addr{netip.MustParseAddr("10.1.0.1")}, Leases: st}
	for _, tc := range []struct {
		name string
		mod  func(*Config4)
		want string
	}{
		{"valid", func(*Config4) {}, ""},
		{"no router", func(c *Config4) { c.Routers = nil }, "routers"},
		{"router outside the network", func(c *Config4) { c.Routers = []netip.Addr{netip.MustParseAddr("10.2.0.1")} }, "router 10.2.0.1 is not inside 10.1.0.0/24"},
		{"server on the PXE network", func(c *Config4) { c.ServerIP = netip.MustParseAddr("10.1.0.5") }, "server address 10.1.0.5 is inside"},
		{"range outside", func(c *Config4) { c.Pool.Range, _ = lease.ParseRange("10.2.0.1-10.2.0.9") }, "not inside"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := base
			tc.mod(&cfg)
			_, err := NewServer4(cfg)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

// TestRelayed4: with RelayedOnly, pixie answers what the leaves relay
// (to the relay, option 82 echoed) and the unicast renewals of the
// clients it leased to, and nothing else that reaches its interface.
func TestRelayed4(t *testing.T) {
	s, reg := relayed4(t)
	agent := dhcpv4.OptRelayAgentInfo(
		dhcpv4.OptGeneric(dhcpv4.AgentCircuitIDSubOption, []byte("Vlan4000:Ethernet8")),
		dhcpv4.OptGeneric(dhcpv4.AgentRemoteIDSubOption, []byte("leaf02")))
	pxe := []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC))}
	relay := func(gi string) []dhcpv4.Modifier {
		return append([]dhcpv4.Modifier{dhcpv4.WithGatewayIP(net.ParseIP(gi)), dhcpv4.WithOption(agent)}, pxe...)
	}
	const mac = "52:54:00:00:10:01"
	leaf02 := netip.MustParseAddr("10.1.0.2")

	offer, dst := s.Handle(discover(t, mac, relay("10.1.0.2")...), leaf02)
	if offer == nil {
		t.Fatal("relayed DISCOVER: no offer")
	}
	if dst.String() != "10.1.0.2:67" || !offer.GatewayIPAddr.Equal(net.ParseIP("10.1.0.2")) {
		t.Fatalf("offer to %v with giaddr %v, want the relay 10.1.0.2:67", dst, offer.GatewayIPAddr)
	}
	if got := offer.Options.Get(dhcpv4.OptionRelayAgentInformation); !bytes.Equal(got, agent.Value.ToBytes()) {
		t.Fatalf("option 82 %x, want %x echoed (RFC 3046)", got, agent.Value.ToBytes())
	}
	if r := offer.Router(); len(r) != 2 || r[0].String() != "10.1.0.2" || r[1].String() != "10.1.0.1" {
		t.Fatalf("routers %v: want the relaying leaf first", r)
	}
	if !offer.ServerIPAddr.Equal(net.ParseIP("172.30.0.11")) || offer.ServerIdentifier().String() != "172.30.0.11" ||
		offer.BootFileName != "undionly.kpxe" || offer.SubnetMask().String() != "ffffff00" || !netip.MustParsePrefix("10.1.0.0/24").Contains(ip4(offer.YourIPAddr)) {
		t.Fatalf("offer %s", offer.Summary())
	}
	req, err := dhcpv4.NewRequestFromOffer(offer, relay("10.1.0.2")...)
	if err != nil {
		t.Fatal(err)
	}
	ack, dst := s.Handle(req, leaf02)
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || dst.String() != "10.1.0.2:67" || !bytes.Equal(ack.Options.Get(dhcpv4.OptionRelayAgentInformation), agent.Value.ToBytes()) {
		t.Fatalf("relayed REQUEST: %v to %v", ack, dst)
	}
	addr := ip4(ack.YourIPAddr)
	if l, ok := s.cfg.Leases.ByMAC(mac, false); !ok || l.Addr != addr {
		t.Fatalf("lease %v %v, want %s", l, ok, addr)
	}

	hw, _ := net.ParseMAC(mac)
	renew := func(ci string) *dhcpv4.DHCPv4 {
		d, _ := dhcpv4.New(dhcpv4.WithHwAddr(hw), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(net.ParseIP(ci)))
		return d
	}
	for _, tc := range []struct {
		name   string
		req    *dhcpv4.DHCPv4
		from   string
		dst    string // "" = no answer
		result string
	}{
		{"unicast renewal from the leased address", renew(addr.String()), addr.String(), addr.String() + ":68", "ack"},
		{"renewal of an address outside the pool: NAK unicast, not broadcast on the management network", renew("10.1.0.200"), "10.1.0.200", "10.1.0.200:68", "nak"},
		{"renewal naming an address it is not sent from", renew(addr.String()), "172.30.0.99", "", "not_relayed"},
		{"renewal from outside the PXE network", renew("172.30.0.99"), "172.30.0.99", "", "not_relayed"},
		{"broadcast DISCOVER on the management network", discover(t, "52:54:00:00:10:02", pxe...), "0.0.0.0", "", "not_relayed"},
		{"DISCOVER from a management host with an address", discover(t, "52:54:00:00:10:03", dhcpv4.WithClientIP(net.ParseIP("172.30.0.50"))), "172.30.0.50", "", "not_relayed"},
		{"DISCOVER claiming a PXE address, not from it", discover(t, "52:54:00:00:10:04", dhcpv4.WithClientIP(net.ParseIP("10.1.0.120"))), "172.30.0.50", "", "not_relayed"},
		{"relay of another network", discover(t, "52:54:00:00:10:05", relay("10.9.0.1")...), "10.9.0.1", "", "foreign_relay"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := count(t, reg, "dhcp4", tc.result)
			resp, dst := s.Handle(tc.req, netip.MustParseAddr(tc.from))
			switch {
			case tc.dst == "" && resp != nil:
				t.Fatalf("answered %s to %v", resp.Summary(), dst)
			case tc.dst != "" && (resp == nil || dst.String() != tc.dst):
				t.Fatalf("reply %v to %v, want one to %s", resp, dst, tc.dst)
			}
			if got := count(t, reg, "dhcp4", tc.result); got != before+1 {
				t.Fatalf("requests_total{result=%q} went %v -> %v, want +1", tc.result, before, got)
			}
		})
	}
	if _, ok := s.cfg.Leases.ByMAC("52:54:00:00:10:02", false); ok {
		t.Fatal("a management host got a lease")
	}
}

func TestBounded(t *testing.T) {
	for _, tc := range []struct {
		in   string
		n    int
		want string
	}{
		{"Vlan4000:Ethernet8", 64, `"Vlan4000:Ethernet8"`},
		{"a\nlevel=ERROR msg=forged", 64, `"a\nlevel=ERROR msg=forged"`},
		{strings.Repeat("x", 10), 4, `"xxxx"…(10 bytes)`},
	} {
		if got := bounded([]byte(tc.in), tc.n); got != tc.want {
			t.Errorf("bounded(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}
