package lab

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/metalfleet/metalfleet/lab/internal/netlab"
	"github.com/metalfleet/metalfleet/lab/internal/topo"
)

// Interface names the lab gives inside namespaces.
const (
	mgmtBridge = "mgmt" // in the mgmt namespace
	mgmtIface  = "mgmt0"
	pxeBridge  = "pxe"  // in pixie's namespace, over its links to the leaves
	leafBridge = "br0"  // in a leaf's namespace, over its ports
	bmcIface   = "bmc0" // in a machine's namespace: the BMC's port on mgmt
)

// wireMTU is the MTU of a fabric's wires (veths, taps and the bridges
// between them): frames of SONiC's largest port MTU pass.
const wireMTU = 9216

// tapOf and bridgeOf name what joins a machine NIC's veth to QEMU.
func tapOf(iface string) string    { return "tap-" + iface }
func bridgeOf(iface string) string { return "br-" + iface }

// buildNetwork creates every namespace, link, bridge, address and route of
// the topology:
//
//   - mgmt: a bridge in its own namespace; the host, central, pixie and
//     each machine's BMC have a port on it (dual-stack addresses);
//   - each link is a veth pair between its two nodes' namespaces;
//   - a leaf bridges its ports; pixie bridges its links into the PXE
//     network, serves it and routes it (and the partition's networks,
//     whose gateways it holds) to mgmt;
//   - a machine bridges each of its NICs' veth with a tap QEMU opens.
func buildNetwork(t *topo.Topology) error {
	nodes := t.NodeNames()
	if err := netlab.CreateNS(t.MgmtNamespace()); err != nil {
		return err
	}
	for _, n := range nodes {
		if err := netlab.CreateNS(t.Namespace(n)); err != nil {
			return err
		}
	}
	mgmt := t.MgmtNamespace()
	v4 := netip.MustParsePrefix(t.Mgmt.IPv4Subnet).Bits()
	cidrs := func(a4, a6 string) []string {
		var out []string
		if a4 != "" {
			out = append(out, fmt.Sprintf("%s/%d", a4, v4))
		}
		if a6 != "" && t.Mgmt.IPv6Subnet != "" {
			out = append(out, fmt.Sprintf("%s/%d", a6, netip.MustParsePrefix(t.Mgmt.IPv6Subnet).Bits()))
		}
		return out
	}
	ports := []string{"host"}
	if err := netlab.Veth(netlab.End{Name: t.HostLink()}, netlab.End{NS: mgmt, Name: "host"}); err != nil {
		return err
	}
	if err := netlab.Addr("", t.HostLink(), cidrs(t.Mgmt.HostIPv4, t.Mgmt.HostIPv6)...); err != nil {
		return err
	}
	for _, name := range nodes {
		n := t.Node(name)
		ns := t.Namespace(name)
		var addrs []string
		inside, mac := mgmtIface, ""
		switch n.Kind {
		case topo.KindCentral, topo.KindPixie:
			addrs = cidrs(n.MgmtIPv4, n.MgmtIPv6)
		case topo.KindMachine:
			// A BMC without a fixed IPv4 address gets it by DHCP (its
			// `metal-lab bmc --dhcp`); its MAC is the lab's own, stable
			// across runs like the machines' NICs', as a BMC's is.
			inside, mac, addrs = bmcIface, t.MAC(name, bmcIface), cidrs(n.BMCIPv4, n.BMCIPv6)
		case topo.KindLeaf, topo.KindSpine, topo.KindExit:
			if !t.Fabric() {
				continue
			}
			// A router guest's management port: the guest's eth0 holds
			// the addresses (a tap bridged with this veth, below).
			inside = routerMgmt
		default:
			continue
		}
		if err := netlab.Veth(netlab.End{NS: ns, Name: inside, MAC: mac}, netlab.End{NS: mgmt, Name: name}); err != nil {
			return err
		}
		if err := netlab.Addr(ns, inside, addrs...); err != nil {
			return err
		}
		ports = append(ports, name)
	}
	if err := netlab.Bridge(mgmt, mgmtBridge, ports...); err != nil {
		return err
	}

	for _, l := range t.Links() {
		a, b := l[0], l[1]
		if err := netlab.Veth(netlab.End{NS: t.Namespace(a.Node), Name: a.Iface}, netlab.End{NS: t.Namespace(b.Node), Name: b.Iface}); err != nil {
			return fmt.Errorf("link %s ↔ %s: %w", a, b, err)
		}
		if !t.Fabric() {
			continue
		}
		// A fabric's wires carry what its ports send: the leaves' and
		// spine's ports have MTU 9216 (9000 towards machines), and a host
		// bridge drops every frame longer than the MTU of the link it
		// leaves by — a BGP UPDATE longer than 1,500 bytes stalled the
		// session behind it until the spine's hold timer expired.
		for _, e := range l {
			if err := netlab.MTU(t.Namespace(e.Node), e.Iface, wireMTU); err != nil {
				return err
			}
		}
	}
	routers := t.Routers()
	for _, name := range nodes {
		n, ns := t.Node(name), t.Namespace(name)
		switch {
		case n.Kind == topo.KindLeaf && !t.Fabric():
			if err := netlab.Bridge(ns, leafBridge, t.Ifaces(name)...); err != nil {
				return err
			}
		case n.Kind == topo.KindMachine || slices.Contains(routers, name):
			ifaces := t.Ifaces(name)
			if n.Kind != topo.KindMachine {
				ifaces = append([]string{routerMgmt}, ifaces...)
			}
			for _, iface := range ifaces {
				if err := netlab.Bridge(ns, bridgeOf(iface), iface); err != nil {
					return err
				}
				if err := netlab.Tap(ns, tapOf(iface), bridgeOf(iface)); err != nil {
					return err
				}
				if t.Fabric() && iface != routerMgmt {
					if err := netlab.MTU(ns, tapOf(iface), wireMTU); err != nil {
						return err
					}
				}
			}
		case n.Kind == topo.KindPixie && t.Fabric():
			if err := buildRelayedPXE(t); err != nil {
				return err
			}
		case n.Kind == topo.KindPixie:
			if err := buildPixieNet(t, name); err != nil {
				return err
			}
		}
	}
	return nil
}

