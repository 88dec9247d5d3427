package dhcp

import (
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/iana"

	"github.com/metalfleet/metalfleet/agents/pixie/internal/lease"
)

func newServer4(t testing.TB) *Server4 {
	t.Helper()
	st, _, err := lease.Open("")
	if err != nil {
		t.Fatal(err)
	}
	r, _ := lease.ParseRange("192.0.2.10-192.0.2.20")
	s, err := NewServer4(Config4{
		ServerIP: netip.MustParseAddr("192.0.2.1"), Prefix: netip.MustParsePrefix("192.0.2.0/24"),
		Pool: lease.Pool{Range: r}, Routers: []netip.Addr{netip.MustParseAddr("192.0.2.254")},
		DNS: []netip.Addr{netip.MustParseAddr("192.0.2.53")}, Domain: "lab", LeaseTime: time.Hour,
		Boot:   Boot{BaseURL: "http://192.0.2.1:8080", BIOSFile: "undionly.kpxe", EFIFile: "ipxe.efi"},
		Leases: st,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func discover(t testing.TB, mac string, mods ...dhcpv4.Modifier) *dhcpv4.DHCPv4 {
	t.Helper()
	hw, _ := net.ParseMAC(mac)
	d, err := dhcpv4.NewDiscovery(hw, mods...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestBootAnswers4(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mods   []dhcpv4.Modifier
		file   string
		vendor string
		tftp   bool
	}{
		{"plain", nil, "", "", false},
		{"bios pxe", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC))},
			"undionly.kpxe", "PXEClient", true},
		{"uefi pxe arch 7", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64))},
			"ipxe.efi", "PXEClient", true},
		{"uefi pxe arch 9", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00009:UNDI:003016")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_BC))},
			"ipxe.efi", "PXEClient", true},
		{"uefi http", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64_HTTP))},
			"http://192.0.2.1:8080/ipxe/ipxe.efi", "HTTPClient", false},
		{"ipxe bios", []dhcpv4.Modifier{dhcpv4.WithUserClass("iPXE", false), dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC))},
			"http://192.0.2.1:8080/ipxe/boot.ipxe?arch=bios&mac=52%3A54%3A00%3A00%3A00%3A01", "", false},
		{"ipxe efi rfc3004", []dhcpv4.Modifier{dhcpv4.WithUserClass("iPXE", true), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_BC))},
			"http://192.0.2.1:8080/ipxe/boot.ipxe?arch=efi&mac=52%3A54%3A00%3A00%3A00%3A01", "", false},
		{"ipxe without arch", []dhcpv4.Modifier{dhcpv4.WithUserClass("iPXE", false)},
			"http://192.0.2.1:8080/ipxe/boot.ipxe?mac=52%3A54%3A00%3A00%3A00%3A01", "", false},
		{"arm64 pxe: no binary, plain lease", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00011")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_ARM64))},
			"", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer4(t)
			req := discover(t, "52:54:00:00:00:01", tc.mods...)
			offer, dst := s.Handle(req, netip.Addr{})
			if offer == nil {
				t.Fatal("no offer")
			}
			if offer.MessageType() != dhcpv4.MessageTypeOffer || offer.YourIPAddr.String() != "192.0.2.10" || offer.TransactionID != req.TransactionID {
				t.Fatalf("offer %s", offer.Summary())
			}
			if dst.String() != "255.255.255.255:68" {
				t.Fatalf("offer to %s, want broadcast", dst)
			}
			if got := offer.BootFileNameOption(); got != tc.file {
				t.Fatalf("bootfile %q, want %q", got, tc.file)
			}
			if got := offer.ClassIdentifier(); got != tc.vendor {
				t.Fatalf("vendor class %q, want %q", got, tc.vendor)
			}
			if tc.tftp && (offer.BootFileName != tc.file || offer.TFTPServerName() != "192.0.2.1" || !offer.ServerIPAddr.Equal(net.ParseIP("192.0.2.1"))) {
				t.Fatalf("tftp boot: file %q sname-opt %q siaddr %v", offer.BootFileName, offer.TFTPServerName(), offer.ServerIPAddr)
			}
			if r := offer.Router(); len(r) != 1 || r[0].String() != "192.0.2.254" {
				t.Fatalf("routers %v", r)
			}
			if d := offer.DNS(); len(d) != 1 || d[0].String() != "192.0.2.53" || offer.DomainName() != "lab" {
				t.Fatalf("dns %v domain %q", d, offer.DomainName())
			}
			if m := offer.SubnetMask(); m.String() != "ffffff00" {
				t.Fatalf("mask %v", m)
			}
		})
	}
}

