// Package topo reads a lab's topology: a containerlab-style YAML file
// (nodes with kinds, links between `node:iface` endpoints) plus what the
// lab sets up in central for its partition. Load validates everything and
// fills in stable defaults (MACs, UUIDs, addresses), so the rest of the lab
// works on a complete description.
package topo

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/google/uuid"
	"sigs.k8s.io/yaml"
)

// BMC protocols of a machine.
const (
	BMCRedfish = "redfish"
	BMCIPMI    = "ipmi"
)

// Node kinds.
const (
	KindCentral = "central" // metal-central with its embedded PostgreSQL
	KindPixie   = "pixie"   // the partition's metal-pixie; routes its PXE network to mgmt
	KindLeaf    = "leaf"    // a leaf switch: a bridge over its ports, or a router guest in a fabric
	KindSpine   = "spine"   // a fabric's spine: a router guest peering with the leaves
	KindExit    = "exit"    // a fabric's exit router: holds the external network
	KindMachine = "machine" // a QEMU server with its BMC on mgmt
)

// A topology with a spine is a fabric: its leaves, spine and exit are
// router guests (QEMU: Redis with CONFIG_DB, the SONiC emulation, FRR; the
// leaves run metal-core), the PXE network is the leaves' Vlan4000 relayed
// to pixie, and pixie has no links, only its management address.

// Topology is a whole lab.
type Topology struct {
	Name      string    `json:"name"`
	Mgmt      Mgmt      `json:"mgmt"`
	Partition Partition `json:"partition"`
	Topology  struct {
		Kinds map[string]Node `json:"kinds,omitempty"`
		Nodes map[string]Node `json:"nodes"`
		Links []Link          `json:"links"`
	} `json:"topology"`
}

// Mgmt is the management network: central, pixie's uplink, the BMCs and
// the host (where metalctl runs) share it.
type Mgmt struct {
	IPv4Subnet string `json:"ipv4-subnet"`
	IPv6Subnet string `json:"ipv6-subnet,omitempty"`
	// HostIPv4/HostIPv6 are the host's addresses on it; default the first
	// address of the subnet.
	HostIPv4 string `json:"host-ipv4,omitempty"`
	HostIPv6 string `json:"host-ipv6,omitempty"`
}

// Partition is what the lab creates in central.
type Partition struct {
	ID          string    `json:"id"`
	Description string    `json:"description,omitempty"`
	BootCmdline string    `json:"boot-cmdline,omitempty"`
	Sizes       []Size    `json:"sizes"`
	Images      []Image   `json:"images"`
	Networks    []Network `json:"networks"`
	Tenant      string    `json:"tenant"`
	Project     string    `json:"project"`
}

// Size is a machine size by ranges, as `metalctl size create` takes them.
type Size struct {
	ID      string `json:"id"`
	Cores   string `json:"cores"`
	Memory  string `json:"memory"`
	Storage string `json:"storage"`
}

// Image is an OS image file the lab serves to pixie's image cache.
type Image struct {
	ID      string `json:"id"`
	OS      string `json:"os"`
	Version string `json:"version"`
	File    string `json:"file"` // relative to the repository root
}

// Network is a network of the partition machines are allocated into.
type Network struct {
	ID       string   `json:"id"`
	Type     string   `json:"type"`
	Prefixes []string `json:"prefixes"`
	// ChildPrefixLength of a super network's children: N or ipv4=N /
	// ipv6=N, as `metalctl network create --child-prefix-length` takes it.
	ChildPrefixLength []string `json:"child-prefix-length,omitempty"`
}

