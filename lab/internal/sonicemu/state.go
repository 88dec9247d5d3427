package sonicemu

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// The CONFIG_DB tables the emulation renders. Everything else (DEVICE_
// METADATA, MGMT_*, VXLAN_EVPN_NVO, the ports' alias/lanes/speed) is read by
// metal-core or FRR, or has nothing to render in a Linux-only switch.
var tables = []string{
	"PORT", "VRF", "VLAN", "VLAN_MEMBER", "VLAN_INTERFACE", "INTERFACE",
	"LOOPBACK_INTERFACE", "VXLAN_TUNNEL", "VXLAN_TUNNEL_MAP", "SUPPRESS_VLAN_NEIGH",
}

// State is what CONFIG_DB asks of the switch's Linux, keyed by the Linux
// device it concerns. The zero State is a switch with nothing configured.
type State struct {
	// Ports are PORT rows by port name (= netdev).
	Ports map[string]Port
	// VRFs are VRF rows by name.
	VRFs map[string]VRF
	// VLANs are VLAN rows by VLAN id, with their VLAN_MEMBER rows.
	VLANs map[int]VLAN
	// Routed are INTERFACE (ports), VLAN_INTERFACE (SVIs) and
	// LOOPBACK_INTERFACE rows by netdev, with their address rows.
	Routed map[string]Routed
	// Tunnels are VXLAN_TUNNEL rows: name -> src_ip.
	Tunnels map[string]string
	// VNIMaps are VXLAN_TUNNEL_MAP rows by VLAN id.
	VNIMaps map[int]VNIMap
	// Suppress are VLAN ids with SUPPRESS_VLAN_NEIGH suppress=on.
	Suppress map[int]bool
}

// Port is a PORT row's part SONiC's portmgrd renders onto the netdev.
type Port struct {
	MTU     int  // 0: leave as it is
	AdminUp bool // admin_status=up; SONiC's default is down
}

// VRF is a VRF row.
type VRF struct {
	VNI int
}

// VLAN is a VLAN row and its members.
type VLAN struct {
	MTU     int
	AdminUp bool
	// DHCPServers and DHCPv6Servers are dhcp_servers@ and
	// dhcpv6_servers@ (comma-separated lists): SONiC's dhcp_relay
	// container relays the VLAN's DHCP to them.
	DHCPServers   []netip.Addr
	DHCPv6Servers []netip.Addr
	// Members maps a port to true when it is tagged.
	Members map[string]bool
}

// Kind is the table a routed interface comes from.
type Kind int

// The routed interface tables.
const (
	KindPort     Kind = iota // INTERFACE
	KindSVI                  // VLAN_INTERFACE
	KindLoopback             // LOOPBACK_INTERFACE
)

// Routed is an interface with a layer-3 configuration.
type Routed struct {
	Kind Kind
	// VRF is vrf_name; empty for the default VRF.
	VRF string
	// Addrs are the address rows (prefixes), sorted.
	Addrs []string
	// LinkLocalOnly is ipv6_use_link_local_only=enable.
	LinkLocalOnly bool
}

// VNIMap is a VXLAN_TUNNEL_MAP row.
type VNIMap struct {
	Tunnel string
	VNI    int
}

func (s *State) init() {
	s.Ports = map[string]Port{}
	s.VRFs = map[string]VRF{}
	s.VLANs = map[int]VLAN{}
	s.Routed = map[string]Routed{}
	s.Tunnels = map[string]string{}
	s.VNIMaps = map[int]VNIMap{}
	s.Suppress = map[int]bool{}
}

// Read reads the tables the emulation renders from CONFIG_DB (sep is the
// key separator, "|") into a State. Rows it cannot make sense of are
// returned as errors beside the State, which holds every other row, as a
// SONiC manager logs a bad row and goes on.
func Read(ctx context.Context, c *redis.Client, sep string) (State, []error, error) {
	var keys []string
	for _, t := range tables {
		// KEYS per table, as SONiC's own tools list a table.
		k, err := c.Keys(ctx, t+sep+"*").Result()
		if err != nil {
			return State{}, nil, fmt.Errorf("read CONFIG_DB %s: %w", t, err)
		}
		keys = append(keys, k...)
	}
	slices.Sort(keys)
	pipe := c.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HGetAll(ctx, k)
	}
	if len(keys) > 0 {
		if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
			return State{}, nil, fmt.Errorf("read CONFIG_DB rows: %w", err)
		}
	}
	rows := make(map[string]map[string]string, len(keys))
	for i, k := range keys {
		rows[k] = cmds[i].Val()
	}
	s, bad := Parse(rows, sep)
	return s, bad, nil
}