func TestRequestFlow4(t *testing.T) {
	s := newServer4(t)
	pxe := []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC))}
	offer, _ := s.Handle(discover(t, "52:54:00:00:00:01", pxe...), netip.Addr{})
	req, err := dhcpv4.NewRequestFromOffer(offer, pxe...)
	if err != nil {
		t.Fatal(err)
	}
	ack, _ := s.Handle(req, netip.Addr{})
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(offer.YourIPAddr) || ack.BootFileNameOption() != "undionly.kpxe" {
		t.Fatalf("ack %v", ack)
	}
	if lt := ack.IPAddressLeaseTime(0); lt != time.Hour {
		t.Fatalf("lease time %v", lt)
	}
	// Another client asking for the same address is refused.
	hw2, _ := net.ParseMAC("52:54:00:00:00:02")
	other, _ := dhcpv4.New(dhcpv4.WithHwAddr(hw2), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(offer.YourIPAddr)))
	nak, dst := s.Handle(other, netip.Addr{})
	if nak == nil || nak.MessageType() != dhcpv4.MessageTypeNak || dst.String() != "255.255.255.255:68" {
		t.Fatalf("conflicting request: %v to %v", nak, dst)
	}
	// A request for another server's offer is none of pixie's business.
	elsewhere, _ := dhcpv4.New(dhcpv4.WithHwAddr(hw2), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP("192.0.2.99"))), dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.ParseIP("192.0.2.15"))))
	if resp, _ := s.Handle(elsewhere, netip.Addr{}); resp != nil {
		t.Fatalf("answered a request for another server: %v", resp.Summary())
	}
	// Renewing: unicast from the client's address, answered unicast.
	hw1, _ := net.ParseMAC("52:54:00:00:00:01")
	renew, _ := dhcpv4.New(dhcpv4.WithHwAddr(hw1), dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest), dhcpv4.WithClientIP(offer.YourIPAddr))
	ack, dst = s.Handle(renew, netip.Addr{})
	if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || dst.String() != offer.YourIPAddr.String()+":68" {
		t.Fatalf("renew: %v to %v", ack, dst)
	}
	// Relayed from a foreign network: ignored; from this one: answered to the relay.
	foreign := discover(t, "52:54:00:00:00:03", dhcpv4.WithGatewayIP(net.ParseIP("10.9.9.9")))
	if resp, _ := s.Handle(foreign, netip.Addr{}); resp != nil {
		t.Fatal("answered a relay of another network")
	}
	local := discover(t, "52:54:00:00:00:03", dhcpv4.WithGatewayIP(net.ParseIP("192.0.2.2")))
	if resp, dst := s.Handle(local, netip.Addr{}); resp == nil || dst.String() != "192.0.2.2:67" {
		t.Fatalf("relay of this network: %v to %v", resp, dst)
	}
	// Not Ethernet: ignored.
	tr := discover(t, "52:54:00:00:00:04", dhcpv4.WithHWType(iana.HWTypeIEEE802))
	if resp, _ := s.Handle(tr, netip.Addr{}); resp != nil {
		t.Fatal("answered a non-Ethernet client")
	}
	// Release keeps the binding for the client.
	rel, _ := dhcpv4.New(dhcpv4.WithHwAddr(hw1), dhcpv4.WithMessageType(dhcpv4.MessageTypeRelease), dhcpv4.WithClientIP(offer.YourIPAddr))
	if resp, _ := s.Handle(rel, netip.Addr{}); resp != nil {
		t.Fatal("answered a release")
	}
	if again, _ := s.Handle(discover(t, "52:54:00:00:00:01"), netip.Addr{}); again == nil || !again.YourIPAddr.Equal(offer.YourIPAddr) {
		t.Fatalf("released client got %v", again)
	}
}

