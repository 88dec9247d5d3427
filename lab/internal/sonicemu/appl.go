package sonicemu

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// The APPL_DB tables the emulation writes, as SONiC's portsyncd/orchagent
// (PORT_TABLE) and lldp_syncd (LLDP_ENTRY_TABLE) do; metal-core reads both
// (agents/metalcore/internal/sonic/facts.go).
const (
	PortTable = "PORT_TABLE"
	LLDPTable = "LLDP_ENTRY_TABLE"
)

// LinkState is what Linux says of a port's netdev.
type LinkState struct {
	AdminUp bool // IFF_UP
	OperUp  bool // operstate up: IFF_UP and carrier
	MTU     int
}

// portRow is the PORT_TABLE row of a port. A port CONFIG_DB names that
// has no netdev (not renamed yet, gone) is down.
func portRow(l LinkState, exists bool) map[string]string {
	row := map[string]string{"admin_status": "down", "oper_status": "down"}
	if !exists {
		return row
	}
	if l.AdminUp {
		row["admin_status"] = "up"
	}
	if l.OperUp {
		row["oper_status"] = "up"
	}
	if l.MTU > 0 {
		row["mtu"] = strconv.Itoa(l.MTU)
	}
	return row
}

// Neighbour is an LLDP neighbour of a port, as lldpd reports it.
type Neighbour struct {
	ChassisIDSubtype string // the LLDP MIB's number: 4 MAC, 5 network address, 6 ifname, 7 local
	ChassisID        string
	PortIDSubtype    string // 1 ifalias, 3 MAC, 4 network address, 5 ifname, 7 local
	PortID           string
	PortDesc         string
	SysName          string
	SysDesc          string
	MgmtAddr         string
}

// lldpRow is the LLDP_ENTRY_TABLE row of a neighbour, with lldp_syncd's
// field names (the LLDP MIB's lldpRemTable).
func lldpRow(n Neighbour) map[string]string {
	row := map[string]string{}
	set := func(k, v string) {
		if v != "" {
			row[k] = v
		}
	}
	set("lldp_rem_chassis_id_subtype", n.ChassisIDSubtype)
	set("lldp_rem_chassis_id", n.ChassisID)
	set("lldp_rem_port_id_subtype", n.PortIDSubtype)
	set("lldp_rem_port_id", n.PortID)
	set("lldp_rem_port_desc", n.PortDesc)
	set("lldp_rem_sys_name", n.SysName)
	set("lldp_rem_sys_desc", n.SysDesc)
	set("lldp_rem_man_addr", n.MgmtAddr)
	return row
}

// Writer keeps tables of APPL_DB equal to what it is given: rows that
// changed are written whole (DEL + HSET in one transaction, so no stale
// field survives and a reader never sees half a row), rows that went are
// deleted. The first write of a table also deletes the rows it finds that
// it was not given (left by an earlier run). Only the tables it is given
// are touched.
type Writer struct {
	Client *redis.Client
	// Sep is APPL_DB's key separator (":").
	Sep string

	written map[string]map[string]map[string]string // table → key → row
}

// Sync makes table hold exactly rows (item → fields).
func (w *Writer) Sync(ctx context.Context, table string, rows map[string]map[string]string) error {
	if w.written == nil {
		w.written = map[string]map[string]map[string]string{}
	}
	prev, known := w.written[table]
	if !known {
		// What an earlier run (or nobody) left: read it, so that the diff
		// below removes what is not wanted any more.
		prev = map[string]map[string]string{}
		keys, err := w.Client.Keys(ctx, table+w.Sep+"*").Result()
		if err != nil {
			return fmt.Errorf("APPL_DB %s: %w", table, err)
		}
		for _, k := range keys {
			// nil: differs from every wanted row, so each is rewritten once.
			prev[strings.TrimPrefix(k, table+w.Sep)] = nil
		}
	}
	pipe := w.Client.TxPipeline()
	n := 0
	for _, item := range slices.Sorted(maps.Keys(prev)) {
		if _, ok := rows[item]; !ok {
			pipe.Del(ctx, table+w.Sep+item)
			n++
		}
	}
	for _, item := range slices.Sorted(maps.Keys(rows)) {
		row := rows[item]
		if old, ok := prev[item]; ok && old != nil && maps.Equal(old, row) {
			continue
		}
		key := table + w.Sep + item
		pipe.Del(ctx, key)
		if len(row) > 0 {
			args := make([]any, 0, 2*len(row))
			for _, f := range slices.Sorted(maps.Keys(row)) {
				args = append(args, f, row[f])
			}
			pipe.HSet(ctx, key, args...)
		}
		n++
	}
	if n > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			return fmt.Errorf("APPL_DB %s: %w", table, err)
		}
	}
	cp := make(map[string]map[string]string, len(rows))
	for k, v := range rows {
		cp[k] = maps.Clone(v)
	}
	w.written[table] = cp
	return nil
}
