package fabric

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/fsm"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Docs is what the fabric needs of the fleet: the switch agents' desired
// documents, changed in the caller's transaction.
type Docs interface {
	ChangeMany(ctx context.Context, tx pgx.Tx, ids []string, change func(id string, d *agentv1.Desired) (bool, error)) error
}

// Tenant VRFs' VLANs are leaf-local, from this range (SONiC's VLANs of the
// L3VNIs; the PXE VLAN lies outside).
const (
	firstVRFVLAN = 1001
	lastVRFVLAN  = 2000
)

// installDone is the provisioning state from which on an allocated
// machine's ports are in its tenant VRF: the installer's "install done",
// reported just before it kexecs the installed system; once that system
// phones home the machine is "installed" (until a reinstall or free).
// Before, the machine installs over the PXE network.
const installDone = string(fsm.BootingNewKernel)

// portMachine is the machine on a switch port, as the document needs it.
type portMachine struct {
	id, nic string
	tenant  bool   // its ports belong in its tenant VRF now
	vni     uint32 // its tenant network's VRF (0: none)
	cidrs   []string
}

// Derive computes the desired documents of switches ids from the domain
// state in tx and hands each to its switch agent, in tx: a change of a
// machine's allocation or install state, of a switch's ports or of a
// network commits together with the documents it causes. A switch without
// an agent (not enrolled) gets none.
func Derive(ctx context.Context, tx pgx.Tx, docs Docs, ids []string) error {
	for _, id := range ids {
		if err := derive(ctx, tx, docs, id); err != nil {
			return fmt.Errorf("switch %s: %w", id, err)
		}
	}
	return nil
}

// DeriveForMachines is Derive for the switches machine ids are linked to.
func DeriveForMachines(ctx context.Context, tx pgx.Tx, docs Docs, machines []string) error {
	ids, err := switchesOf(ctx, tx, machines)
	if err != nil {
		return err
	}
	return Derive(ctx, tx, docs, ids)
}

