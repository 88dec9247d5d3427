// Package spec turns a switch's desired document into what metal-core
// applies: ports under their SONiC names with their role, tenant VRFs with
// their VLAN and prefixes, BGP peer groups with the fabric's defaults. The
// SONiC backend and the FRR renderer both work from a Spec, so they cannot
// disagree about the document.
package spec

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// SONiC's and the fabric's conventions.
const (
	// VRFPrefix starts every tenant VRF's name: SONiC accepts only VRF
	// names that start with "Vrf" and have at most 15 characters.
	VRFPrefix = "Vrf"
	// TenantVLANMin and TenantVLANMax bound the leaf-local VLANs of tenant
	// VRFs; the PXE VLAN lies outside.
	TenantVLANMin = 1001
	TenantVLANMax = 2000
	// MachineMTU is a machine port's MTU, FabricMTU an uplink's or a
	// firewall port's (room for the VXLAN header).
	MachineMTU = 9000
	FabricMTU  = 9216
	// maxVNI is the largest 24-bit VXLAN network identifier.
	maxVNI = 1<<24 - 1
)

// Peer group names, as in metal-stack's leaf frr.conf.
const (
	GroupFabric   = "FABRIC"
	GroupFirewall = "FIREWALL"
	GroupMachine  = "MACHINE"
)

// Spec is a checked switch document.
type Spec struct {
	Hostname string
	ASN      uint32
	RouterID netip.Addr
	// Loopback may be invalid (not given).
	Loopback netip.Addr
	PXEVLAN  uint16
	// Ports are the managed ports that passed their checks, in the
	// switch's port order (Ethernet0, Ethernet4, …, Ethernet120).
	Ports []Port
	// VRFs by VNI.
	VRFs []VRF
	// Groups has an entry for each of FABRIC, FIREWALL and MACHINE.
	Groups map[string]PeerGroup
	// ManagementGateway may be invalid (no management route).
	ManagementGateway netip.Addr
	SetSourceLoopback bool
	// Bad holds the ports left out, by their name in the document, with
	// the reason: one bad port must not keep the others from converging,
	// and a port left out is left as it is on the switch.
	Bad map[string]error
}

// Port is one managed port.
type Port struct {
	// Name is the SONiC name: CONFIG_DB PORT key and Linux netdev.
	Name string
	// DocName is the name the document used (by the naming schema).
	DocName string
	Role    agentv1.SwitchPortRole
	AdminUp bool
	MTU     int
	// VRF is the tenant VRF's name (Vrf<vni>), only for tenant ports.
	VRF string
	// Filter is set for firewall ports.
	Filter Filter
}

// Routed reports whether the port is a layer-3 interface (INTERFACE row):
// every role but unprovisioned.
func (p Port) Routed() bool { return p.Role != agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UNPROVISIONED }

// Filter is a firewall port's BGP filter.
type Filter struct {
	VNIs   []uint32
	V4, V6 []netip.Prefix
}

// VRF is one tenant VRF.
type VRF struct {
	Name string
	VNI  uint32
	VLAN uint16
	// V4 and V6 are the VRF's prefixes, compacted.
	V4, V6 []netip.Prefix
	// Ports are the SONiC names of the VRF's tenant ports.
	Ports []string
}

// PeerGroup is one BGP peer group's options.
type PeerGroup struct {
	Name          string
	RemoteAS      string
	Keepalive     uint32
	Hold          uint32
	AllowasIn     uint32
	MaximumPrefix uint32
}

// VRFName is the SONiC and FRR name of the tenant VRF of vni.
func VRFName(vni uint32) string { return VRFPrefix + strconv.FormatUint(uint64(vni), 10) }