// Node is one node; which fields apply depends on its kind.
type Node struct {
	Kind string `json:"kind"`

	// central, pixie, a fabric's leaves (their management port eth0)
	MgmtIPv4 string `json:"mgmt-ipv4,omitempty"`
	MgmtIPv6 string `json:"mgmt-ipv6,omitempty"`

	// a fabric's leaves: the rack they stand in (metal-core --rack)
	Rack string `json:"rack,omitempty"`
	// a fabric's exit: the external network it holds (address/prefix on
	// its loopback, announced to the fabric)
	External []string `json:"external,omitempty"`

	// pixie: its PXE network (a bridge over its links), DHCP ranges and
	// the gateway addresses of the partition's networks it routes.
	PXEIPv4    string   `json:"pxe-ipv4,omitempty"`
	PXEIPv6    string   `json:"pxe-ipv6,omitempty"`
	DHCP4Range string   `json:"dhcp4-range,omitempty"`
	DHCP6Range string   `json:"dhcp6-range,omitempty"`
	Gateways   []string `json:"gateways,omitempty"`
	// BMCDHCP4Range: pixie also serves the BMC network (the management
	// network here) with this DHCPv4 pool; machines without a bmc-ipv4
	// get their BMC's address from it.
	BMCDHCP4Range string `json:"bmc-dhcp4-range,omitempty"`

	// machine; Memory also for router guests (default 384)
	UUID     string `json:"uuid,omitempty"`
	Memory   int    `json:"memory,omitempty"` // MiB
	CPUs     int    `json:"cpus,omitempty"`
	Firmware string `json:"firmware,omitempty"` // uefi or bios
	DiskSize string `json:"disk-size,omitempty"`
	// BMCIPv4 is the BMC's fixed address (metal-bmc's static list);
	// without one the BMC gets its address by DHCP from pixie's
	// bmc-dhcp4-range and metal-bmc finds it in pixie's leases.
	BMCIPv4 string `json:"bmc-ipv4,omitempty"`
	BMCIPv6 string `json:"bmc-ipv6,omitempty"`
	// BMC is the BMC's protocol: redfish (the lab's Redfish server, the
	// default) or ipmi (OpenIPMI's ipmi_sim wired to QEMU's external BMC).
	BMC     string `json:"bmc,omitempty"`
	BMCUser string `json:"bmc-user,omitempty"`
	// MACs by interface name; missing ones are derived from the lab,
	// node and interface names, so they stay the same across runs.
	MACs map[string]string `json:"macs,omitempty"`
}

// Link is a point-to-point link (a veth pair) between two endpoints.
type Link struct {
	Endpoints []string `json:"endpoints"`
}

// Endpoint is one end of a link.
type Endpoint struct{ Node, Iface string }

func (e Endpoint) String() string { return e.Node + ":" + e.Iface }

// Load reads and validates a topology file.
func Load(path string) (*Topology, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read topology: %w", err)
	}
	t, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

