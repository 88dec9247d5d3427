package phonehome

import (
	"bufio"
	"encoding/hex"
	"io"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
)

// Routers are the IPv6 default routers of the system, read from the
// kernel's routing table (/proc/net/ipv6_route format), each with the
// interface as its zone, in table order, without repeats. On a machine
// whose ports are in its tenant VRF these are its two leaves, learned by
// router advertisements on its two uplinks: the leaves' agent relays
// listen there (docs/network.md, "The agent relay").
func Routers(r io.Reader) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	sc := bufio.NewScanner(io.LimitReader(r, 4<<20))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		// dest destlen src srclen nexthop metric refcnt use flags dev
		if len(f) < 10 || f[0] != strings.Repeat("0", 32) || f[1] != "00" {
			continue
		}
		b, err := hex.DecodeString(f[4])
		if err != nil || len(b) != 16 {
			continue
		}
		a := netip.AddrFrom16([16]byte(b))
		if !a.IsLinkLocalUnicast() || f[9] == "lo" || len(f[9]) > 15 {
			continue
		}
		a = a.WithZone(f[9])
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

// Endpoints are where the phone-home dials: the agent relays of the
// machine's default routers on port (when the file names a relay port and
// routers are found), then central's own endpoints, which a machine not
// (yet) in a tenant VRF reaches directly. The agent runtime moves on to the
// next when one fails, so losing a leaf loses one relay, not the way home.
func (f *File) Endpoints(routesFile string) []string {
	if f.RelayPort == 0 {
		return f.Centrals
	}
	var out []string
	if rf, err := os.Open(routesFile); err == nil {
		for _, r := range Routers(rf) {
			out = append(out, net.JoinHostPort(r.String(), strconv.Itoa(f.RelayPort)))
		}
		rf.Close()
	}
	return append(out, f.Centrals...)
}
