package fabric

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/field"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Bounds of what a switch may report: a big leaf has 128 ports; BGP
// sessions are one per uplink, machine and firewall port and VRF.
const (
	maxPorts       = 512
	maxNeighbours  = 16
	maxBGPSessions = 8192
	maxName        = 128
)

// Report stores what switch agent id (identity, partition) reported, in
// tx, the transaction that stores the report: the first report creates
// the switch; facts replace its ports, neighbours and BGP sessions; every
// report updates its sync status (the applied revision and the apply's
// error). Bad facts are an InvalidArgument naming the field, and nothing
// is stored.
// A report with facts derives the switch's document anew (its ports may
// have changed).
func Report(ctx context.Context, tx pgx.Tx, docs Docs, identity, partition string, r *agentv1.Report) error {
	f := r.GetFacts().GetSwitch()
	if f != nil {
		if err := validate(f); err != nil {
			return err
		}
	}
	sw, err := Table.GetForUpdate(ctx, tx, identity)
	switch {
	case store.IsNotFound(err):
		sw = &apiv1.Switch{Id: identity}
	case err != nil:
		return fmt.Errorf("read switch %s: %w", identity, err)
	}
	sw.PartitionId = partition
	now := timestamppb.Now()
	sw.LastSync = now
	sw.Sync = &apiv1.SwitchSync{AppliedRevision: r.GetAppliedRevision(), ReportedAt: now}
	if r.GetHealth() == agentv1.Health_HEALTH_ERROR {
		sw.Sync.Error = r.GetMessage()
	}
	if f != nil {
		if err := fromFacts(ctx, tx, sw, f); err != nil {
			return err
		}
	}
	if sw.GetOrdinal() == 0 && partition != "" {
		if sw.Ordinal, err = nextOrdinal(ctx, tx, partition); err != nil {
			return err
		}
	}
	sw.Meta = nil
	spec, err := store.EncodeSpec(sw)
	if err != nil {
		return err
	}
	var part, ordinal any = partition, sw.GetOrdinal()
	if partition == "" {
		part, ordinal = nil, nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO switches (id, partition_id, rack, spec, ordinal) VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (id) DO UPDATE SET partition_id = excluded.partition_id, rack = excluded.rack, spec = excluded.spec,
			ordinal = excluded.ordinal, generation = switches.generation + 1, updated_at = now()`, identity, part, sw.GetRack(), spec, ordinal); err != nil {
		return fmt.Errorf("store switch %s: %w", identity, err)
	}
	if f == nil {
		return nil
	}
	return Derive(ctx, tx, docs, []string{identity})
}

// nextOrdinal numbers a new switch of partition: one more than the
// highest. The partition's row is locked meanwhile, so two switches
// reporting first at once get different numbers.
func nextOrdinal(ctx context.Context, tx pgx.Tx, partition string) (uint32, error) {
	if _, err := tx.Exec(ctx, `SELECT 1 FROM partitions WHERE id = $1 FOR UPDATE`, partition); err != nil {
		return 0, fmt.Errorf("lock partition %s: %w", partition, err)
	}
	var n uint32
	if err := tx.QueryRow(ctx, `SELECT COALESCE(MAX(ordinal), 0) + 1 FROM switches WHERE partition_id = $1`, partition).Scan(&n); err != nil {
		return 0, fmt.Errorf("number the switch: %w", err)
	}
	return n, nil
}

// fromFacts puts the reported facts into sw, and for each port the
// machine whose NIC the switch sees there by LLDP.
func fromFacts(ctx context.Context, tx pgx.Tx, sw *apiv1.Switch, f *agentv1.SwitchFacts) error {
	sw.Rack = f.GetRack()
	sw.Uplinks = f.GetUplinks()
	sw.SonicVersion = f.GetSonicVersion()
	sw.ManagementAddress = f.GetManagementAddress()
	// What an operator set on a port outlives the facts.
	shut := map[string]bool{}
	for _, p := range sw.GetPorts() {
		shut[p.GetName()] = p.GetShut()
	}
	sw.Ports = nil
	var macs []string
	for _, p := range f.GetPorts() {
		port := &apiv1.SwitchPort{
			Name: p.GetName(), Identifier: p.GetIdentifier(), SpeedMbps: p.GetSpeedMbps(), Mtu: p.GetMtu(),
			AdminState: adminState(p.GetAdminState()), OperState: operState(p.GetOperState()), Shut: shut[p.GetName()],
		}
		for _, n := range p.GetNeighbours() {
			port.Neighbours = append(port.Neighbours, strings.TrimSpace(n.GetSystemName()+" "+n.GetPortId()))
			// A machine's lldpd sends its NIC's MAC as the port id (and
			// the chassis id): that NIC is on this port.
			for _, id := range []string{n.GetPortId(), n.GetChassisId()} {
				if hw, err := net.ParseMAC(id); err == nil && len(hw) == 6 {
					macs = append(macs, hw.String())
					if port.Mac == "" {
						port.Mac = hw.String()
					}
				}
			}
		}
		sw.Ports = append(sw.Ports, port)
	}
	owners := map[string][2]string{}
	if len(macs) > 0 {
		rows, err := tx.Query(ctx, `SELECT mac, machine_id, name FROM machine_nics WHERE mac = ANY($1)`, macs)
		if err != nil {
			return fmt.Errorf("machines on the switch's ports: %w", err)
		}
		for rows.Next() {
			var mac, id, name string
			if err := rows.Scan(&mac, &id, &name); err != nil {
				rows.Close()
				return err
			}
			owners[mac] = [2]string{id, name}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("machines on the switch's ports: %w", err)
		}
	}
	for _, p := range sw.Ports {
		if o, ok := owners[p.GetMac()]; ok {
			p.MachineId, p.MachineNic = o[0], o[1]
		}
	}
	sw.BgpSessions = nil
	for _, b := range f.GetBgpSessions() {
		s := &apiv1.SwitchBgpSession{
			Port: b.GetPort(), Vrf: b.GetVrf(), PeerGroup: b.GetPeerGroup(), State: bgpState(b.GetState()),
			EstablishedSince: b.GetEstablishedSince(), RemoteAs: b.GetRemoteAs(), RemoteHostname: b.GetRemoteHostname(),
			AddressFamilies: b.GetAddressFamilies(),
		}
		for _, af := range b.GetAddressFamilies() {
			s.PrefixesSent += af.GetPrefixesSent()
			s.PrefixesAccepted += af.GetPrefixesAccepted()
		}
		sw.BgpSessions = append(sw.BgpSessions, s)
	}
	return nil
}

// validate bounds what a switch may report, so that nothing unbounded
// reaches the database or a log line.
func validate(f *agentv1.SwitchFacts) error {
	v := field.Violations{Max: 8}
	const name = "report.facts.switch"
	v.Text(name+".rack", f.GetRack(), 64)
	v.Text(name+".sonic_version", f.GetSonicVersion(), maxName)
	v.Text(name+".management_address", f.GetManagementAddress(), maxName)
	if len(f.GetUplinks()) > 64 {
		v.Add(name+".uplinks", "at most 64")
	}
	for i, u := range f.GetUplinks() {
		v.Text(field.Index(name+".uplinks", i), u, 64)
	}
	if len(f.GetPorts()) > maxPorts {
		v.Add(name+".ports", "at most %d", maxPorts)
	}
	seen := map[string]bool{}
	for i, p := range f.GetPorts() {
		if v.Full() {
			break
		}
		fi := field.Index(name+".ports", i)
		switch {
		case p.GetName() == "" || len(p.GetName()) > 64 || strings.ContainsAny(p.GetName(), " \x00"):
			v.Add(fi+".name", "1-64 characters, no spaces")
		case seen[p.GetName()]:
			v.Add(fi+".name", "reported twice")
		default:
			seen[p.GetName()] = true
		}
		v.Text(fi+".identifier", p.GetIdentifier(), 64)
		if len(p.GetNeighbours()) > maxNeighbours {
			v.Add(fi+".neighbours", "at most %d", maxNeighbours)
		}
		for j, n := range p.GetNeighbours() {
			fj := field.Index(fi+".neighbours", j)
			v.Text(fj+".system_name", n.GetSystemName(), 255)
			v.Text(fj+".port_id", n.GetPortId(), 255)
			v.Text(fj+".chassis_id", n.GetChassisId(), 255)
			v.Text(fj+".port_description", n.GetPortDescription(), 255)
		}
	}
	if len(f.GetBgpSessions()) > maxBGPSessions {
		v.Add(name+".bgp_sessions", "at most %d", maxBGPSessions)
	}
	for i, b := range f.GetBgpSessions() {
		if v.Full() {
			break
		}
		fi := field.Index(name+".bgp_sessions", i)
		v.Text(fi+".port", b.GetPort(), maxName)
		v.Text(fi+".vrf", b.GetVrf(), 64)
		v.Text(fi+".peer_group", b.GetPeerGroup(), 64)
		v.Text(fi+".remote_hostname", b.GetRemoteHostname(), 255)
		if len(b.GetAddressFamilies()) > 8 {
			v.Add(fi+".address_families", "at most 8")
		}
	}
	return v.Err("malformed switch facts")
}

func adminState(s agentv1.SwitchAdminState) string {
	switch s {
	case agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_UP:
		return "up"
	case agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_DOWN:
		return "down"
	}
	return ""
}

func operState(s agentv1.SwitchOperState) string {
	switch s {
	case agentv1.SwitchOperState_SWITCH_OPER_STATE_UP:
		return "up"
	case agentv1.SwitchOperState_SWITCH_OPER_STATE_DOWN:
		return "down"
	}
	return ""
}

func bgpState(s agentv1.BgpState) string {
	switch s {
	case agentv1.BgpState_BGP_STATE_IDLE:
		return "idle"
	case agentv1.BgpState_BGP_STATE_CONNECT:
		return "connect"
	case agentv1.BgpState_BGP_STATE_ACTIVE:
		return "active"
	case agentv1.BgpState_BGP_STATE_OPEN_SENT:
		return "open-sent"
	case agentv1.BgpState_BGP_STATE_OPEN_CONFIRM:
		return "open-confirm"
	case agentv1.BgpState_BGP_STATE_ESTABLISHED:
		return "established"
	}
	return ""
}
