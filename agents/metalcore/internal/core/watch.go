package core

import (
	"context"
	"fmt"
	"strings"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/agents/metalcore/internal/sonic"
)

// keyspaceFlags are the notify-keyspace-events classes the watch needs:
// keyspace channels (K) for hash writes (h) and generic commands such as
// DEL (g).
const keyspaceFlags = "Khg"

// watched are the tables whose changes are facts, per database.
func watched(s *sonic.Switch) map[*sonic.DB][]string {
	out := map[*sonic.DB][]string{
		s.Config(): {"PORT", "DEVICE_METADATA", "MGMT_INTERFACE"},
		s.Appl():   {"PORT_TABLE", "LLDP_ENTRY_TABLE"},
	}
	if st := s.State(); st != nil {
		out[st] = []string{"PORT_TABLE"}
	}
	return out
}

// watch subscribes to Redis keyspace notifications of the tables the
// facts come from and wakes the facts loop on each: a port that goes up
// or a new LLDP neighbour is reported within a fraction of a second, and
// ports added after start are seen too. Where notifications cannot be
// switched on (a Redis that refuses CONFIG SET), the facts loop's slow
// poll is all there is.
func (c *Core) watch(ctx context.Context) {
	// One subscription per Redis instance: SONiC keeps its databases in
	// one server, an emulation may not.
	type sub struct {
		db       *sonic.DB
		patterns []string
	}
	subs := map[string]*sub{}
	for db, tables := range watched(c.sw) {
		addr := db.Options().Network + ":" + db.Options().Addr
		if subs[addr] == nil {
			subs[addr] = &sub{db: db}
		}
		for _, t := range tables {
			subs[addr].patterns = append(subs[addr].patterns, fmt.Sprintf("__keyspace@%d__:%s%s*", db.Options().DB, t, db.Sep))
		}
	}
	for addr, s := range subs {
		go func() {
			for !c.enableNotifications(ctx, s.db, addr) {
				if !agent.Sleep(ctx, c.cfg.FactsPoll) {
					return
				}
			}
			ps := s.db.PSubscribe(ctx, s.patterns...)
			defer ps.Close()
			ch := ps.Channel()
			c.log.Info("watching the switch's state", "redis", addr, "patterns", s.patterns)
			for {
				select {
				case <-ctx.Done():
					return
				case _, ok := <-ch:
					if !ok {
						return
					}
					c.facts.poke()
				}
			}
		}()
	}
	<-ctx.Done()
}

// enableNotifications adds keyspaceFlags to the instance's
// notify-keyspace-events, keeping what is set (SONiC's own daemons rely on
// them too).
func (c *Core) enableNotifications(ctx context.Context, db *sonic.DB, addr string) bool {
	cur, err := db.ConfigGet(ctx, "notify-keyspace-events").Result()
	if err == nil {
		want := mergeFlags(cur["notify-keyspace-events"], keyspaceFlags)
		if want == cur["notify-keyspace-events"] {
			return true
		}
		if err = db.ConfigSet(ctx, "notify-keyspace-events", want).Err(); err == nil {
			return true
		}
	}
	if ctx.Err() == nil {
		c.metrics.fail(opWatch)
		c.log.Warn("keyspace notifications unavailable; polling", "redis", addr, "every", c.cfg.FactsPoll, "err", err)
	}
	return false
}

// mergeFlags adds the classes of add that cur lacks ("A" stands for all
// classes but the key-miss and new-key ones).
func mergeFlags(cur, add string) string {
	out := cur
	for _, f := range add {
		if strings.ContainsRune(out, f) || strings.ContainsRune(out, 'A') && strings.ContainsRune("g$lshzxetd", f) {
			continue
		}
		out += string(f)
	}
	return out
}
