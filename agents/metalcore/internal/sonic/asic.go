package sonic

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"
)

// ASIC_DB objects that hold a port, and the attribute naming the port.
const (
	asicRIF        = "ASIC_STATE:SAI_OBJECT_TYPE_ROUTER_INTERFACE:"
	asicRIFPort    = "SAI_ROUTER_INTERFACE_ATTR_PORT_ID"
	asicBridge     = "ASIC_STATE:SAI_OBJECT_TYPE_BRIDGE_PORT:"
	asicBridgePort = "SAI_BRIDGE_PORT_ATTR_PORT_ID"
	// portNameMap maps SONiC port names to their SAI object ids.
	portNameMap = "COUNTERS_PORT_NAME_MAP"
)

// waitASIC waits until the ASIC has no router interface left on the
// unrouted ports and no bridge port left on the unbridged ones, so that
// the next step does not race SONiC's orchagent (it refuses to bridge a
// port that is still routed and the other way round). It checks the
// ASIC_DB only when there is one: without entries there (an emulation, a
// virtual switch without a SAI) the check is skipped. A port the ASIC
// does not let go of in time fails; the others go on.
func (a *apply) waitASIC(ctx context.Context, unrouted, unbridged []string) error {
	s := a.s
	if len(unrouted)+len(unbridged) == 0 || s.asic == nil || s.counters == nil {
		return nil
	}
	n, err := s.asic.DBSize(ctx).Result()
	if err != nil {
		// The ASIC state is a safety check; without it the writes still
		// stand.
		s.log.Warn("ASIC_DB unreadable, not waiting for the ASIC", "err", err)
		return nil
	}
	if n == 0 {
		return nil
	}
	oids, err := s.counters.HGetAll(ctx, portNameMap).Result()
	if err != nil {
		s.log.Warn("port object ids unreadable, not waiting for the ASIC", "err", err)
		return nil
	}
	type wait struct{ rif, bridge bool }
	waiting := map[string]wait{}
	for _, p := range unrouted {
		w := waiting[p]
		w.rif = true
		waiting[p] = w
	}
	for _, p := range unbridged {
		w := waiting[p]
		w.bridge = true
		waiting[p] = w
	}
	deadline := time.Now().Add(s.asicTimeout)
	for {
		rifs, err := asicPorts(ctx, s.asic, asicRIF, asicRIFPort)
		if err != nil {
			return err
		}
		bridges, err := asicPorts(ctx, s.asic, asicBridge, asicBridgePort)
		if err != nil {
			return err
		}
		for p, w := range waiting {
			oid := oids[p]
			if oid == "" || (!w.rif || !rifs[oid]) && (!w.bridge || !bridges[oid]) {
				delete(waiting, p)
			}
		}
		if len(waiting) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			for _, p := range slices.Sorted(mapKeys(waiting)) {
				a.fail(portOwner(p), fmt.Errorf("the ASIC still holds the port after %s", s.asicTimeout))
			}
			return nil
		}
		t := time.NewTimer(s.asicPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// asicPorts returns the port object ids that objects of one type hold.
func asicPorts(ctx context.Context, db *DB, prefix, attr string) (map[string]bool, error) {
	keys, err := db.Keys(ctx, prefix+"*").Result()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", AsicDB, err)
	}
	out := map[string]bool{}
	if len(keys) == 0 {
		return out, nil
	}
	pipe := db.Pipeline()
	cmds := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HGet(ctx, k, attr)
	}
	_, _ = pipe.Exec(ctx)
	for _, c := range cmds {
		v, err := c.Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", AsicDB, err)
		}
		out[v] = true
	}
	return out, nil
}
