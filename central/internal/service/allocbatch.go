package service

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/machine"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Allocations by size are combined (store.Combiner, as IP hand-outs are):
// concurrent calls for one size, partition and project run as one
// transaction with a fixed number of statements — pick the machines, take
// the addresses per pool, write the IP rows, the machine rows, the events,
// the installers' documents and the audit rows, each in one statement —
// instead of some twenty round trips and a commit each. A batch is all or
// nothing; calls it cannot serve (a reserved size, a bad image or network,
// fewer machines or addresses than calls, any error) run on their own
// afterwards, which also reports each call's own error.
const (
	allocBatchSize    = 32
	allocBatchRunning = 4
)

type allocKey struct{ partition, size, project string }

type allocReq struct {
	req  *apiv1.MachineServiceCreateRequest
	call *auth.Call
}

// allocRes is the allocated machine's id, "" when the batch did not serve
// the call.
type allocRes struct{ id string }

type allocBatches = store.Combiner[allocKey, allocReq, allocRes]

// errUnbatched rolls a batch back so its calls run on their own.
var errUnbatched = errors.New("allocation batch cannot serve these calls")

func (a *API) runAllocBatch(ctx context.Context, key allocKey, reqs []allocReq) []store.Outcome[allocRes] {
	outs := make([]store.Outcome[allocRes], len(reqs))
	if len(reqs) == 1 {
		// A lone call runs its own transaction here, inside the combiner,
		// so that calls arriving meanwhile queue up and form the next batch.
		// The batch runs with its leader's context, which is this call's.
		outs[0].Val.id, outs[0].Err = (&machineService{API: a}).createOne(ctx, reqs[0].req)
		return outs
	}
	if a.fleet == nil {
		return outs
	}
	var served map[int]string
	err := a.store.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		served, err = a.allocateBatch(ctx, tx, key, reqs)
		return err
	})
	if err != nil {
		if !errors.Is(err, errUnbatched) {
			a.log.Debug("allocation batch fell back to single calls", "calls", len(reqs), "err", err)
		}
		return outs
	}
	for i, id := range served {
		outs[i].Val.id = id
	}
	return outs
}

// allocateBatch allocates what it can of reqs inside tx and returns the
// machine id per served call index.
func (a *API) allocateBatch(ctx context.Context, tx pgx.Tx, key allocKey, reqs []allocReq) (map[int]string, error) {
	reserved, err := machine.Reserved(ctx, tx, key.partition, key.size)
	if err != nil {
		return nil, err
	}
	if reserved {
		// Reservations are counted under their lock, one call at a time.
		return nil, errUnbatched
	}
	part, err := partitions.Get(ctx, tx, key.partition)
	if err != nil {
		return nil, errUnbatched
	}
	layouts, err := filesystemLayouts.List(ctx, tx, "TRUE")
	if err != nil {
		return nil, fmt.Errorf("read filesystem layouts: %w", err)
	}
	reads := newAllocReads()
	var items []*allocItem
	index := map[*allocItem]int{}
	for i, r := range reqs {
		it, err := reads.item(ctx, tx, r, key.project)
		if err != nil {
			continue // served on its own, which reports its error
		}
		items = append(items, it)
		index[it] = i
	}
	if len(items) < 2 {
		return nil, errUnbatched
	}
	picked, err := a.machines.Pick(ctx, tx, key.partition, key.size, key.project, len(items))
	if err != nil {
		return nil, err
	}
	if len(picked) < len(items) {
		// Too few machines for everybody: who gets one and who is told
		// there is none is decided call by call.
		return nil, errUnbatched
	}
	now, err := machine.DBNow(ctx, tx)
	if err != nil {
		return nil, err
	}
	for i, it := range items {
		if picked[i].Agent == "" {
			return nil, errUnbatched
		}
		if err := it.fit(ctx, tx, layouts, picked[i], now); err != nil {
			return nil, errUnbatched
		}
	}
	if err := a.takeBatchIPs(ctx, tx, key.project, items); err != nil {
		return nil, err
	}

	// The machines, their events, documents and audit rows.
	n := len(items)
	as := make([]machine.Allocation, n)
	for i, it := range items {
		as[i] = it.allocation(part)
	}
	if err := a.machines.Allocate(ctx, tx, key.project, as); err != nil {
		return nil, err
	}
	out := make(map[int]string, n)
	for _, it := range items {
		out[index[it]] = it.pick.Machine.GetId()
	}
	return out, nil
}