// buildRelayedPXE routes a fabric's PXE network from central and pixie to
// the leaves' management addresses (one path per leaf): the leaves hold
// its gateway on their Vlan4000 and relay DHCP to pixie.
func buildRelayedPXE(t *topo.Topology) error {
	px := t.Node(t.Pixie())
	var v4, v6 []string
	for _, l := range t.Nodes(topo.KindLeaf) {
		n := t.Node(l)
		v4 = append(v4, n.MgmtIPv4)
		if n.MgmtIPv6 != "" {
			v6 = append(v6, n.MgmtIPv6)
		}
	}
	for _, node := range []string{t.Central(), t.Pixie()} {
		ns := t.Namespace(node)
		if err := netlab.RouteMulti(ns, netip.MustParsePrefix(px.PXEIPv4).Masked().String(), v4...); err != nil {
			return err
		}
		if px.PXEIPv6 != "" && len(v6) > 0 && t.Node(node).MgmtIPv6 != "" {
			if err := netlab.RouteMulti(ns, netip.MustParsePrefix(px.PXEIPv6).Masked().String(), v6...); err != nil {
				return err
			}
		}
	}
	return nil
}

// buildPixieNet makes pixie's PXE bridge, its addresses and the routes
// between the PXE network (plus the partition's networks) and mgmt.
func buildPixieNet(t *topo.Topology, name string) error {
	n, ns := t.Node(name), t.Namespace(name)
	if err := netlab.Bridge(ns, pxeBridge, t.Ifaces(name)...); err != nil {
		return err
	}
	addrs := []string{n.PXEIPv4}
	if n.PXEIPv6 != "" {
		addrs = append(addrs, n.PXEIPv6)
	}
	addrs = append(addrs, n.Gateways...)
	if err := netlab.Addr(ns, pxeBridge, addrs...); err != nil {
		return err
	}
	for _, key := range []string{"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"} {
		if err := netlab.Sysctl(ns, key, "1"); err != nil {
			return err
		}
	}
	// Central answers the machines through pixie.
	central := t.Node(t.Central())
	for _, a := range addrs {
		p := netip.MustParsePrefix(a).Masked()
		via := n.MgmtIPv4
		if p.Addr().Is6() {
			if n.MgmtIPv6 == "" || central.MgmtIPv6 == "" {
				continue
			}
			via = n.MgmtIPv6
		}
		if err := netlab.Route(t.Namespace(t.Central()), p.String(), via); err != nil {
			return err
		}
	}
	return nil
}

// teardownNetwork deletes every namespace of the lab (their devices go
// with them) and the host's link to mgmt. It works from names alone, so it
// also cleans up after a run that crashed before writing its state.
func teardownNetwork(t *topo.Topology) error {
	names, err := netlab.ListNS(t.NamespacePrefix())
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := netlab.DeleteNS(n); err != nil {
			return err
		}
	}
	return netlab.DeleteLink("", t.HostLink())
}
