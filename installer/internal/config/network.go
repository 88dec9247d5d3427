package config

import (
	"fmt"
	"net"
	"net/netip"
	"strings"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// checkHostname accepts RFC 1123 host names (dotted labels of letters,
// digits and inner hyphens), which is what /etc/hostname and DHCP accept.
func checkHostname(h string) error {
	if h == "" {
		return fmt.Errorf("hostname missing")
	}
	if len(h) > 253 {
		return fmt.Errorf("hostname %.40q...: longer than 253 characters", h)
	}
	for _, l := range strings.Split(h, ".") {
		if l == "" || len(l) > 63 {
			return fmt.Errorf("hostname %q: labels must be 1-63 characters", h)
		}
		if l[0] == '-' || l[len(l)-1] == '-' {
			return fmt.Errorf("hostname %q: a label must not start or end with a hyphen", h)
		}
		for _, r := range l {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Errorf("hostname %q: invalid character %q", h, r)
			}
		}
	}
	return nil
}

// address is one of the machine's addresses with its network's prefix
// length, and the gateway of its network (invalid: none).
type address struct {
	prefix  netip.Prefix
	gateway netip.Addr
}

// addresses are the machine's IPs in every network of the allocation, in
// order. The rule, for the lab: all go onto one interface (System.NIC);
// each address takes the length of the network prefix containing it; the
// default route per address family goes to the first host address of the
// prefix of the first network holding an address of that family (the
// router's conventional address), unless that is the machine itself.
func addresses(nets []*agentv1.MachineNetwork) ([]address, error) {
	var out []address
	gw4, gw6 := false, false
	for _, n := range nets {
		var prefixes []netip.Prefix
		for _, p := range n.GetPrefixes() {
			pp, err := netip.ParsePrefix(p)
			if err != nil {
				return nil, fmt.Errorf("network %s: prefix %q: %w", n.GetNetworkId(), p, err)
			}
			prefixes = append(prefixes, pp.Masked())
		}
		for _, s := range n.GetIps() {
			ip, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("network %s: ip %q: %w", n.GetNetworkId(), s, err)
			}
			var in netip.Prefix
			for _, p := range prefixes {
				if p.Contains(ip) {
					in = p
					break
				}
			}
			if !in.IsValid() {
				return nil, fmt.Errorf("network %s: ip %s is in none of its prefixes %v", n.GetNetworkId(), ip, n.GetPrefixes())
			}
			a := address{prefix: netip.PrefixFrom(ip, in.Bits())}
			first := in.Addr().Next()
			switch {
			case ip.Is4() && !gw4:
				gw4 = true
				if first != ip && in.Bits() < 31 {
					a.gateway = first
				}
			case ip.Is6() && !gw6:
				gw6 = true
				if first != ip && in.Bits() < 127 {
					a.gateway = first
				}
			}
			out = append(out, a)
		}
	}
	return out, nil
}

func networkd(allocation string, sys System, addrs []address, dns []netip.Addr) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by the Metalfleet installer for allocation %s.\n[Match]\n", allocation)
	if sys.MAC != "" {
		fmt.Fprintf(&b, "MACAddress=%s\n", sys.MAC)
	} else {
		fmt.Fprintf(&b, "Name=%s\n", sys.NIC)
	}
	b.WriteString("\n[Network]\n")
	if len(addrs) == 0 {
		b.WriteString("DHCP=yes\n")
	}
	for _, a := range addrs {
		fmt.Fprintf(&b, "Address=%s\n", a.prefix)
	}
	for _, a := range addrs {
		if a.gateway.IsValid() {
			fmt.Fprintf(&b, "Gateway=%s\n", a.gateway)
		}
	}
	for _, ip := range dns {
		fmt.Fprintf(&b, "DNS=%s\n", ip)
	}
	return b.String()
}

// ifupdown is /etc/network/interfaces in the syntax both Debian's ifupdown
// and busybox ifup read: one stanza per family, further addresses added by
// "up" commands (busybox has no repeated stanzas).
func ifupdown(allocation, nic string, addrs []address) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Written by the Metalfleet installer for allocation %s.\nauto lo\niface lo inet loopback\n\nauto %s\n", allocation, nic)
	if len(addrs) == 0 {
		fmt.Fprintf(&b, "iface %s inet dhcp\n", nic)
		return b.String()
	}
	for _, fam := range []string{"inet", "inet6"} {
		var first *address
		var extra []address
		for i := range addrs {
			a := addrs[i]
			if a.prefix.Addr().Is4() != (fam == "inet") {
				continue
			}
			if first == nil {
				first = &addrs[i]
				continue
			}
			extra = append(extra, a)
		}
		if first == nil {
			continue
		}
		fmt.Fprintf(&b, "iface %s %s static\n", nic, fam)
		fmt.Fprintf(&b, "\taddress %s\n", first.prefix.Addr())
		if fam == "inet" {
			fmt.Fprintf(&b, "\tnetmask %s\n", net.IP(net.CIDRMask(first.prefix.Bits(), 32)))
		} else {
			fmt.Fprintf(&b, "\tnetmask %d\n", first.prefix.Bits())
		}
		gw := first.gateway
		for _, a := range extra {
			if !gw.IsValid() && a.gateway.IsValid() {
				gw = a.gateway
			}
		}
		if gw.IsValid() {
			fmt.Fprintf(&b, "\tgateway %s\n", gw)
		}
		for _, a := range extra {
			fmt.Fprintf(&b, "\tup ip addr add %s dev %s\n", a.prefix, nic)
		}
		b.WriteString("\n")
	}
	return b.String()
}

// networkdUplink brings up one of the machine's other NICs with IPv6
// link-local addressing only, accepting router advertisements: its leaf's
// agent relay is reached at the router's link-local address.
func networkdUplink(allocation, nic string) string {
	return fmt.Sprintf("# Written by the Metalfleet installer for allocation %s.\n[Match]\nName=%s\n\n[Network]\nLinkLocalAddressing=ipv6\nIPv6AcceptRA=yes\n", allocation, nic)
}

// ifupdownUplinks brings up the machine's other NICs without addresses:
// the kernel gives them their IPv6 link-local address and learns the
// leaf's from its router advertisements.
func ifupdownUplinks(nics []string) string {
	var b strings.Builder
	for _, n := range nics {
		fmt.Fprintf(&b, "\nauto %s\niface %s inet6 manual\n\tup ip link set dev %s up\n", n, n, n)
	}
	return b.String()
}