// ParseVRFName returns the VNI of a tenant VRF's name; false for any other
// name (default, mgmt, or a VRF someone else made).
func ParseVRFName(name string) (uint32, bool) {
	s, ok := strings.CutPrefix(name, VRFPrefix)
	if !ok || s == "" || s[0] == '0' {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil || n == 0 || n > maxVNI {
		return 0, false
	}
	return uint32(n), true
}

// VLANName is SONiC's name of VLAN vid.
func VLANName(vid uint16) string { return "Vlan" + strconv.Itoa(int(vid)) }

// Resolver maps a port name of the document to its SONiC name; false when
// the switch has no such port.
type Resolver func(name string) (string, bool)

// Build checks doc and resolves its port names. An error means the whole
// document is refused and nothing may be applied: a bad VRF left out would
// look like a VRF to remove. Bad ports only end up in Spec.Bad.
func Build(doc *agentv1.SwitchDocument, resolve Resolver) (*Spec, error) {
	if doc == nil {
		return nil, errors.New("desired document has no switch part")
	}
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	s := &Spec{Hostname: doc.GetName(), ASN: doc.GetAsn(), Bad: map[string]error{}}
	if s.Hostname == "" || strings.ContainsAny(s.Hostname, " \t\r\n!") {
		bad("name %q: want a host name", s.Hostname)
	}
	if s.ASN == 0 {
		bad("asn: required")
	}
	var err error
	if s.RouterID, err = netip.ParseAddr(doc.GetRouterId()); err != nil || !s.RouterID.Is4() {
		bad("router_id %q: want an IPv4 address", doc.GetRouterId())
	}
	if l := doc.GetLoopback(); l != "" {
		if s.Loopback, err = netip.ParseAddr(l); err != nil {
			bad("loopback %q: %v", l, err)
		}
	}
	if doc.GetSetSourceLoopback() && !s.Loopback.Is4() {
		bad("set_source_loopback needs an IPv4 loopback")
	}
	if g := doc.GetManagementGateway(); g != "" {
		if s.ManagementGateway, err = netip.ParseAddr(g); err != nil || !s.ManagementGateway.Is4() {
			bad("management_gateway %q: want an IPv4 address", g)
		}
	}
	s.SetSourceLoopback = doc.GetSetSourceLoopback()
	pxe := doc.GetPxeVlanId()
	if pxe == 0 || pxe > 4094 || (pxe >= TenantVLANMin && pxe <= TenantVLANMax) {
		bad("pxe_vlan_id %d: want 1-4094 outside %d-%d", pxe, TenantVLANMin, TenantVLANMax)
	}
	s.PXEVLAN = uint16(pxe)

	vrfs := map[uint32]int{}
	vlans := map[uint32]uint32{}
	for i, v := range doc.GetVrfs() {
		vni, vid := v.GetVni(), v.GetVlanId()
		switch {
		case vni == 0 || vni > maxVNI:
			bad("vrfs[%d].vni %d: want 1-%d", i, vni, maxVNI)
			continue
		case vid < TenantVLANMin || vid > TenantVLANMax:
			bad("vrfs[%d].vlan_id %d: want %d-%d", i, vid, TenantVLANMin, TenantVLANMax)
			continue
		}
		if _, dup := vrfs[vni]; dup {
			bad("vrfs[%d].vni %d: twice", i, vni)
			continue
		}
		if other, dup := vlans[vid]; dup {
			bad("vrfs[%d].vlan_id %d: also VRF %s's", i, vid, VRFName(other))
			continue
		}
		v4, v6, err := prefixes(v.GetCidrs())
		if err != nil {
			bad("vrfs[%d].cidrs: %v", i, err)
			continue
		}
		vrfs[vni], vlans[vid] = len(s.VRFs), vni
		s.VRFs = append(s.VRFs, VRF{Name: VRFName(vni), VNI: vni, VLAN: uint16(vid), V4: v4, V6: v6})
	}

	s.Groups = map[string]PeerGroup{
		GroupFabric:   {Name: GroupFabric, RemoteAS: "external", Keepalive: 2, Hold: 8, AllowasIn: 2},
		GroupFirewall: {Name: GroupFirewall, RemoteAS: "external", Keepalive: 2, Hold: 8, AllowasIn: 2},
		GroupMachine:  {Name: GroupMachine, RemoteAS: "external", Keepalive: 2, Hold: 8, MaximumPrefix: 24000},
	}
	for i, g := range doc.GetPeerGroups() {
		pg, ok := s.Groups[g.GetName()]
		if !ok {
			bad("peer_groups[%d].name %q: want FABRIC, FIREWALL or MACHINE", i, g.GetName())
			continue
		}
		if ras := g.GetRemoteAs(); ras != "" {
			if _, err := strconv.ParseUint(ras, 10, 32); err != nil && ras != "external" && ras != "internal" {
				bad("peer_groups[%d].remote_as %q: want external, internal or an AS number", i, ras)
				continue
			}
			pg.RemoteAS = ras
		}
		if g.GetKeepaliveSeconds() != 0 {
			pg.Keepalive = g.GetKeepaliveSeconds()
		}
		if g.GetHoldSeconds() != 0 {
			pg.Hold = g.GetHoldSeconds()
		}
		if pg.Hold < 3*pg.Keepalive && pg.Hold != 0 {
			bad("peer_groups[%d]: hold time %d below three keepalives (%d)", i, pg.Hold, pg.Keepalive)
			continue
		}
		if g.GetAllowasIn() != 0 {
			pg.AllowasIn = min(g.GetAllowasIn(), 10)
		}
		if g.GetMaximumPrefix() != 0 {
			pg.MaximumPrefix = g.GetMaximumPrefix()
		}
		s.Groups[pg.Name] = pg
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("switch document: %w", errors.Join(errs...))
	}

	seen := map[string]int{}
	for _, p := range doc.GetPorts() {
		seen[p.GetName()]++
	}
	sonicNames := map[string]string{}
	for _, p := range doc.GetPorts() {
		port, err := s.port(p, resolve, vrfs, seen[p.GetName()])
		if err == nil {
			if other, dup := sonicNames[port.Name]; dup {
				err = fmt.Errorf("is SONiC port %s, as is %q", port.Name, other)
				s.Bad[other] = fmt.Errorf("is SONiC port %s, as is %q", port.Name, p.GetName())
			}
			sonicNames[port.Name] = p.GetName()
		}
		if err != nil {
			s.Bad[p.GetName()] = err
			continue
		}
		s.Ports = append(s.Ports, port)
	}
	s.Ports = slices.DeleteFunc(s.Ports, func(p Port) bool { return s.Bad[p.DocName] != nil })
	slices.SortFunc(s.Ports, func(a, b Port) int { return ComparePorts(a.Name, b.Name) })
	for _, p := range s.Ports {
		if p.VRF != "" {
			v := &s.VRFs[vrfs[mustVNI(p.VRF)]]
			v.Ports = append(v.Ports, p.Name)
		}
	}
	slices.SortFunc(s.VRFs, func(a, b VRF) int { return cmp.Compare(a.VNI, b.VNI) })
	return s, nil
}

func mustVNI(name string) uint32 {
	vni, _ := ParseVRFName(name)
	return vni
}

// port checks one port of the document.
func (s *Spec) port(p *agentv1.SwitchPort, resolve Resolver, vrfs map[uint32]int, count int) (Port, error) {
	if count > 1 {
		return Port{}, errors.New("named more than once")
	}
	name, ok := resolve(p.GetName())
	if !ok {
		return Port{}, errors.New("no such port on the switch")
	}
	out := Port{Name: name, DocName: p.GetName(), Role: p.GetRole(), MTU: int(p.GetMtu())}
	switch p.GetAdminState() {
	case agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_UNSPECIFIED, agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_UP:
		out.AdminUp = true
	case agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_DOWN:
	default:
		return Port{}, fmt.Errorf("admin_state %v: unknown", p.GetAdminState())
	}
	defMTU := MachineMTU
	switch out.Role {
	case agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UPLINK:
		defMTU = FabricMTU
	case agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UNPROVISIONED:
	case agentv1.SwitchPortRole_SWITCH_PORT_ROLE_TENANT:
		if _, ok := vrfs[p.GetVrfVni()]; !ok {
			return Port{}, fmt.Errorf("vrf_vni %d: not among the document's VRFs", p.GetVrfVni())
		}
		out.VRF = VRFName(p.GetVrfVni())
	case agentv1.SwitchPortRole_SWITCH_PORT_ROLE_FIREWALL:
		defMTU = FabricMTU
		f := p.GetFirewallFilter()
		var err error
		if out.Filter.V4, out.Filter.V6, err = prefixes(f.GetCidrs()); err != nil {
			return Port{}, fmt.Errorf("firewall_filter.cidrs: %w", err)
		}
		for _, vni := range f.GetVnis() {
			if vni == 0 || vni > maxVNI {
				return Port{}, fmt.Errorf("firewall_filter.vnis: %d: want 1-%d", vni, maxVNI)
			}
		}
		out.Filter.VNIs = slices.Compact(slices.Sorted(slices.Values(f.GetVnis())))
	default:
		return Port{}, fmt.Errorf("role %v: want uplink, unprovisioned, tenant or firewall", out.Role)
	}
	if out.Role != agentv1.SwitchPortRole_SWITCH_PORT_ROLE_TENANT && p.GetVrfVni() != 0 {
		return Port{}, fmt.Errorf("vrf_vni %d: only tenant ports have a VRF", p.GetVrfVni())
	}
	if out.MTU == 0 {
		out.MTU = defMTU
	}
	if out.MTU < 1280 || out.MTU > FabricMTU {
		return Port{}, fmt.Errorf("mtu %d: want 1280-%d", out.MTU, FabricMTU)
	}
	return out, nil
}

// prefixes parses CIDRs into compacted IPv4 and IPv6 lists: sorted, each
// without the prefixes another one of the list already contains.
func prefixes(cidrs []string) (v4, v6 []netip.Prefix, err error) {
	var all []netip.Prefix
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, nil, err
		}
		all = append(all, p.Masked())
	}
	slices.SortFunc(all, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.Bits(), b.Bits())
	})
	for _, p := range all {
		list := &v4
		if p.Addr().Is6() {
			list = &v6
		}
		// Sorted by address, then length: a containing prefix comes
		// before everything it contains.
		if n := len(*list); n > 0 && (*list)[n-1].Contains(p.Addr()) && (*list)[n-1].Bits() <= p.Bits() {
			continue
		}
		*list = append(*list, p)
	}
	return v4, v6, nil
}

// ComparePorts orders port names as a switch lists them: by their text,
// with runs of digits compared as numbers (Ethernet4 before Ethernet12).
func ComparePorts(a, b string) int {
	for a != "" && b != "" {
		da, db := digits(a), digits(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := cmp.Compare(len(na), len(nb)); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

func digits(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}
