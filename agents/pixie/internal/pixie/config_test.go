package pixie

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/agents/pixie/internal/lease"
)

// TestFillNetworkModes checks the combinations of the network flags on
// the loopback interface (127.0.0.1/8, ::1/128): it stands in for a
// management interface that holds none of the PXE network's addresses.
func TestFillNetworkModes(t *testing.T) {
	r4, _ := lease.ParseRange("10.1.0.100-10.1.0.199")
	r6, _ := lease.ParseRange("fd00:10:1::100-fd00:10:1::1ff")
	a := netip.MustParseAddr
	relayed := func() Config {
		return Config{Interface: "lo", RelayedOnly: true, Range4: r4, Range6: r6,
			ServerIP: a("127.0.0.1"), Subnet: netip.MustParsePrefix("10.1.0.0/24"), Routers: []netip.Addr{a("10.1.0.1")},
			ServerIP6: a("::1"), Subnet6: netip.MustParsePrefix("fd00:10:1::/64")}
	}
	for _, tc := range []struct {
		name string
		cfg  func() Config
		want string // "" = valid
	}{
		{"relayed only, both families", relayed, ""},
		{"relayed only, v4 only", func() Config {
			c := relayed()
			c.Range6, c.ServerIP6, c.Subnet6 = lease.Range{}, netip.Addr{}, netip.Prefix{}
			return c
		}, ""},
		{"relayed only with --ra", func() Config { c := relayed(); c.RA = true; return c }, "--ra with --relayed-only"},
		{"relayed only, no pool", func() Config { c := relayed(); c.Range4, c.Range6 = lease.Range{}, lease.Range{}; return c }, "needs --dhcp4-range or --dhcp6-range"},
		{"relayed only, no --server-ip", func() Config { c := relayed(); c.ServerIP = netip.Addr{}; return c }, "needs --server-ip:"},
		{"relayed only, no --subnet", func() Config { c := relayed(); c.Subnet = netip.Prefix{}; return c }, "needs --subnet:"},
		{"relayed only, no --router", func() Config { c := relayed(); c.Routers = nil; return c }, "needs --router"},
		{"relayed only, router elsewhere", func() Config { c := relayed(); c.Routers = []netip.Addr{a("10.2.0.1")}; return c }, "--router 10.2.0.1 is not inside --subnet 10.1.0.0/24"},
		{"relayed only, server on the PXE network", func() Config { c := relayed(); c.ServerIP = a("10.1.0.2"); return c }, "--server-ip 10.1.0.2 is inside --subnet"},
		{"relayed only, range elsewhere", func() Config { c := relayed(); c.Range4, _ = lease.ParseRange("10.2.0.1-10.2.0.9"); return c }, "--dhcp4-range 10.2.0.1-10.2.0.9 is not inside --subnet"},
		{"relayed only, no --server-ip6", func() Config { c := relayed(); c.ServerIP6 = netip.Addr{}; return c }, "needs --server-ip6"},
		{"relayed only, no --subnet6", func() Config { c := relayed(); c.Subnet6 = netip.Prefix{}; return c }, "needs --subnet6"},
		{"relayed only, v6 range elsewhere", func() Config { c := relayed(); c.Range6, _ = lease.ParseRange("fd00:99::1-fd00:99::9"); return c }, "--dhcp6-range fd00:99::1-fd00:99::9 is not inside --subnet6"},
		{"relayed only, but the interface is on the PXE network", func() Config {
			c := relayed()
			c.Subnet, c.Routers, c.ServerIP = netip.MustParsePrefix("127.0.0.0/8"), []netip.Addr{a("127.0.0.254")}, a("10.9.9.9")
			c.Range4, _ = lease.ParseRange("127.0.0.100-127.0.0.199")
			return c
		}, "--interface lo holds 127.0.0.1 inside --subnet 127.0.0.0/8"},
		{"relayed only, no such interface", func() Config { c := relayed(); c.Interface = "nope0"; return c }, "--interface"},
		{"direct, --subnet not on the interface", func() Config {
			return Config{Interface: "lo", Range4: r4, ServerIP: a("127.0.0.1"), Subnet: netip.MustParsePrefix("10.1.0.0/24")}
		}, "holds no address in --subnet 10.1.0.0/24: for a PXE network reached through DHCP relays give --relayed-only"},
		{"direct, from the interface", func() Config {
			r, _ := lease.ParseRange("127.0.0.100-127.0.0.199")
			return Config{Interface: "lo", Range4: r}
		}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg()
			err := fillNetwork(&cfg)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
		})
	}
}

