package sonicemu

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"strings"
)

// BridgeName is the one VLAN-aware bridge SONiC's vlanmgrd keeps on a
// switch; every VLAN is a VLAN of it and every member a port of it.
const BridgeName = "Bridge"

// vxlanPort is the UDP port of every VXLAN device, as SONiC's vxlanmgrd.
const vxlanPort = "4789"

// Cmd is one command of a plan, meant to be idempotent: run twice, it
// leaves Linux as once. Commands that are not idempotent by themselves
// (`ip link add`, `ip link del`, `ip addr del`) name the errors that mean
// "already so" in Tolerate.
type Cmd struct {
	Args     []string
	Tolerate []string
}

func (c Cmd) String() string { return strings.Join(c.Args, " ") }

// The errors `ip` and `bridge` print when the thing to add exists or the
// thing to remove is gone.
var (
	exists  = []string{"File exists"}
	missing = []string{"Cannot find device", "does not exist", "Cannot assign requested address", "No such device", "ddress not found"}
)

// VXLANDevice is the Linux name of the VXLAN device that carries VLAN vid
// for tunnel (vxlanmgrd's "<tunnel>-<vlan id>").
func VXLANDevice(tunnel string, vid int) string { return tunnel + "-" + strconv.Itoa(vid) }

// VLANDevice is the SVI of VLAN vid (SONiC's name of the VLAN).
func VLANDevice(vid int) string { return "Vlan" + strconv.Itoa(vid) }

// VRFTable is the kernel routing table of a VRF. SONiC's vrfmgrd hands
// tables out from 1001 in creation order; the emulation uses the VNI (or
// the digits of the name, or a hash of it), so that a table does not
// depend on the order rows arrived in and a restart finds the same one.
func VRFTable(name string, v VRF) int {
	if v.VNI > 0 {
		return v.VNI
	}
	if n, err := strconv.Atoi(strings.TrimPrefix(name, "Vrf")); err == nil && n > 0 {
		return n
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(name))
	// Above every 8-digit VNI and below the kernel's reserved tables.
	return 100_000_000 + int(h.Sum32()%100_000_000)
}

