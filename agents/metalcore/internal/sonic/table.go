package sonic

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"
)

// CONFIG_DB tables metal-core reads or writes.
const (
	tablePort          = "PORT"
	tableInterface     = "INTERFACE"
	tableVLAN          = "VLAN"
	tableVLANMember    = "VLAN_MEMBER"
	tableVLANInterface = "VLAN_INTERFACE"
	tableSuppress      = "SUPPRESS_VLAN_NEIGH"
	tableVRF           = "VRF"
	tableTunnel        = "VXLAN_TUNNEL"
	tableTunnelMap     = "VXLAN_TUNNEL_MAP"
	tableMetadata      = "DEVICE_METADATA"
	tableMgmtInterface = "MGMT_INTERFACE"
)

// nullField is the field SONiC stores in a row that has no fields: a Redis
// hash cannot be empty.
const nullField = "NULL"

// rows is a snapshot of tables: key → fields, without the NULL field.
type rows map[string]map[string]string

// readTables reads every row of tables with one KEYS per table (as SONiC's
// own tools list tables) and one pipelined HGETALL for all rows.
func readTables(ctx context.Context, db *DB, tables ...string) (rows, error) {
	pipe := db.Pipeline()
	keyCmds := make([]*redis.StringSliceCmd, len(tables))
	for i, t := range tables {
		keyCmds[i] = pipe.Keys(ctx, t+db.Sep+"*")
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return nil, fmt.Errorf("%s: list %s: %w", db.Name, strings.Join(tables, ", "), err)
	}
	var keys []string
	for _, c := range keyCmds {
		keys = append(keys, c.Val()...)
	}
	return readRows(ctx, db, keys)
}

// readRows reads the given rows; rows that do not exist are left out.
func readRows(ctx context.Context, db *DB, keys []string) (rows, error) {
	out := rows{}
	if len(keys) == 0 {
		return out, nil
	}
	pipe := db.Pipeline()
	cmds := make([]*redis.MapStringStringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HGetAll(ctx, k)
	}
	// A key of another type fails its own HGETALL only; the others count.
	_, _ = pipe.Exec(ctx)
	for i, c := range cmds {
		m, err := c.Result()
		if err != nil {
			if isWrongType(err) {
				continue
			}
			return nil, fmt.Errorf("%s: read %s: %w", db.Name, keys[i], err)
		}
		if len(m) == 0 {
			continue
		}
		delete(m, nullField)
		out[keys[i]] = m
	}
	return out, nil
}

func isWrongType(err error) bool { return err != nil && strings.HasPrefix(err.Error(), "WRONGTYPE") }

// keys returns the snapshot's keys that start with prefix, sorted.
func (r rows) keys(prefix string) []string {
	var out []string
	for k := range r {
		if strings.HasPrefix(k, prefix) {
			out = append(out, k)
		}
	}
	slices.Sort(out)
	return out
}

// op is one write: HSET of field pairs, or DEL.
type op struct {
	owner  string
	del    bool
	key    string
	fields []string
}

// batch collects writes in the order SONiC must see them and sends them in
// one pipeline: Redis runs a connection's commands in order, so SONiC's
// managers see them in this order too.
type batch struct {
	ops []op
}

func (b *batch) hset(owner, key string, fields ...string) {
	b.ops = append(b.ops, op{owner: owner, key: key, fields: fields})
}

func (b *batch) del(owner, key string) { b.ops = append(b.ops, op{owner: owner, del: true, key: key}) }

// exec sends the batch. It returns the number of writes sent and the
// failures by owner: a failed write fails its owner (a port, a VRF) only.
func (b *batch) exec(ctx context.Context, db *DB) (int, map[string]error, error) {
	if len(b.ops) == 0 {
		return 0, nil, nil
	}
	pipe := db.Pipeline()
	cmds := make([]redis.Cmder, len(b.ops))
	for i, o := range b.ops {
		if o.del {
			cmds[i] = pipe.Del(ctx, o.key)
			continue
		}
		args := make([]any, len(o.fields))
		for j, f := range o.fields {
			args[j] = f
		}
		cmds[i] = pipe.HSet(ctx, o.key, args...)
	}
	_, _ = pipe.Exec(ctx)
	failed := map[string]error{}
	sent := 0
	defer func() { b.ops = b.ops[:0] }()
	for i, c := range cmds {
		e := c.Err()
		if e == nil {
			sent++
			continue
		}
		var reply redis.Error
		if !errors.As(e, &reply) {
			// Not Redis's answer to this row: the connection failed, and
			// with it whatever came after.
			return sent, failed, fmt.Errorf("%s: %w", db.Name, e)
		}
		if failed[b.ops[i].owner] == nil {
			failed[b.ops[i].owner] = fmt.Errorf("%s %s: %w", c.Name(), b.ops[i].key, e)
		}
	}
	return sent, failed, nil
}

// ensure queues the writes that make row key hold want (field, value
// pairs) and records them in the snapshot. Fields the row has beyond want
// are left alone: they are someone else's (the operator's, SONiC's). A
// row that should exist without fields gets SONiC's NULL field.
func (r rows) ensure(b *batch, owner, key string, want ...string) {
	have, exists := r[key]
	var diff []string
	for i := 0; i+1 < len(want); i += 2 {
		if v, ok := have[want[i]]; !ok || v != want[i+1] {
			diff = append(diff, want[i], want[i+1])
		}
	}
	switch {
	case len(diff) > 0:
		b.hset(owner, key, diff...)
	case !exists:
		b.hset(owner, key, nullField, nullField)
	default:
		return
	}
	next := maps.Clone(have)
	if next == nil {
		next = map[string]string{}
	}
	for i := 0; i+1 < len(diff); i += 2 {
		next[diff[i]] = diff[i+1]
	}
	r[key] = next
}

// remove queues the DEL of row key if it exists.
func (r rows) remove(b *batch, owner, key string) {
	if _, ok := r[key]; !ok {
		return
	}
	b.del(owner, key)
	delete(r, key)
}