// TestFillFromPrefixes: an interface holding several networks of a family
// (the lab's PXE bridge also holds the external network's gateways) yields
// the network that holds the DHCP range, whatever order the kernel lists
// the addresses in.
func TestFillFromPrefixes(t *testing.T) {
	r4, _ := lease.ParseRange("10.1.0.100-10.1.0.199")
	r6, _ := lease.ParseRange("fd00:10:1::100-fd00:10:1::1ff")
	p := netip.MustParsePrefix
	pxe4, ext4, pxe6, ext6, ll := p("10.1.0.1/24"), p("10.2.0.1/24"), p("fd00:10:1::1/64"), p("fd00:10:2::1/64"), p("fe80::1/64")
	for _, tc := range []struct {
		name         string
		pfxs         []netip.Prefix
		ra           bool
		wantIP4      string
		wantSubnet4  string
		wantIP6      string
		wantSubnet6  string
		wantRAPrefix string
	}{
		{"PXE first", []netip.Prefix{pxe4, ext4, ll, pxe6, ext6}, true, "10.1.0.1", "10.1.0.0/24", "fd00:10:1::1", "fd00:10:1::/64", "fd00:10:1::/64"},
		{"external first", []netip.Prefix{ext4, pxe4, ext6, ll, pxe6}, true, "10.1.0.1", "10.1.0.0/24", "fd00:10:1::1", "fd00:10:1::/64", "fd00:10:1::/64"},
		{"link-local only for v6", []netip.Prefix{pxe4, ll}, false, "10.1.0.1", "10.1.0.0/24", "invalid IP", "invalid Prefix", ""},
		{"no network holds the range: the first", []netip.Prefix{ext4, ext6}, false, "10.2.0.1", "10.2.0.0/24", "fd00:10:2::1", "fd00:10:2::/64", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := Config{Range4: r4, Range6: r6, RA: tc.ra}
			fillFromPrefixes(&cfg, tc.pfxs, true, true)
			var ra string
			if len(cfg.RAPrefixes) > 0 {
				ra = cfg.RAPrefixes[0].String()
			}
			got := []string{cfg.ServerIP.String(), cfg.Subnet.String(), cfg.ServerIP6.String(), cfg.Subnet6.String(), ra}
			want := []string{tc.wantIP4, tc.wantSubnet4, tc.wantIP6, tc.wantSubnet6, tc.wantRAPrefix}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Fatalf("got %q, want %q", got, want)
			}
		})
	}
}

// TestFillBMC: the BMC network takes pixie's address and prefix from its
// interface (lo: 127.0.0.1/8) and may not share addresses with the PXE
// pool, whose leases are in the same store.
func TestFillBMC(t *testing.T) {
	rng := func(s string) lease.Range { r, _ := lease.ParseRange(s); return r }
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name   string
		cfg    Config
		want   string // "" = valid
		server string
	}{
		{"off", Config{}, "", "invalid IP"},
		{"from the interface", Config{BMC: BMCNetwork{Interface: "lo", Range: rng("127.0.0.100-127.0.0.199")}}, "", "127.0.0.1 127.0.0.0/8"},
		{"given", Config{BMC: BMCNetwork{Interface: "lo", Range: rng("10.9.0.10-10.9.0.20"), ServerIP: a("10.9.0.1"), Subnet: netip.MustParsePrefix("10.9.0.0/24")}}, "", "10.9.0.1 10.9.0.0/24"},
		{"interface without --range", Config{BMC: BMCNetwork{Interface: "lo"}}, "--bmc-interface without --bmc-dhcp4-range", ""},
		{"range without interface", Config{BMC: BMCNetwork{Range: rng("127.0.0.100-127.0.0.199")}}, "needs --bmc-interface", ""},
		{"IPv6", Config{BMC: BMCNetwork{Interface: "lo", Range: rng("fd00::1-fd00::9")}}, "want an IPv4 range", ""},
		{"not on the interface", Config{BMC: BMCNetwork{Interface: "lo", Range: rng("10.9.0.10-10.9.0.20")}}, "holds no IPv4 address in the network of --bmc-dhcp4-range", ""},
		{"no such interface", Config{BMC: BMCNetwork{Interface: "nope0", Range: rng("10.9.0.10-10.9.0.20")}}, "--bmc-interface", ""},
		{"overlaps the PXE pool", Config{Range4: rng("127.0.0.150-127.0.0.250"), BMC: BMCNetwork{Interface: "lo", Range: rng("127.0.0.100-127.0.0.199")}}, "overlaps --dhcp4-range", ""},
		{"router elsewhere", Config{BMC: BMCNetwork{Interface: "lo", Range: rng("127.0.0.100-127.0.0.199"), Routers: []netip.Addr{a("10.0.0.1")}}}, "--bmc-router 10.0.0.1 is not inside", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			cfg.LeaseTime = time.Hour
			err := fillBMC(&cfg)
			if tc.want == "" && err != nil || tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("err %v, want %q", err, tc.want)
			}
			if err != nil {
				return
			}
			if got := cfg.BMC.ServerIP.String() + " " + cfg.BMC.Subnet.String(); tc.server != "invalid IP" && got != tc.server {
				t.Fatalf("server %q, want %q", got, tc.server)
			}
			if cfg.BMC.Range.First.IsValid() && cfg.BMC.LeaseTime != time.Hour {
				t.Fatalf("lease time %v, want --lease-time's", cfg.BMC.LeaseTime)
			}
		})
	}
}