// switchesOf are the switches that see the machines' NICs, and those the
// machines' NICs see (portsSeenByMachines), sorted.
func switchesOf(ctx context.Context, tx pgx.Tx, machines []string) ([]string, error) {
	rows, err := tx.Query(ctx, `SELECT id FROM (
			SELECT s.id FROM switches s, jsonb_array_elements(s.spec->'ports') AS p
			WHERE p->>'mac' IN (SELECT mac FROM machine_nics WHERE machine_id = ANY($1))
			UNION
			SELECT s.id FROM switches s JOIN machines m ON m.id = ANY($1) AND s.partition_id = m.partition_id,
				jsonb_array_elements(COALESCE(m.spec->'hardware'->'nics', '[]'::jsonb)) AS nic,
				jsonb_array_elements(COALESCE(nic->'neighbours', '[]'::jsonb)) AS nb
			WHERE nb->>'systemName' = s.id) x ORDER BY id`, machines)
	if err != nil {
		return nil, fmt.Errorf("switches of machines: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("switches of machines: %w", err)
	}
	return ids, nil
}

func derive(ctx context.Context, tx pgx.Tx, docs Docs, id string) error {
	sw, err := Table.GetForUpdate(ctx, tx, id)
	if err != nil {
		return fmt.Errorf("read: %w", err)
	}
	before := proto.Clone(sw)
	if sw.GetPartitionId() == "" || sw.GetOrdinal() == 0 {
		return nil // not numbered yet: no document
	}
	fab, err := catalog.FabricOf(ctx, tx, sw.GetPartitionId())
	if err != nil {
		return err
	}
	loopback, err := nthAddr(fab.Loopbacks, sw.GetOrdinal())
	if err != nil {
		return err
	}
	if err := portsSeenByMachines(ctx, tx, sw); err != nil {
		return err
	}
	machines, err := machinesOn(ctx, tx, sw)
	if err != nil {
		return err
	}
	sw.Asn, sw.Loopback = fab.ASNBase+sw.GetOrdinal(), loopback.String()
	doc := &agentv1.SwitchDocument{
		Name: sw.GetId(), Asn: sw.GetAsn(), RouterId: loopback.String(), Loopback: loopback.String(),
		PxeVlanId: fab.PXEVLAN, SetSourceLoopback: true,
	}
	vrfs := map[uint32]*agentv1.SwitchVrf{}
	for _, p := range sw.GetPorts() {
		p.Role, p.Vrf = "", 0
		dp := &agentv1.SwitchPort{Name: p.GetName(), AdminState: agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_UP}
		m, onMachine := machines[p.GetMac()]
		p.MachineId, p.MachineNic = m.id, m.nic
		switch {
		case slices.Contains(sw.GetUplinks(), p.GetName()):
			dp.Role, p.Role = agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UPLINK, "uplink"
		case onMachine && m.tenant && m.vni != 0:
			dp.Role, p.Role = agentv1.SwitchPortRole_SWITCH_PORT_ROLE_TENANT, "tenant"
			dp.VrfVni, p.Vrf = m.vni, m.vni
			if vrfs[m.vni] == nil {
				vrfs[m.vni] = &agentv1.SwitchVrf{Vni: m.vni, Cidrs: m.cidrs}
			}
		case onMachine || len(p.GetNeighbours()) > 0:
			// A machine not allocated, installing, or not known yet (one
			// about to PXE boot for the first time): the PXE VLAN.
			dp.Role, p.Role = agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UNPROVISIONED, "unprovisioned"
		default:
			continue // nothing on it: left alone
		}
		if p.GetShut() {
			// An operator's word wins over any role.
			dp.AdminState = agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_DOWN
		}
		doc.Ports = append(doc.Ports, dp)
	}
	agent, err := agentOf(ctx, tx, sw.GetId())
	if err != nil {
		return err
	}
	if agent != "" && docs != nil {
		err = docs.ChangeMany(ctx, tx, []string{agent}, func(_ string, d *agentv1.Desired) (bool, error) {
			doc.Vrfs = vlans(d.GetSwitch().GetVrfs(), vrfs)
			if proto.Equal(d.GetSwitch(), doc) {
				return false, nil
			}
			d.Switch = doc
			return true, nil
		})
		if err != nil {
			return fmt.Errorf("document: %w", err)
		}
	}
	if proto.Equal(before, sw) {
		return nil
	}
	return save(ctx, tx, sw)
}

// vlans gives each wanted VRF its VLAN: the one it has in the switch's
// document in effect, else the lowest free one, so that a VRF keeps its
// VLAN while others come and go. Sorted by VNI.
func vlans(prev []*agentv1.SwitchVrf, want map[uint32]*agentv1.SwitchVrf) []*agentv1.SwitchVrf {
	used := map[uint32]bool{}
	for _, v := range prev {
		if w, ok := want[v.GetVni()]; ok && w.GetVlanId() == 0 {
			w.VlanId = v.GetVlanId()
			used[v.GetVlanId()] = true
		}
	}
	out := make([]*agentv1.SwitchVrf, 0, len(want))
	for _, w := range want {
		out = append(out, w)
	}
	slices.SortFunc(out, func(a, b *agentv1.SwitchVrf) int { return int(a.GetVni()) - int(b.GetVni()) })
	next := uint32(firstVRFVLAN)
	for _, w := range out {
		if w.GetVlanId() != 0 {
			continue
		}
		for used[next] && next <= lastVRFVLAN {
			next++
		}
		w.VlanId = next // beyond the range: metal-core refuses the document, which says why
		used[next] = true
	}
	return out
}

// machinesOn reads the machines on the switch's ports (by their NICs'
// MACs), with what the document needs of them.
func machinesOn(ctx context.Context, tx pgx.Tx, sw *apiv1.Switch) (map[string]portMachine, error) {
	var macs []string
	for _, p := range sw.GetPorts() {
		if p.GetMac() != "" {
			macs = append(macs, p.GetMac())
		}
	}
	out := map[string]portMachine{}
	if len(macs) == 0 {
		return out, nil
	}
	// The machine's tenant network is the child network among its
	// allocation's networks: its VRF is the one its ports are routed in.
	rows, err := tx.Query(ctx, `SELECT n.mac, m.id, n.name,
			m.allocation_id IS NOT NULL AND (m.installed OR m.provisioning = $2),
			COALESCE(c.vrf, 0),
			COALESCE(ARRAY(SELECT cidr FROM prefixes WHERE network_id = c.id ORDER BY cidr), '{}')
		FROM machine_nics n JOIN machines m ON m.id = n.machine_id
		LEFT JOIN LATERAL (SELECT id, vrf FROM networks WHERE type = 'child'
			AND id IN (SELECT jsonb_array_elements_text(COALESCE(m.spec->'allocation'->'networks', '[]'::jsonb)))
			ORDER BY id LIMIT 1) c ON true
		WHERE n.mac = ANY($1)`, macs, installDone)
	if err != nil {
		return nil, fmt.Errorf("machines on the ports: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			mac string
			m   portMachine
			vrf int64
		)
		if err := rows.Scan(&mac, &m.id, &m.nic, &m.tenant, &vrf, &m.cidrs); err != nil {
			return nil, fmt.Errorf("machines on the ports: %w", err)
		}
		m.vni = uint32(vrf)
		out[mac] = m
	}
	return out, rows.Err()
}

// agentOf is the id of the switch's agent; "" when none is enrolled.
func agentOf(ctx context.Context, tx pgx.Tx, identity string) (string, error) {
	var id string
	err := tx.QueryRow(ctx, `SELECT id FROM agents WHERE kind = 'switch' AND identity = $1`, identity).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return id, err
}

// nthAddr is the n-th address of p (n ≥ 1), which must lie in p.
func nthAddr(p netip.Prefix, n uint32) (netip.Addr, error) {
	size := uint64(1) << (32 - p.Bits())
	if uint64(n) >= size-1 {
		return netip.Addr{}, fmt.Errorf("loopback prefix %s has no address %d: choose a larger partition fabric.loopbacks", p, n)
	}
	a := p.Masked().Addr().As4()
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v += n
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), nil
}