// takeBatchIPs takes one address per network and family for every item,
// all of a pool in one statement, and writes all IP rows in one statement.
// Only each family's first prefix is used: when it runs short the batch
// is rolled back and the calls take the single path, which moves on to a
// network's other prefixes.
func (a *API) takeBatchIPs(ctx context.Context, tx pgx.Tx, project string, items []*allocItem) error {
	type want struct {
		pool string
		v4   bool
		n    int
	}
	prefixesOf := map[string][]prefixRow{}
	wants := map[string]*want{}
	var order []string
	for _, it := range items {
		for _, n := range it.nets {
			ps, ok := prefixesOf[n.GetId()]
			if !ok {
				var err error
				if ps, err = networkPrefixes(ctx, tx, n); err != nil {
					return err
				}
				prefixesOf[n.GetId()] = ps
			}
			for _, fam := range []int{4, 6} {
				i := slices.IndexFunc(ps, func(p prefixRow) bool { return ipam.Family(p.prefix) == fam })
				if i < 0 {
					continue
				}
				w := wants[ps[i].ipPool]
				if w == nil {
					w = &want{pool: ps[i].ipPool, v4: fam == 4}
					wants[w.pool] = w
					order = append(order, w.pool)
				}
				w.n++
			}
		}
	}
	units := map[string][]string{}
	slices.Sort(order) // pools locked in one order by every batch
	for _, pool := range order {
		w := wants[pool]
		got, err := ipam.AcquireMany(ctx, tx, pool, w.n)
		if err != nil {
			return err
		}
		if len(got) < w.n {
			return errUnbatched
		}
		for _, u := range got {
			units[pool] = append(units[pool], ipam.UnitAddr(u, w.v4).String()+"|"+u.String())
		}
	}
	var ips, specs, pools, unitCol, nets, machines []string
	for _, it := range items {
		for _, n := range it.nets {
			ps := prefixesOf[n.GetId()]
			mn := &agentv1.MachineNetwork{NetworkId: n.GetId(), Prefixes: n.GetPrefixes(), Vrf: n.GetVrf(),
				Private: n.GetType() == apiv1.NetworkType_NETWORK_TYPE_CHILD, Underlay: n.GetType() == apiv1.NetworkType_NETWORK_TYPE_UNDERLAY}
			for _, fam := range []int{4, 6} {
				i := slices.IndexFunc(ps, func(p prefixRow) bool { return ipam.Family(p.prefix) == fam })
				if i < 0 {
					continue
				}
				pool := ps[i].ipPool
				addr, unit, _ := cutLast(units[pool][0])
				units[pool] = units[pool][1:]
				ip := &apiv1.IP{Ip: addr, NetworkId: n.GetId(), ProjectId: project, Type: apiv1.IPType_IP_TYPE_EPHEMERAL,
					Name: it.alloc.GetHostname(), Description: "machine " + it.pick.Machine.GetId()}
				spec, err := store.EncodeSpec(ip)
				if err != nil {
					return err
				}
				ips, specs, pools, unitCol = append(ips, addr), append(specs, string(spec)), append(pools, pool), append(unitCol, unit)
				nets, machines = append(nets, n.GetId()), append(machines, it.pick.Machine.GetId())
				mn.Ips = append(mn.Ips, addr)
				it.alloc.Ips = append(it.alloc.Ips, addr)
			}
			it.docs = append(it.docs, mn)
		}
	}
	if len(ips) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO ips (ip, spec, pool_id, unit, network_id, project_id, type, machine_id)
		SELECT ip, spec::JSONB, pool, unit::NUMERIC, network, $7, 'ephemeral', machine
		FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[]) AS x (ip, spec, pool, unit, network, machine)`,
		ips, specs, pools, unitCol, nets, machines, project); err != nil {
		return fmt.Errorf("store machine ips: %w", err)
	}
	return nil
}

// cutLast splits "a|b" at its last '|'.
func cutLast(s string) (string, string, bool) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '|' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}