// Parse turns CONFIG_DB rows (key -> fields) into a State. It is Read's
// pure half, so that tests and tools can render rows without a Redis.
func Parse(rows map[string]map[string]string, sep string) (State, []error) {
	var s State
	s.init()
	var bad []error
	keys := make([]string, 0, len(rows))
	for k := range rows {
		keys = append(keys, k)
	}
	// Rows of a table before their sub-rows (VLAN before VLAN_MEMBER is a
	// different table, but INTERFACE|p before INTERFACE|p|addr matters).
	slices.Sort(keys)
	vlanOf := func(name string) (int, error) {
		v, ok := strings.CutPrefix(name, "Vlan")
		id, err := strconv.Atoi(v)
		if !ok || err != nil || id < 1 || id > 4094 {
			return 0, fmt.Errorf("bad VLAN name %q", name)
		}
		return id, nil
	}
	routed := func(dev string, kind Kind) Routed {
		r, ok := s.Routed[dev]
		if !ok {
			r.Kind = kind
		}
		return r
	}
	for _, k := range keys {
		f := rows[k]
		parts := strings.Split(k, sep)
		table, item := parts[0], parts[1:]
		fail := func(format string, a ...any) {
			bad = append(bad, fmt.Errorf("%s: "+format, append([]any{k}, a...)...))
		}
		switch table {
		case "PORT":
			if len(item) != 1 {
				fail("want PORT|<port>")
				continue
			}
			mtu, _ := strconv.Atoi(f["mtu"])
			s.Ports[item[0]] = Port{MTU: mtu, AdminUp: f["admin_status"] == "up"}
		case "VRF":
			if len(item) != 1 {
				fail("want VRF|<name>")
				continue
			}
			vni, _ := strconv.Atoi(f["vni"])
			s.VRFs[item[0]] = VRF{VNI: vni}
		case "VLAN":
			id, err := vlanOf(item[0])
			if len(item) != 1 || err != nil {
				fail("want VLAN|Vlan<id>")
				continue
			}
			v := s.VLANs[id]
			v.MTU, _ = strconv.Atoi(f["mtu"])
			// vlanmgrd brings a VLAN up unless admin_status says down.
			v.AdminUp = f["admin_status"] != "down"
			// A garbled server list is reported and the valid entries
			// kept: one typo does not take a VLAN's DHCP down.
			var errs []error
			v.DHCPServers, errs = servers(f["dhcp_servers@"], true)
			for _, e := range errs {
				fail("dhcp_servers@: %v", e)
			}
			v.DHCPv6Servers, errs = servers(f["dhcpv6_servers@"], false)
			for _, e := range errs {
				fail("dhcpv6_servers@: %v", e)
			}
			if v.Members == nil {
				v.Members = map[string]bool{}
			}
			s.VLANs[id] = v
		case "VLAN_MEMBER":
			id, err := 0, error(nil)
			if len(item) == 2 {
				id, err = vlanOf(item[0])
			}
			if len(item) != 2 || err != nil {
				fail("want VLAN_MEMBER|Vlan<id>|<port>")
				continue
			}
			v := s.VLANs[id]
			if v.Members == nil {
				v.Members = map[string]bool{}
			}
			v.Members[item[1]] = f["tagging_mode"] == "tagged"
			s.VLANs[id] = v
		case "INTERFACE", "VLAN_INTERFACE", "LOOPBACK_INTERFACE":
			kind := map[string]Kind{"INTERFACE": KindPort, "VLAN_INTERFACE": KindSVI, "LOOPBACK_INTERFACE": KindLoopback}[table]
			if len(item) < 1 || len(item) > 2 {
				fail("want %s|<interface>[|<prefix>]", table)
				continue
			}
			if kind == KindSVI {
				if _, err := vlanOf(item[0]); err != nil {
					fail("%v", err)
					continue
				}
			}
			r := routed(item[0], kind)
			if len(item) == 2 {
				p, err := netip.ParsePrefix(item[1])
				if err != nil {
					fail("bad prefix: %v", err)
					continue
				}
				r.Addrs = append(r.Addrs, p.String())
				slices.Sort(r.Addrs)
			} else {
				r.VRF = f["vrf_name"]
				r.LinkLocalOnly = f["ipv6_use_link_local_only"] == "enable"
			}
			s.Routed[item[0]] = r
		case "VXLAN_TUNNEL":
			if len(item) != 1 {
				fail("want VXLAN_TUNNEL|<name>")
				continue
			}
			s.Tunnels[item[0]] = f["src_ip"]
		case "VXLAN_TUNNEL_MAP":
			if len(item) != 2 {
				fail("want VXLAN_TUNNEL_MAP|<tunnel>|map_<vni>_Vlan<id>")
				continue
			}
			id, err := vlanOf(f["vlan"])
			vni, verr := strconv.Atoi(f["vni"])
			if err != nil || verr != nil || vni < 1 || vni > 1<<24-1 {
				fail("bad vlan %q or vni %q", f["vlan"], f["vni"])
				continue
			}
			s.VNIMaps[id] = VNIMap{Tunnel: item[0], VNI: vni}
		case "SUPPRESS_VLAN_NEIGH":
			id, err := vlanOf(item[0])
			if len(item) != 1 || err != nil {
				fail("want SUPPRESS_VLAN_NEIGH|Vlan<id>")
				continue
			}
			if f["suppress"] == "on" {
				s.Suppress[id] = true
			}
		}
	}
	return s, bad
}

// servers parses a comma-separated list of IPv4 (v4) or IPv6 addresses.
func servers(list string, v4 bool) ([]netip.Addr, []error) {
	var out []netip.Addr
	var errs []error
	for _, f := range strings.Split(list, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		a, err := netip.ParseAddr(f)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%q is not an address", f))
		case a.Zone() != "":
			errs = append(errs, fmt.Errorf("%q: no zone in a server address", f))
		case v4 && !a.Is4():
			errs = append(errs, fmt.Errorf("%q is not IPv4", f))
		case !v4 && (!a.Is6() || a.Is4In6()):
			errs = append(errs, fmt.Errorf("%q is not IPv6", f))
		case !a.IsGlobalUnicast() && !a.IsPrivate():
			errs = append(errs, fmt.Errorf("%q is not a unicast address", f))
		case slices.Contains(out, a):
		default:
			out = append(out, a)
		}
	}
	return out, errs
}