// save writes sw's spec as the fabric derived it (ports' roles, ASN,
// loopback).
func save(ctx context.Context, tx pgx.Tx, sw *apiv1.Switch) error {
	spec, err := store.EncodeSpec(sw)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE switches SET spec = $2, generation = generation + 1, updated_at = now() WHERE id = $1`, sw.GetId(), spec); err != nil {
		return fmt.Errorf("store switch %s: %w", sw.GetId(), err)
	}
	return nil
}

// portsSeenByMachines completes the ports whose machine the switch does
// not see by LLDP (no MAC: nothing on the machine sends LLDP while it
// PXE-boots or installs — the installer only listens) from the other side:
// a machine NIC whose LLDP neighbour is this switch and one of its port
// identifiers is on that port. The switch's own view wins where it has one.
func portsSeenByMachines(ctx context.Context, tx pgx.Tx, sw *apiv1.Switch) error {
	byIdent := map[string]*apiv1.SwitchPort{}
	for _, p := range sw.GetPorts() {
		if p.GetMac() == "" && p.GetIdentifier() != "" {
			byIdent[p.GetIdentifier()] = p
		}
	}
	if len(byIdent) == 0 {
		return nil
	}
	rows, err := tx.Query(ctx, `SELECT nic->>'mac', nb->>'portId'
		FROM machines m, jsonb_array_elements(COALESCE(m.spec->'hardware'->'nics', '[]'::jsonb)) AS nic,
			jsonb_array_elements(COALESCE(nic->'neighbours', '[]'::jsonb)) AS nb
		WHERE m.partition_id = $1 AND nb->>'systemName' = $2`, sw.GetPartitionId(), sw.GetId())
	if err != nil {
		return fmt.Errorf("machines seeing the switch: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var mac, port string
		if err := rows.Scan(&mac, &port); err != nil {
			return fmt.Errorf("machines seeing the switch: %w", err)
		}
		if p := byIdent[port]; p != nil && p.GetMac() == "" {
			p.Mac = strings.ToLower(mac)
		}
	}
	return rows.Err()
}
