package sonic

import (
	"context"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/metalfleet/metalfleet/agents/metalcore/internal/spec"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// APPL_DB and STATE_DB tables the facts come from.
const (
	// portTable holds a port's oper_status (APPL_DB, and STATE_DB).
	portTable = "PORT_TABLE"
	// lldpTable holds the LLDP neighbour of each port, as SONiC's
	// lldp_syncd writes it from lldpd. Its fields follow the LLDP MIB's
	// lldpRemTable: lldp_rem_chassis_id, lldp_rem_port_id,
	// lldp_rem_port_desc, lldp_rem_sys_name (besides the subtypes,
	// lldp_rem_sys_desc, lldp_rem_man_addr and the capabilities, which are
	// not reported).
	lldpTable = "LLDP_ENTRY_TABLE"
)

// Naming reads the PORT table and returns the port names under schema.
func (s *Switch) Naming(ctx context.Context, schema Schema) (*Naming, error) {
	r, err := readTables(ctx, s.config, tablePort)
	if err != nil {
		return nil, err
	}
	return naming(s.config, r, schema), nil
}

func naming(db *DB, r rows, schema Schema) *Naming {
	n := &Naming{toSONiC: map[string]string{}, fromSONiC: map[string]string{}}
	prefix := tablePort + db.Sep
	for _, k := range r.keys(prefix) {
		port := strings.TrimPrefix(k, prefix)
		name, _ := schema.Names(port, r[k]["alias"])
		n.fromSONiC[port] = name
		n.toSONiC[name] = port
	}
	return n
}

// Device is what the switch says about itself in CONFIG_DB.
type Device struct {
	// Hostname from DEVICE_METADATA|localhost.
	Hostname string
	// ManagementAddress from the first MGMT_INTERFACE address row (IPv4
	// first); invalid when there is none.
	ManagementAddress netip.Addr
}

// Device reads DEVICE_METADATA and MGMT_INTERFACE.
func (s *Switch) Device(ctx context.Context) (Device, error) {
	r, err := readTables(ctx, s.config, tableMetadata, tableMgmtInterface)
	if err != nil {
		return Device{}, err
	}
	d := Device{Hostname: r[s.config.Key(tableMetadata, "localhost")]["hostname"]}
	var addrs []netip.Addr
	for _, k := range r.keys(tableMgmtInterface + s.config.Sep) {
		// MGMT_INTERFACE|eth0|<address>/<length>
		parts := strings.Split(k, s.config.Sep)
		if len(parts) != 3 {
			continue
		}
		if p, err := netip.ParsePrefix(parts[2]); err == nil {
			addrs = append(addrs, p.Addr())
		}
	}
	slices.SortFunc(addrs, func(a, b netip.Addr) int {
		if a.Is4() != b.Is4() {
			if a.Is4() {
				return -1
			}
			return 1
		}
		return a.Compare(b)
	})
	if len(addrs) > 0 {
		d.ManagementAddress = addrs[0]
	}
	return d, nil
}

// Ports reads every port of the PORT table with its link state and LLDP
// neighbour, named under schema, in the switch's port order.
func (s *Switch) Ports(ctx context.Context, schema Schema) ([]*agentv1.SwitchPortFact, *Naming, error) {
	cfg, err := readTables(ctx, s.config, tablePort)
	if err != nil {
		return nil, nil, err
	}
	n := naming(s.config, cfg, schema)
	prefix := tablePort + s.config.Sep
	var ports []string
	for _, k := range cfg.keys(prefix) {
		ports = append(ports, strings.TrimPrefix(k, prefix))
	}
	slices.SortFunc(ports, spec.ComparePorts)

	applKeys := make([]string, 0, 2*len(ports))
	for _, p := range ports {
		applKeys = append(applKeys, s.appl.Key(portTable, p), s.appl.Key(lldpTable, p))
	}
	appl, err := readRows(ctx, s.appl, applKeys)
	if err != nil {
		return nil, nil, err
	}
	state := rows{}
	if s.state != nil {
		var missing []string
		for _, p := range ports {
			if appl[s.appl.Key(portTable, p)]["oper_status"] == "" {
				missing = append(missing, s.state.Key(portTable, p))
			}
		}
		if state, err = readRows(ctx, s.state, missing); err != nil {
			return nil, nil, err
		}
	}

	out := make([]*agentv1.SwitchPortFact, 0, len(ports))
	for _, p := range ports {
		row := cfg[prefix+p]
		name, id := schema.Names(p, row["alias"])
		f := &agentv1.SwitchPortFact{
			Name: name, Identifier: id, SonicName: p, Alias: row["alias"], Lanes: row["lanes"],
			SpeedMbps: parseUint32(row["speed"]), Mtu: parseUint32(row["mtu"]),
		}
		switch row["admin_status"] {
		case "up":
			f.AdminState = agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_UP
		case "down":
			f.AdminState = agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_DOWN
		}
		oper := appl[s.appl.Key(portTable, p)]["oper_status"]
		if oper == "" && s.state != nil {
			oper = state[s.state.Key(portTable, p)]["oper_status"]
		}
		switch oper {
		case "up":
			f.OperState = agentv1.SwitchOperState_SWITCH_OPER_STATE_UP
		case "down":
			f.OperState = agentv1.SwitchOperState_SWITCH_OPER_STATE_DOWN
		default:
			f.OperState = agentv1.SwitchOperState_SWITCH_OPER_STATE_UNKNOWN
		}
		if l := appl[s.appl.Key(lldpTable, p)]; l != nil {
			nb := &agentv1.LLDPNeighbour{
				ChassisId: l["lldp_rem_chassis_id"], PortId: l["lldp_rem_port_id"],
				SystemName: l["lldp_rem_sys_name"], PortDescription: l["lldp_rem_port_desc"],
			}
			if nb.ChassisId != "" || nb.PortId != "" || nb.SystemName != "" {
				f.Neighbours = append(f.Neighbours, nb)
			}
		}
		out = append(out, f)
	}
	return out, n, nil
}

func parseUint32(s string) uint32 {
	v, err := strconv.ParseUint(strings.TrimSpace(s), 10, 32)
	if err != nil {
		return 0
	}
	return uint32(v)
}