// FuzzHandle4: whatever arrives on port 67, the server answers or not,
// but never panics, and an answer always goes to a sane place.
func FuzzHandle4(f *testing.F) {
	seed := discover(f, "52:54:00:00:00:01", dhcpv4.WithUserClass("iPXE", false), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_BC)))
	f.Add(seed.ToBytes())
	f.Add(discover(f, "52:54:00:00:00:02", dhcpv4.WithMessageType(dhcpv4.MessageTypeRequest)).ToBytes())
	f.Add([]byte{1, 1, 6, 0})
	s := newServer4(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		req, err := dhcpv4.FromBytes(b)
		if err != nil {
			return
		}
		resp, dst := s.Handle(req, netip.Addr{})
		if resp == nil {
			return
		}
		if dst == nil || dst.Port != 67 && dst.Port != 68 {
			t.Fatalf("reply to %v", dst)
		}
		if _, err := dhcpv4.FromBytes(resp.ToBytes()); err != nil {
			t.Fatalf("reply does not parse: %v", err)
		}
	})
}

func newServer6(t testing.TB) *Server6 {
	t.Helper()
	st, _, _ := lease.Open("")
	r, _ := lease.ParseRange("2001:db8::100-2001:db8::1ff")
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	s, err := NewServer6(Config6{
		ServerMAC: mac, Pool: lease.Pool{Range: r}, DNS: []netip.Addr{netip.MustParseAddr("2001:db8::53")}, LeaseTime: time.Hour,
		Boot:   Boot{BaseURL: "http://[2001:db8::1]:8080", TFTPHost: "[2001:db8::1]", BIOSFile: "undionly.kpxe", EFIFile: "ipxe.efi"},
		Leases: st,
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestSolicitRequest6(t *testing.T) {
	hw, _ := net.ParseMAC("52:54:00:00:00:07")
	for _, tc := range []struct {
		name   string
		mods   []dhcpv6.Modifier
		url    string
		vendor string
	}{
		{"plain", nil, "", ""},
		{"ipxe", []dhcpv6.Modifier{dhcpv6.WithUserClass([]byte("iPXE")), dhcpv6.WithArchType(iana.EFI_BC)},
			"http://[2001:db8::1]:8080/ipxe/boot.ipxe?arch=efi&mac=52%3A54%3A00%3A00%3A00%3A07", ""},
		{"uefi http", []dhcpv6.Modifier{dhcpv6.WithArchType(iana.EFI_X86_64_HTTP), dhcpv6.WithOption(&dhcpv6.OptVendorClass{EnterpriseNumber: 343, Data: [][]byte{[]byte("HTTPClient:Arch:00016:UNDI:003001")}})},
			"http://[2001:db8::1]:8080/ipxe/ipxe.efi", "HTTPClient"},
		{"uefi pxe6", []dhcpv6.Modifier{dhcpv6.WithArchType(iana.EFI_BC), dhcpv6.WithOption(&dhcpv6.OptVendorClass{EnterpriseNumber: 343, Data: [][]byte{[]byte("PXEClient:Arch:00007:UNDI:003016")}})},
			"tftp://[2001:db8::1]/ipxe.efi", "PXEClient"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newServer6(t)
			sol, err := dhcpv6.NewSolicit(hw, tc.mods...)
			if err != nil {
				t.Fatal(err)
			}
			adv := s.Handle(sol)
			if adv == nil || adv.Type() != dhcpv6.MessageTypeAdvertise {
				t.Fatalf("advertise: %v", adv)
			}
			a := adv.Options.OneIANA().Options.OneAddress()
			if a == nil || a.IPv6Addr.String() != "2001:db8::100" {
				t.Fatalf("advertised %v", adv.Options.OneIANA())
			}
			if got := adv.Options.BootFileURL(); got != tc.url {
				t.Fatalf("boot file url %q, want %q", got, tc.url)
			}
			if vc := adv.Options.VendorClasses(); tc.vendor != "" && (len(vc) != 1 || string(vc[0].Data[0]) != tc.vendor) {
				t.Fatalf("vendor class %v, want %s", vc, tc.vendor)
			}
			req, err := dhcpv6.NewRequestFromAdvertise(adv, tc.mods...)
			if err != nil {
				t.Fatal(err)
			}
			rep := s.Handle(req)
			if rep == nil || rep.Type() != dhcpv6.MessageTypeReply || rep.Options.OneIANA().Options.OneAddress().IPv6Addr.String() != "2001:db8::100" {
				t.Fatalf("reply %v", rep)
			}
			if l, ok := s.cfg.Leases.ByMAC("52:54:00:00:00:07", true); !ok || l.Addr.String() != "2001:db8::100" || time.Until(l.Expires) < 50*time.Minute {
				t.Fatalf("lease after reply: %v %v", l, ok)
			}
			if d := rep.Options.DNS(); len(d) != 1 || d[0].String() != "2001:db8::53" {
				t.Fatalf("dns %v", d)
			}
		})
	}
}

func TestOtherServer6(t *testing.T) {
	s := newServer6(t)
	hw, _ := net.ParseMAC("52:54:00:00:00:08")
	sol, _ := dhcpv6.NewSolicit(hw)
	adv := s.Handle(sol)
	other, _ := net.ParseMAC("02:99:99:99:99:99")
	adv.UpdateOption(dhcpv6.OptServerID(&dhcpv6.DUIDLL{HWType: iana.HWTypeEthernet, LinkLayerAddr: other}))
	req, _ := dhcpv6.NewRequestFromAdvertise(adv)
	if rep := s.Handle(req); rep != nil {
		t.Fatalf("answered a request for another server: %v", rep)
	}
	// Rapid commit binds at once.
	rc, _ := dhcpv6.NewSolicit(hw, dhcpv6.WithRapidCommit)
	rep := s.Handle(rc)
	if rep == nil || rep.Type() != dhcpv6.MessageTypeReply || rep.GetOneOption(dhcpv6.OptionRapidCommit) == nil {
		t.Fatalf("rapid commit: %v", rep)
	}
}

// FuzzHandle6: garbage on port 547 never panics the server.
func FuzzHandle6(f *testing.F) {
	hw, _ := net.ParseMAC("52:54:00:00:00:09")
	sol, _ := dhcpv6.NewSolicit(hw, dhcpv6.WithUserClass([]byte("iPXE")), dhcpv6.WithArchType(iana.EFI_BC))
	f.Add(sol.ToBytes())
	f.Add([]byte{1, 0, 0, 1})
	s := newServer6(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		msg, err := dhcpv6.FromBytes(b)
		if err != nil {
			return
		}
		if m, ok := msg.(*dhcpv6.Message); ok {
			if resp := s.Handle(m); resp != nil {
				if _, err := dhcpv6.FromBytes(resp.ToBytes()); err != nil {
					t.Fatalf("reply does not parse: %v", err)
				}
			}
		}
	})
}

// TestPlain4: the BMC network's server hands out addresses and never a
// boot answer, whatever the client says it is.
func TestPlain4(t *testing.T) {
	s := newServer4(t)
	s.cfg.Plain = true
	for _, tc := range []struct {
		name string
		mods []dhcpv4.Modifier
	}{
		{"plain", nil},
		{"uefi pxe", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64))}},
		{"ipxe", []dhcpv4.Modifier{dhcpv4.WithUserClass("iPXE", false), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64))}},
		{"uefi http", []dhcpv4.Modifier{dhcpv4.WithOption(dhcpv4.OptClassIdentifier("HTTPClient:Arch:00016:UNDI:003001")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64_HTTP))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			offer, _ := s.Handle(discover(t, "52:54:00:00:00:0b", tc.mods...), netip.Addr{})
			if offer == nil || offer.MessageType() != dhcpv4.MessageTypeOffer {
				t.Fatalf("offer %v", offer)
			}
			req, err := dhcpv4.NewRequestFromOffer(offer, tc.mods...)
			if err != nil {
				t.Fatal(err)
			}
			ack, _ := s.Handle(req, netip.Addr{})
			if ack == nil || ack.MessageType() != dhcpv4.MessageTypeAck || !ack.YourIPAddr.Equal(offer.YourIPAddr) {
				t.Fatalf("ack %v", ack)
			}
			for _, m := range []*dhcpv4.DHCPv4{offer, ack} {
				if m.BootFileNameOption() != "" || m.BootFileName != "" || m.ClassIdentifier() != "" || m.TFTPServerName() != "" {
					t.Fatalf("%s carries a boot answer: %s", m.MessageType(), m.Summary())
				}
			}
		})
	}
}