var (
	nameRE  = regexp.MustCompile(`^[a-z][a-z0-9-]{0,15}$`)
	ifaceRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,7}$`)
)

// Parse validates a topology and fills in defaults.
func Parse(b []byte) (*Topology, error) {
	t := &Topology{}
	if err := yaml.UnmarshalStrict(b, t); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	if !nameRE.MatchString(t.Name) || len(t.Name) > 8 {
		// Interface names carry it (15 bytes at most in Linux).
		return nil, fmt.Errorf("name %q: want 1-8 of [a-z0-9-], starting with a letter", t.Name)
	}
	if err := t.Mgmt.fill(); err != nil {
		return nil, err
	}
	nodes := t.Topology.Nodes
	if len(nodes) == 0 {
		return nil, errors.New("topology.nodes: empty")
	}
	count := map[string]int{}
	for name, n := range nodes {
		if !nameRE.MatchString(name) || len(name) > 11 {
			return nil, fmt.Errorf("topology.nodes.%s: name: want 1-11 of [a-z0-9-], starting with a letter", name)
		}
		if name == "mgmt" {
			return nil, errors.New("topology.nodes.mgmt: the name is the management network's")
		}
		if d, ok := t.Topology.Kinds[n.Kind]; ok {
			n = n.withDefaults(d)
		}
		if err := t.fillNode(name, &n); err != nil {
			return nil, fmt.Errorf("topology.nodes.%s: %w", name, err)
		}
		nodes[name] = n
		count[n.Kind]++
	}
	if count[KindCentral] != 1 || count[KindPixie] != 1 {
		return nil, fmt.Errorf("topology.nodes: want exactly one central and one pixie, have %d and %d", count[KindCentral], count[KindPixie])
	}
	if err := t.checkBMCUser(); err != nil {
		return nil, err
	}
	if err := t.checkBMCAddresses(); err != nil {
		return nil, err
	}
	if err := t.checkLinks(); err != nil {
		return nil, err
	}
	if err := t.checkFabric(); err != nil {
		return nil, err
	}
	if err := t.checkAddresses(); err != nil {
		return nil, err
	}
	if err := t.Partition.check(); err != nil {
		return nil, fmt.Errorf("partition: %w", err)
	}
	return t, nil
}

func (m *Mgmt) fill() error {
	p4, err := netip.ParsePrefix(m.IPv4Subnet)
	if err != nil || !p4.Addr().Is4() {
		return fmt.Errorf("mgmt.ipv4-subnet %q: want an IPv4 prefix", m.IPv4Subnet)
	}
	if m.HostIPv4 == "" {
		m.HostIPv4 = p4.Masked().Addr().Next().String()
	}
	if m.IPv6Subnet != "" {
		p6, err := netip.ParsePrefix(m.IPv6Subnet)
		if err != nil || p6.Addr().Is4() {
			return fmt.Errorf("mgmt.ipv6-subnet %q: want an IPv6 prefix", m.IPv6Subnet)
		}
		if m.HostIPv6 == "" {
			m.HostIPv6 = p6.Masked().Addr().Next().String()
		}
	}
	return nil
}

// withDefaults fills n's unset machine fields from its kind's defaults.
func (n Node) withDefaults(d Node) Node {
	if n.Memory == 0 {
		n.Memory = d.Memory
	}
	if n.CPUs == 0 {
		n.CPUs = d.CPUs
	}
	if n.Firmware == "" {
		n.Firmware = d.Firmware
	}
	if n.DiskSize == "" {
		n.DiskSize = d.DiskSize
	}
	if n.BMCUser == "" {
		n.BMCUser = d.BMCUser
	}
	if n.BMC == "" {
		n.BMC = d.BMC
	}
	return n
}

func (t *Topology) fillNode(name string, n *Node) error {
	switch n.Kind {
	case KindCentral:
		return needAddr("mgmt-ipv4", n.MgmtIPv4, t.Mgmt.IPv4Subnet)
	case KindPixie:
		if err := needAddr("mgmt-ipv4", n.MgmtIPv4, t.Mgmt.IPv4Subnet); err != nil {
			return err
		}
		if _, err := netip.ParsePrefix(n.PXEIPv4); err != nil {
			return fmt.Errorf("pxe-ipv4 %q: want address/prefix, e.g. 10.1.0.1/24", n.PXEIPv4)
		}
		if n.PXEIPv6 != "" {
			if _, err := netip.ParsePrefix(n.PXEIPv6); err != nil {
				return fmt.Errorf("pxe-ipv6 %q: want address/prefix", n.PXEIPv6)
			}
		}
		if n.DHCP4Range == "" {
			return errors.New("dhcp4-range: required, e.g. 10.1.0.100-10.1.0.199")
		}
		for i, g := range n.Gateways {
			if _, err := netip.ParsePrefix(g); err != nil {
				return fmt.Errorf("gateways[%d] %q: want address/prefix", i, g)
			}
		}
		if n.BMCDHCP4Range != "" {
			first, last, err := ParseRange(n.BMCDHCP4Range)
			if err != nil {
				return fmt.Errorf("bmc-dhcp4-range: %w", err)
			}
			if p := netip.MustParsePrefix(t.Mgmt.IPv4Subnet); !first.Is4() || !p.Contains(first) || !p.Contains(last) {
				return fmt.Errorf("bmc-dhcp4-range %s: not inside the management subnet %s (the lab's BMC network)", n.BMCDHCP4Range, p)
			}
		}
	case KindLeaf:
		if n.MgmtIPv4 != "" {
			if err := needAddr("mgmt-ipv4", n.MgmtIPv4, t.Mgmt.IPv4Subnet); err != nil {
				return err
			}
		}
		if n.Memory == 0 {
			// The router image unpacks to ~90 MB in RAM (Python for
			// frr-reload.py included): at 256 MiB it boots 3× slower.
			n.Memory = 384
		}
	case KindSpine, KindExit:
		for i, e := range n.External {
			if _, err := netip.ParsePrefix(e); err != nil {
				return fmt.Errorf("external[%d] %q: want address/prefix", i, e)
			}
		}
		if n.Memory == 0 {
			// The router image unpacks to ~90 MB in RAM (Python for
			// frr-reload.py included): at 256 MiB it boots 3× slower.
			n.Memory = 384
		}
	case KindMachine:
		if n.UUID == "" {
			n.UUID = uuid.NewSHA1(uuid.NameSpaceOID, []byte("metal-lab/"+t.Name+"/"+name)).String()
		} else if u, err := uuid.Parse(n.UUID); err != nil {
			return fmt.Errorf("uuid %q: %w", n.UUID, err)
		} else {
			// Lower case, as BMCs and the installer report it and as
			// central's BMC intents take it.
			n.UUID = u.String()
		}
		if n.Memory == 0 {
			n.Memory = 1024
		}
		if n.CPUs == 0 {
			n.CPUs = 1
		}
		if n.Memory < 512 || n.CPUs < 1 {
			return fmt.Errorf("memory %d MiB, cpus %d: the installer needs at least 512 MiB and one CPU", n.Memory, n.CPUs)
		}
		switch n.Firmware {
		case "":
			n.Firmware = "uefi"
		case "uefi", "bios":
		default:
			return fmt.Errorf("firmware %q: want uefi or bios", n.Firmware)
		}
		if n.DiskSize == "" {
			n.DiskSize = "4GiB"
		}
		if _, err := ParseBytes(n.DiskSize); err != nil {
			return fmt.Errorf("disk-size: %w", err)
		}
		if n.BMCIPv4 != "" {
			if err := needAddr("bmc-ipv4", n.BMCIPv4, t.Mgmt.IPv4Subnet); err != nil {
				return err
			}
		}
		switch n.BMC {
		case "":
			n.BMC = BMCRedfish
		case BMCRedfish:
		case BMCIPMI:
			if n.BMCIPv4 == "" {
				// metal-bmc takes every lease as a Redfish BMC; an IPMI
				// BMC belongs in its static list.
				return errors.New("bmc ipmi: needs a bmc-ipv4 (IPMI BMCs are metal-bmc's static list, not found in leases)")
			}
		default:
			return fmt.Errorf("bmc %q: want redfish or ipmi", n.BMC)
		}
		if n.BMCUser == "" {
			n.BMCUser = "admin"
		}
		for ifname, mac := range n.MACs {
			hw, err := net.ParseMAC(mac)
			if err != nil || len(hw) != 6 {
				return fmt.Errorf("macs.%s %q: want a MAC address", ifname, mac)
			}
			n.MACs[ifname] = hw.String()
		}
	default:
		return fmt.Errorf("kind %q: want central, pixie, leaf, spine, exit or machine", n.Kind)
	}
	return nil
}

// checkBMCUser refuses machines with different BMC users: the
// partition's metal-bmc logs in to every BMC with the one user and
// password central holds for the partition.
func (t *Topology) checkBMCUser() error {
	var first string
	for _, name := range t.Nodes(KindMachine) {
		u := t.Node(name).BMCUser
		if first == "" {
			first = u
			continue
		}
		if u != first {
			return fmt.Errorf("topology.nodes.%s: bmc-user %q: every machine's BMC has the partition's one user (%q); metal-bmc logs in to all of them with it", name, u, first)
		}
	}
	return nil
}

// checkBMCAddresses: a machine without a fixed BMC address needs pixie
// to serve the BMC network, and no fixed address on it may lie in the
// pool (pixie would hand it out a second time).
func (t *Topology) checkBMCAddresses() error {
	first, last, pool := t.BMCRange()
	for _, name := range t.Nodes(KindMachine) {
		if t.Node(name).BMCIPv4 == "" && !pool {
			return fmt.Errorf("topology.nodes.%s: bmc-ipv4: required unless pixie serves the BMC network (its bmc-dhcp4-range)", name)
		}
	}
	if !pool {
		return nil
	}
	in := func(a string) bool {
		ip, err := netip.ParseAddr(a)
		return err == nil && !ip.Less(first) && !last.Less(ip)
	}
	if in(t.Mgmt.HostIPv4) {
		return fmt.Errorf("topology.nodes.%s: bmc-dhcp4-range %s holds the host's address %s", t.Pixie(), t.Node(t.Pixie()).BMCDHCP4Range, t.Mgmt.HostIPv4)
	}
	for _, name := range t.NodeNames() {
		n := t.Node(name)
		for _, a := range []string{n.MgmtIPv4, n.BMCIPv4} {
			if in(a) {
				return fmt.Errorf("topology.nodes.%s: address %s lies in pixie's bmc-dhcp4-range %s: fixed addresses go outside the pool", name, a, t.Node(t.Pixie()).BMCDHCP4Range)
			}
		}
	}
	return nil
}

// BMCRange is pixie's BMC pool (ok false when it serves none).
func (t *Topology) BMCRange() (first, last netip.Addr, ok bool) {
	first, last, err := ParseRange(t.Node(t.Pixie()).BMCDHCP4Range)
	return first, last, err == nil
}

// LeasedBMC tells whether the machine's BMC gets its address by DHCP.
func (t *Topology) LeasedBMC(machine string) bool {
	n := t.Node(machine)
	return n.Kind == KindMachine && n.BMCIPv4 == ""
}

// ParseRange reads "first-last": two addresses of one family, in order.
func ParseRange(s string) (first, last netip.Addr, err error) {
	a, b, ok := strings.Cut(s, "-")
	if !ok {
		return first, last, fmt.Errorf("%q: want first-last", s)
	}
	if first, err = netip.ParseAddr(strings.TrimSpace(a)); err != nil {
		return first, last, fmt.Errorf("%q: %w", s, err)
	}
	if last, err = netip.ParseAddr(strings.TrimSpace(b)); err != nil {
		return first, last, fmt.Errorf("%q: %w", s, err)
	}
	if first.Is4() != last.Is4() || last.Less(first) {
		return first, last, fmt.Errorf("%q: want first-last of one family, first not after last", s)
	}
	return first, last, nil
}

func needAddr(field, addr, subnet string) error {
	a, err := netip.ParseAddr(addr)
	if err != nil {
		return fmt.Errorf("%s %q: want an address in %s", field, addr, subnet)
	}
	if p := netip.MustParsePrefix(subnet); !p.Contains(a) {
		return fmt.Errorf("%s %s: not in the management subnet %s", field, addr, subnet)
	}
	return nil
}

// ParseEndpoint splits "node:iface".
func ParseEndpoint(s string) (Endpoint, error) {
	node, iface, ok := strings.Cut(s, ":")
	if !ok || node == "" || iface == "" {
		return Endpoint{}, fmt.Errorf("endpoint %q: want node:iface", s)
	}
	return Endpoint{Node: node, Iface: iface}, nil
}

func (t *Topology) checkLinks() error {
	used := map[Endpoint]bool{}
	for i, l := range t.Topology.Links {
		if len(l.Endpoints) != 2 {
			return fmt.Errorf("topology.links[%d]: want two endpoints, have %d", i, len(l.Endpoints))
		}
		var kinds [2]string
		for j, s := range l.Endpoints {
			e, err := ParseEndpoint(s)
			if err != nil {
				return fmt.Errorf("topology.links[%d]: %w", i, err)
			}
			n, ok := t.Topology.Nodes[e.Node]
			if !ok {
				return fmt.Errorf("topology.links[%d]: endpoint %s: no node %q", i, s, e.Node)
			}
			if !ifaceRE.MatchString(e.Iface) {
				return fmt.Errorf("topology.links[%d]: endpoint %s: interface: want 1-8 of [a-z0-9], starting with a letter", i, s)
			}
			if used[e] {
				return fmt.Errorf("topology.links[%d]: endpoint %s is used by another link", i, s)
			}
			used[e] = true
			kinds[j] = n.Kind
		}
		slices.Sort(kinds[:])
		switch kinds {
		case [2]string{KindLeaf, KindMachine}, [2]string{KindLeaf, KindPixie}, [2]string{KindLeaf, KindLeaf},
			[2]string{KindLeaf, KindSpine}, [2]string{KindExit, KindSpine}:
		default:
			return fmt.Errorf("topology.links[%d]: a %s cannot be linked to a %s (machines and pixie attach to leaves, leaves and exits to spines; central is on mgmt)", i, kinds[0], kinds[1])
		}
	}
	for name, n := range t.Topology.Nodes {
		if n.Kind == KindMachine && len(t.Ifaces(name)) == 0 {
			return fmt.Errorf("topology.nodes.%s: a machine needs at least one link to a leaf", name)
		}
	}
	return nil
}

// checkAddresses refuses two nodes with one management address.
func (t *Topology) checkAddresses() error {
	owner := map[string]string{t.Mgmt.HostIPv4: "the host", t.Mgmt.HostIPv6: "the host"}
	for _, name := range t.NodeNames() {
		n := t.Topology.Nodes[name]
		for _, a := range []string{n.MgmtIPv4, n.MgmtIPv6, n.BMCIPv4, n.BMCIPv6} {
			if a == "" {
				continue
			}
			if o, ok := owner[a]; ok {
				return fmt.Errorf("topology.nodes.%s: address %s is already %s's", name, a, o)
			}
			owner[a] = name
		}
	}
	return nil
}

func (p *Partition) check() error {
	if p.ID == "" || p.Tenant == "" || p.Project == "" {
		return errors.New("id, tenant and project are required")
	}
	if len(p.Sizes) == 0 || len(p.Images) == 0 || len(p.Networks) == 0 {
		return errors.New("at least one size, image and network are required")
	}
	for i, n := range p.Networks {
		for j, pr := range n.Prefixes {
			if _, err := netip.ParsePrefix(pr); err != nil {
				return fmt.Errorf("networks[%d].prefixes[%d] %q: %w", i, j, pr, err)
			}
		}
	}
	return nil
}

// NodeNames returns the node names, sorted.
func (t *Topology) NodeNames() []string {
	names := make([]string, 0, len(t.Topology.Nodes))
	for n := range t.Topology.Nodes {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Nodes returns the names of the nodes of one kind, sorted.
func (t *Topology) Nodes(kind string) []string {
	var names []string
	for _, n := range t.NodeNames() {
		if t.Topology.Nodes[n].Kind == kind {
			names = append(names, n)
		}
	}
	return names
}

// Node returns the node called name.
func (t *Topology) Node(name string) Node { return t.Topology.Nodes[name] }

// Ifaces returns a node's interfaces that are link endpoints, in the order
// of the links.
func (t *Topology) Ifaces(node string) []string {
	var out []string
	for _, l := range t.Topology.Links {
		for _, s := range l.Endpoints {
			if e, _ := ParseEndpoint(s); e.Node == node {
				out = append(out, e.Iface)
			}
		}
	}
	return out
}

// Links returns the links as endpoint pairs.
func (t *Topology) Links() [][2]Endpoint {
	out := make([][2]Endpoint, 0, len(t.Topology.Links))
	for _, l := range t.Topology.Links {
		a, _ := ParseEndpoint(l.Endpoints[0])
		b, _ := ParseEndpoint(l.Endpoints[1])
		out = append(out, [2]Endpoint{a, b})
	}
	return out
}

// MAC returns the MAC of a machine's interface: the configured one or one
// derived from the lab, node and interface names (locally administered,
// QEMU's 52:54:00 prefix).
func (t *Topology) MAC(node, iface string) string {
	if m := t.Topology.Nodes[node].MACs[iface]; m != "" {
		return m
	}
	h := sha256.Sum256([]byte(t.Name + "/" + node + "/" + iface))
	return net.HardwareAddr{0x52, 0x54, 0x00, h[0], h[1], h[2]}.String()
}

// Namespace is the network namespace of a node.
func (t *Topology) Namespace(node string) string { return "mf-" + t.Name + "-" + node }

// MgmtNamespace is the namespace of the management bridge.
func (t *Topology) MgmtNamespace() string { return "mf-" + t.Name + "-mgmt" }

// NamespacePrefix is what every namespace of this lab starts with.
func (t *Topology) NamespacePrefix() string { return "mf-" + t.Name + "-" }

// HostLink is the host's interface on the management network.
func (t *Topology) HostLink() string { return "mf-" + t.Name }

// Central returns central's node name.
func (t *Topology) Central() string { return t.Nodes(KindCentral)[0] }

// Pixie returns pixie's node name.
func (t *Topology) Pixie() string { return t.Nodes(KindPixie)[0] }

// ParseBytes reads a size like 4GiB, 512MiB, 2G or a plain byte count.
func ParseBytes(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"K", 1e3}, {"M", 1e6}, {"G", 1e9}, {"T", 1e12}}
	mult := int64(1)
	num := s
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			num, mult = strings.TrimSuffix(s, u.suffix), u.mult
			break
		}
	}
	v, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || v <= 0 {
		return 0, fmt.Errorf("%q: want a positive size like 4GiB", s)
	}
	return v * mult, nil
}

// Fabric tells whether the topology is a routed fabric (it has a spine).
func (t *Topology) Fabric() bool { return len(t.Nodes(KindSpine)) > 0 }

// Routers are the nodes that run as router guests: in a fabric the
// leaves, spines and exits.
func (t *Topology) Routers() []string {
	if !t.Fabric() {
		return nil
	}
	var out []string
	for _, n := range t.NodeNames() {
		switch t.Node(n).Kind {
		case KindLeaf, KindSpine, KindExit:
			out = append(out, n)
		}
	}
	return out
}

// swpRE is a router guest's port in the topology: swpN, the N-th front
// panel port, which the guest names Ethernet<4(N-1)> as SONiC does for
// 4-lane ports.
var swpRE = regexp.MustCompile(`^swp([1-9][0-9]{0,2})$`)

// SONiCPort is the SONiC name of a router guest's port swpN.
func SONiCPort(iface string) (string, bool) {
	m := swpRE.FindStringSubmatch(iface)
	if m == nil {
		return "", false
	}
	n, _ := strconv.Atoi(m[1])
	return "Ethernet" + strconv.Itoa(4*(n-1)), true
}

// Peer is the endpoint at the other end of node:iface's link.
func (t *Topology) Peer(node, iface string) (Endpoint, bool) {
	for _, l := range t.Links() {
		for i, e := range l {
			if e.Node == node && e.Iface == iface {
				return l[1-i], true
			}
		}
	}
	return Endpoint{}, false
}

// checkFabric: in a fabric the router guests' ports are swpN, pixie has no
// links (the leaves relay DHCP to it), every leaf has a management address
// (metal-core talks to central over it) and an uplink to a spine.
func (t *Topology) checkFabric() error {
	if !t.Fabric() {
		for _, n := range t.NodeNames() {
			if k := t.Node(n).Kind; k == KindExit {
				return fmt.Errorf("topology.nodes.%s: an exit needs a spine (a fabric)", n)
			}
		}
		return nil
	}
	if ifs := t.Ifaces(t.Pixie()); len(ifs) > 0 {
		return fmt.Errorf("topology.nodes.%s: in a fabric pixie has no links (the leaves relay DHCP to its management address); it has %s", t.Pixie(), strings.Join(ifs, ", "))
	}
	for _, name := range t.Routers() {
		n := t.Node(name)
		for _, iface := range t.Ifaces(name) {
			if _, ok := SONiCPort(iface); !ok {
				return fmt.Errorf("topology.nodes.%s: port %s: a router guest's ports are swp1, swp2, … (Ethernet0, Ethernet4, … inside)", name, iface)
			}
		}
		if n.Kind != KindLeaf {
			continue
		}
		if n.MgmtIPv4 == "" {
			return fmt.Errorf("topology.nodes.%s: mgmt-ipv4: a fabric's leaf needs a management address (metal-core reaches central over it)", name)
		}
		up := false
		for _, iface := range t.Ifaces(name) {
			if p, ok := t.Peer(name, iface); ok && t.Node(p.Node).Kind == KindSpine {
				up = true
			}
		}
		if !up {
			return fmt.Errorf("topology.nodes.%s: a fabric's leaf needs a link to a spine", name)
		}
	}
	return nil
}
