package sonic

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/agents/metalcore/internal/spec"
)

// Result says what an Apply did.
type Result struct {
	// Writes counts the HSET and DEL commands sent to CONFIG_DB.
	Writes int
	// Duration is the time Apply took.
	Duration time.Duration
}

// managedTables are the CONFIG_DB tables an Apply reads first.
var managedTables = []string{
	tablePort, tableInterface, tableVLAN, tableVLANMember, tableVLANInterface,
	tableSuppress, tableVRF, tableTunnel, tableTunnelMap,
}

// apply is the state of one Apply.
type apply struct {
	s     *Switch
	sp    *spec.Spec
	db    *DB
	rows  rows
	b     batch
	res   Result
	fails map[string]error
}

// Apply makes CONFIG_DB hold sp. It reads the tables it manages, compares,
// and writes only what differs, so a second Apply of the same Spec writes
// nothing. The steps, each one pipeline:
//
//  1. ports leave what they are no longer in: un-route (INTERFACE) and
//     un-bridge (VLAN_MEMBER) — so that a port leaves the PXE VLAN before
//     it joins a VRF, leaves a VRF before it joins the PXE VLAN, and moves
//     from one VRF to another through un-routed;
//  2. when the ASIC state is there, wait until the ASIC let go of them;
//  3. remove the tenant VRFs, VLANs and VNI maps not wanted any more, in
//     the reverse order of their creation (before step 4, which may hand
//     their VLAN ids to new VRFs);
//  4. create the wanted VRFs in SONiC's order: VRF, VLAN,
//     SUPPRESS_VLAN_NEIGH, VLAN_INTERFACE, VXLAN_TUNNEL_MAP;
//  5. ports join: PORT mtu and admin_status, INTERFACE, VLAN_MEMBER.
//
// Errors of one port or VRF are collected (errors.Join) and keep only that
// port or VRF from converging.
func (s *Switch) Apply(ctx context.Context, sp *spec.Spec) (Result, error) {
	start := time.Now()
	a := &apply{s: s, sp: sp, db: s.config, fails: map[string]error{}}
	var err error
	if a.rows, err = readTables(ctx, s.config, managedTables...); err != nil {
		return Result{}, err
	}
	steps := []func(context.Context) error{a.leave, a.cleanup, a.create, a.join}
	for _, step := range steps {
		if err := step(ctx); err != nil {
			return a.result(start), err
		}
	}
	return a.result(start), a.errors()
}

func (a *apply) result(start time.Time) Result {
	a.res.Duration = time.Since(start)
	return a.res
}

// errors joins the failures, sorted by owner.
func (a *apply) errors() error {
	owners := slices.Sorted(func(yield func(string) bool) {
		for o := range a.fails {
			if !yield(o) {
				return
			}
		}
	})
	var errs []error
	for _, o := range owners {
		errs = append(errs, fmt.Errorf("%s: %w", o, a.fails[o]))
	}
	return errors.Join(errs...)
}

func (a *apply) fail(owner string, err error) {
	if a.fails[owner] == nil {
		a.fails[owner] = err
	}
}

func (a *apply) failed(owner string) bool { return a.fails[owner] != nil }

// flush sends the batch and records its failures.
func (a *apply) flush(ctx context.Context) error {
	n, failed, err := a.b.exec(ctx, a.db)
	a.res.Writes += n
	for o, e := range failed {
		a.fail(o, e)
	}
	return err
}

func portOwner(name string) string { return "port " + name }
func vrfOwner(name string) string  { return "vrf " + name }

// leave takes every managed port out of what it should no longer be in.
func (a *apply) leave(ctx context.Context) error {
	db := a.db
	var unrouted, unbridged []string
	for _, p := range a.sp.Ports {
		owner := portOwner(p.Name)
		if _, ok := a.rows[db.Key(tablePort, p.Name)]; !ok {
			a.fail(owner, errors.New("no PORT row in CONFIG_DB"))
			continue
		}
		// Un-route when the port should not be routed, or routed in
		// another VRF: SONiC cannot move an interface between VRFs, the
		// interface has to go first.
		ifKey := db.Key(tableInterface, p.Name)
		if have, ok := a.rows[ifKey]; ok && (!p.Routed() || have["vrf_name"] != p.VRF) {
			for _, k := range a.rows.keys(ifKey + db.Sep) {
				a.rows.remove(&a.b, owner, k)
			}
			a.rows.remove(&a.b, owner, ifKey)
			unrouted = append(unrouted, p.Name)
		}
		// Un-bridge from every VLAN but the PXE VLAN of an unprovisioned
		// port.
		keep := ""
		if !p.Routed() {
			keep = db.Key(tableVLANMember, spec.VLANName(a.sp.PXEVLAN), p.Name)
		}
		left := false
		for _, k := range a.rows.keys(tableVLANMember + db.Sep) {
			if k != keep && strings.HasSuffix(k, db.Sep+p.Name) {
				a.rows.remove(&a.b, owner, k)
				left = true
			}
		}
		if left {
			unbridged = append(unbridged, p.Name)
		}
	}
	if err := a.flush(ctx); err != nil {
		return err
	}
	return a.waitASIC(ctx, unrouted, unbridged)
}