// Plan is the ordered list of commands that takes Linux from what prev
// rendered to what next asks. It is a pure function: Plan(State{}, next)
// renders next from scratch (the resync), Plan(prev, prev) is empty.
//
// The order is SONiC's dependency order. Things leave first, innermost
// first: VXLAN devices, VLAN members, routed interfaces (addresses, then
// VRF binding), VLANs, VRFs — a VRF is only removed once nothing is in
// it, a VLAN once nothing is mapped to or bridged in it. Then things are
// made, outermost first: ports (MTU, admin state), VRFs, the bridge,
// VLANs, members, routed interfaces (loopbacks, ports, SVIs: the VRF and
// the VLAN exist by then), VXLAN devices (the VLAN exists), neighbour
// suppression on them.
func Plan(prev, next State) []Cmd {
	var p []Cmd
	add := func(tolerate []string, args ...string) { p = append(p, Cmd{Args: args, Tolerate: tolerate}) }

	// --- leave ---------------------------------------------------------------
	mapChanged := func(vid int) bool {
		pm, ok := prev.VNIMaps[vid]
		nm, nok := next.VNIMaps[vid]
		return ok && (!nok || pm != nm || prev.Tunnels[pm.Tunnel] != next.Tunnels[nm.Tunnel])
	}
	for _, vid := range sorted(prev.VNIMaps) {
		dev := VXLANDevice(prev.VNIMaps[vid].Tunnel, vid)
		switch {
		case mapChanged(vid):
			add(missing, "ip", "link", "del", "dev", dev)
		case prev.Suppress[vid] && !next.Suppress[vid]:
			add(nil, "bridge", "link", "set", "dev", dev, "neigh_suppress", "off")
		}
	}
	bridged := func(s State, port string) bool {
		for _, v := range s.VLANs {
			if _, ok := v.Members[port]; ok {
				return true
			}
		}
		return false
	}
	var unbridge []string
	for _, vid := range sorted(prev.VLANs) {
		for _, port := range sorted(prev.VLANs[vid].Members) {
			tagged := prev.VLANs[vid].Members[port]
			if nt, ok := next.VLANs[vid].Members[port]; ok && nt == tagged {
				continue
			}
			add(missing, "bridge", "vlan", "del", "vid", strconv.Itoa(vid), "dev", port)
			if !bridged(next, port) && !slices.Contains(unbridge, port) {
				unbridge = append(unbridge, port)
			}
		}
	}
	slices.Sort(unbridge)
	for _, port := range unbridge {
		add(nil, "ip", "link", "set", "dev", port, "nomaster")
	}
	vrfMoved := func(dev string) bool {
		pr, ok := prev.Routed[dev]
		nr, nok := next.Routed[dev]
		if !ok || !nok {
			return true
		}
		return pr.VRF != nr.VRF || (pr.VRF != "" && VRFTable(pr.VRF, prev.VRFs[pr.VRF]) != VRFTable(nr.VRF, next.VRFs[nr.VRF]))
	}
	for _, dev := range routedOrder(prev.Routed) {
		pr := prev.Routed[dev]
		nr, ok := next.Routed[dev]
		moved := vrfMoved(dev)
		for _, a := range pr.Addrs {
			if moved || !slices.Contains(nr.Addrs, a) {
				add(missing, "ip", "addr", "del", a, "dev", dev)
			}
		}
		switch {
		case !ok && pr.Kind == KindLoopback:
			add(missing, "ip", "link", "del", "dev", dev)
		case moved && pr.VRF != "":
			add(missing, "ip", "link", "set", "dev", dev, "nomaster")
		}
	}
	for _, vid := range sorted(prev.VLANs) {
		if _, ok := next.VLANs[vid]; ok {
			continue
		}
		add(missing, "ip", "link", "del", "dev", VLANDevice(vid))
		add(missing, "bridge", "vlan", "del", "vid", strconv.Itoa(vid), "dev", BridgeName, "self")
	}
	vrfGone := func(name string) bool {
		nv, ok := next.VRFs[name]
		return !ok || VRFTable(name, nv) != VRFTable(name, prev.VRFs[name])
	}
	for _, name := range sorted(prev.VRFs) {
		if vrfGone(name) {
			add(missing, "ip", "link", "del", "dev", name)
		}
	}

	// --- make ----------------------------------------------------------------
	for _, port := range sorted(next.Ports) {
		np := next.Ports[port]
		pp, ok := prev.Ports[port]
		if np.MTU > 0 && (!ok || pp.MTU != np.MTU) {
			add(nil, "ip", "link", "set", "dev", port, "mtu", strconv.Itoa(np.MTU))
		}
		if !ok || pp.AdminUp != np.AdminUp {
			add(nil, "ip", "link", "set", "dev", port, updown(np.AdminUp))
		}
	}
	for _, name := range sorted(next.VRFs) {
		if _, ok := prev.VRFs[name]; ok && !vrfGone(name) {
			continue
		}
		add(exists, "ip", "link", "add", name, "type", "vrf", "table", strconv.Itoa(VRFTable(name, next.VRFs[name])))
		add(nil, "ip", "link", "set", "dev", name, "up")
	}
	if (len(next.VLANs) > 0 || len(next.VNIMaps) > 0) && len(prev.VLANs) == 0 && len(prev.VNIMaps) == 0 {
		// vlanmgrd's bridge: VLAN-aware, no default PVID (a port is in
		// no VLAN until a VLAN_MEMBER row puts it there), MTU 9100.
		add(exists, "ip", "link", "add", BridgeName, "type", "bridge")
		add(nil, "ip", "link", "set", "dev", BridgeName, "type", "bridge", "vlan_filtering", "1", "vlan_default_pvid", "0")
		add(nil, "ip", "link", "set", "dev", BridgeName, "mtu", "9100")
		add(nil, "ip", "link", "set", "dev", BridgeName, "up")
	}
	for _, vid := range sorted(next.VLANs) {
		nv := next.VLANs[vid]
		pv, ok := prev.VLANs[vid]
		dev := VLANDevice(vid)
		if !ok {
			add(nil, "bridge", "vlan", "add", "vid", strconv.Itoa(vid), "dev", BridgeName, "self")
			add(exists, "ip", "link", "add", "link", BridgeName, "name", dev, "type", "vlan", "id", strconv.Itoa(vid))
		}
		if nv.MTU > 0 && (!ok || pv.MTU != nv.MTU) {
			add(nil, "ip", "link", "set", "dev", dev, "mtu", strconv.Itoa(nv.MTU))
		}
		if !ok || pv.AdminUp != nv.AdminUp {
			add(nil, "ip", "link", "set", "dev", dev, updown(nv.AdminUp))
		}
	}
	for _, vid := range sorted(next.VLANs) {
		for _, port := range sorted(next.VLANs[vid].Members) {
			tagged := next.VLANs[vid].Members[port]
			if pt, ok := prev.VLANs[vid].Members[port]; ok && pt == tagged {
				continue
			}
			add(nil, "ip", "link", "set", "dev", port, "master", BridgeName)
			if tagged {
				add(nil, "bridge", "vlan", "add", "vid", strconv.Itoa(vid), "dev", port)
			} else {
				add(nil, "bridge", "vlan", "add", "vid", strconv.Itoa(vid), "dev", port, "pvid", "untagged")
			}
		}
	}
	for _, dev := range routedOrder(next.Routed) {
		nr := next.Routed[dev]
		pr, ok := prev.Routed[dev]
		moved := vrfMoved(dev)
		if nr.Kind == KindLoopback && !ok {
			// intfmgrd makes a loopback a dummy device.
			add(exists, "ip", "link", "add", dev, "type", "dummy")
			add(nil, "ip", "link", "set", "dev", dev, "up")
		}
		if moved && nr.VRF != "" {
			add(nil, "ip", "link", "set", "dev", dev, "master", nr.VRF)
		}
		if nr.LinkLocalOnly && (moved || !pr.LinkLocalOnly) {
			// Enslaving to a VRF cycles the device; IPv6 (and with it the
			// link-local address BGP unnumbered needs) must be on after.
			add(nil, "sysctl", "-w", "net.ipv6.conf."+dev+".disable_ipv6=0")
		}
		for _, a := range nr.Addrs {
			if moved || !slices.Contains(pr.Addrs, a) {
				add(nil, "ip", "addr", "replace", a, "dev", dev)
			}
		}
	}
	for _, vid := range sorted(next.VNIMaps) {
		nm := next.VNIMaps[vid]
		dev := VXLANDevice(nm.Tunnel, vid)
		_, had := prev.VNIMaps[vid]
		created := !had || mapChanged(vid)
		if created {
			args := []string{"ip", "link", "add", dev, "type", "vxlan", "id", strconv.Itoa(nm.VNI)}
			if src := next.Tunnels[nm.Tunnel]; src != "" {
				args = append(args, "local", src)
			}
			args = append(args, "dstport", vxlanPort, "nolearning")
			add(exists, args...)
			add(nil, "ip", "link", "set", "dev", dev, "master", BridgeName)
			add(nil, "bridge", "vlan", "add", "vid", strconv.Itoa(vid), "dev", dev, "pvid", "untagged")
			// EVPN learns remote MACs from BGP, not from the data plane.
			add(nil, "bridge", "link", "set", "dev", dev, "learning", "off")
			add(nil, "ip", "link", "set", "dev", dev, "up")
		}
		if next.Suppress[vid] && (created || !prev.Suppress[vid]) {
			add(nil, "bridge", "link", "set", "dev", dev, "neigh_suppress", "on")
		}
	}
	return p
}

func updown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}

func sorted[K cmp.Ordered, V any](m map[K]V) []K { return slices.Sorted(maps.Keys(m)) }

// routedOrder is loopbacks, ports, then SVIs, each by name: the order
// intfmgrd meets them on a switch that boots its configuration.
func routedOrder(m map[string]Routed) []string {
	names := sorted(m)
	slices.SortStableFunc(names, func(a, b string) int {
		return cmp.Compare(rank(m[a].Kind), rank(m[b].Kind))
	})
	return names
}

func rank(k Kind) int {
	switch k {
	case KindLoopback:
		return 0
	case KindPort:
		return 1
	}
	return 2
}

// Format is a plan as text, one command a line (golden files hold it).
func Format(p []Cmd) string {
	var b strings.Builder
	for _, c := range p {
		fmt.Fprintln(&b, c.String())
	}
	return b.String()
}