// vrfVLANs are the tenant VLANs on the switch: VLAN id → the VRF its
// VLAN_INTERFACE row binds it to. The PXE VLAN is never one of them.
func (a *apply) vrfVLANs() map[uint16]string {
	out := map[uint16]string{}
	prefix := tableVLANInterface + a.db.Sep
	for _, k := range a.rows.keys(prefix) {
		name := strings.TrimPrefix(k, prefix)
		if strings.Contains(name, a.db.Sep) {
			continue // an address of the SVI
		}
		vid, ok := parseVLANName(name)
		if !ok || vid == a.sp.PXEVLAN {
			continue
		}
		if _, ok := spec.ParseVRFName(a.rows[k]["vrf_name"]); ok {
			out[vid] = a.rows[k]["vrf_name"]
		}
	}
	return out
}

func parseVLANName(s string) (uint16, bool) {
	n, ok := strings.CutPrefix(s, "Vlan")
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseUint(n, 10, 16)
	if err != nil || v == 0 || v > 4094 {
		return 0, false
	}
	return uint16(v), true
}

// tunnelMap is one VXLAN_TUNNEL_MAP row.
type tunnelMap struct {
	key  string
	vni  uint32
	vlan uint16
}

func (a *apply) tunnelMaps() []tunnelMap {
	var out []tunnelMap
	for _, k := range a.rows.keys(tableTunnelMap + a.db.Sep) {
		r := a.rows[k]
		vni, err := strconv.ParseUint(r["vni"], 10, 32)
		vid, ok := parseVLANName(r["vlan"])
		if err != nil || !ok {
			continue
		}
		out = append(out, tunnelMap{key: k, vni: uint32(vni), vlan: vid})
	}
	return out
}

// cleanup removes tenant VRFs that are not wanted, and the VLANs and VNI
// maps of VRFs whose VLAN changed, in the reverse order of creation:
// VXLAN_TUNNEL_MAP, VLAN_INTERFACE, SUPPRESS_VLAN_NEIGH, VLAN (with any
// member left), then what is still routed in the VRF, then the VRF.
func (a *apply) cleanup(ctx context.Context) error {
	db := a.db
	want := map[string]uint16{}
	wantVNI := map[uint32]uint16{}
	for _, v := range a.sp.VRFs {
		want[v.Name] = v.VLAN
		wantVNI[v.VNI] = v.VLAN
	}
	staleVLANs := map[uint16]string{}
	for vid, vrf := range a.vrfVLANs() {
		if want[vrf] != vid {
			staleVLANs[vid] = vrf
		}
	}
	var staleVRFs []string
	for _, k := range a.rows.keys(tableVRF + db.Sep) {
		name := strings.TrimPrefix(k, tableVRF+db.Sep)
		if _, ok := spec.ParseVRFName(name); ok && want[name] == 0 {
			staleVRFs = append(staleVRFs, name)
		}
	}
	maps := a.tunnelMaps()
	removeVLAN := func(owner string, vid uint16) {
		vlan := spec.VLANName(vid)
		for _, m := range maps {
			if m.vlan == vid {
				a.rows.remove(&a.b, owner, m.key)
			}
		}
		for _, k := range a.rows.keys(db.Key(tableVLANInterface, vlan) + db.Sep) {
			a.rows.remove(&a.b, owner, k)
		}
		a.rows.remove(&a.b, owner, db.Key(tableVLANInterface, vlan))
		a.rows.remove(&a.b, owner, db.Key(tableSuppress, vlan))
		for _, k := range a.rows.keys(db.Key(tableVLANMember, vlan) + db.Sep) {
			a.rows.remove(&a.b, owner, k)
		}
		a.rows.remove(&a.b, owner, db.Key(tableVLAN, vlan))
	}
	// VNI maps of wanted VRFs that point at another VLAN: the VNI can be
	// mapped once only.
	for _, m := range maps {
		if vid, ok := wantVNI[m.vni]; ok && vid != m.vlan && m.vlan != a.sp.PXEVLAN {
			a.rows.remove(&a.b, vrfOwner(spec.VRFName(m.vni)), m.key)
		}
	}
	for _, vid := range slices.Sorted(mapKeys(staleVLANs)) {
		removeVLAN(vrfOwner(staleVLANs[vid]), vid)
	}
	for _, vrf := range staleVRFs {
		owner := vrfOwner(vrf)
		vni, _ := spec.ParseVRFName(vrf)
		// A VLAN that reached the VRF only through the VNI map.
		for _, m := range maps {
			if m.vni == vni && m.vlan != a.sp.PXEVLAN && a.rows[m.key] != nil {
				removeVLAN(owner, m.vlan)
			}
		}
		// Ports the document no longer names but that are still routed
		// in the VRF: SONiC removes no VRF that has interfaces.
		for _, k := range a.rows.keys(tableInterface + db.Sep) {
			if a.rows[k]["vrf_name"] == vrf {
				for _, sub := range a.rows.keys(k + db.Sep) {
					a.rows.remove(&a.b, owner, sub)
				}
				a.rows.remove(&a.b, owner, k)
			}
		}
		a.rows.remove(&a.b, owner, db.Key(tableVRF, vrf))
	}
	return a.flush(ctx)
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// vtep is the name of the switch's one VXLAN tunnel, which the operator's
// base configuration creates.
func (a *apply) vtep() (string, error) {
	prefix := tableTunnel + a.db.Sep
	keys := a.rows.keys(prefix)
	if len(keys) != 1 {
		return "", fmt.Errorf("want exactly one %s row, found %d", tableTunnel, len(keys))
	}
	return strings.TrimPrefix(keys[0], prefix), nil
}

// create makes every wanted VRF, in the order SONiC's managers need.
func (a *apply) create(ctx context.Context) error {
	if len(a.sp.VRFs) == 0 {
		return nil
	}
	db := a.db
	vtep, err := a.vtep()
	if err != nil {
		for _, v := range a.sp.VRFs {
			a.fail(vrfOwner(v.Name), err)
		}
		return nil
	}
	for _, v := range a.sp.VRFs {
		owner, vlan, vni := vrfOwner(v.Name), spec.VLANName(v.VLAN), strconv.FormatUint(uint64(v.VNI), 10)
		a.rows.ensure(&a.b, owner, db.Key(tableVRF, v.Name), "vni", vni, "fallback", "false")
		a.rows.ensure(&a.b, owner, db.Key(tableVLAN, vlan), "vlanid", strconv.Itoa(int(v.VLAN)))
		a.rows.ensure(&a.b, owner, db.Key(tableSuppress, vlan), "suppress", "on")
		a.rows.ensure(&a.b, owner, db.Key(tableVLANInterface, vlan), "vrf_name", v.Name)
		a.rows.ensure(&a.b, owner, db.Key(tableTunnelMap, vtep, "map_"+vni+"_"+vlan), "vlan", vlan, "vni", vni)
	}
	return a.flush(ctx)
}

// join puts every managed port where it belongs.
func (a *apply) join(ctx context.Context) error {
	db := a.db
	pxe := spec.VLANName(a.sp.PXEVLAN)
	for _, p := range a.sp.Ports {
		owner := portOwner(p.Name)
		if a.failed(owner) {
			continue
		}
		if p.VRF != "" && a.failed(vrfOwner(p.VRF)) {
			a.fail(owner, fmt.Errorf("VRF %s not ready", p.VRF))
			continue
		}
		status := "down"
		if p.AdminUp {
			status = "up"
		}
		a.rows.ensure(&a.b, owner, db.Key(tablePort, p.Name), "mtu", strconv.Itoa(p.MTU), "admin_status", status)
		switch {
		case p.VRF != "":
			// One HSET with both fields: SONiC reads the row once, and must
			// see the VRF before it creates the interface.
			a.rows.ensure(&a.b, owner, db.Key(tableInterface, p.Name), "ipv6_use_link_local_only", "enable", "vrf_name", p.VRF)
		case p.Routed():
			a.rows.ensure(&a.b, owner, db.Key(tableInterface, p.Name), "ipv6_use_link_local_only", "enable")
		default:
			if _, ok := a.rows[db.Key(tableVLAN, pxe)]; !ok {
				a.fail(owner, fmt.Errorf("PXE VLAN %s missing in CONFIG_DB", pxe))
				continue
			}
			a.rows.ensure(&a.b, owner, db.Key(tableVLANMember, pxe, p.Name), "tagging_mode", "untagged")
		}
	}
	return a.flush(ctx)
}
