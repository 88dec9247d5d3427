package service

import (
	"context"
	"errors"
	"fmt"
	"github.com/metalfleet/metalfleet/central/internal/network"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/machine"
	"github.com/metalfleet/metalfleet/central/internal/store"
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
	part, err := catalog.Partitions.Get(ctx, tx, key.partition)
	if err != nil {
		return nil, errUnbatched
	}
	layouts, err := catalog.ListLayouts(ctx, tx)
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
	addrs := make([]*network.MachineIPs, len(items))
	for i, it := range items {
		addrs[i] = &network.MachineIPs{Machine: it.pick.Machine.GetId(), Hostname: it.alloc.GetHostname(), Nets: it.nets}
	}
	if err := network.TakeBatchIPs(ctx, tx, key.project, addrs); err != nil {
		if errors.Is(err, network.ErrShort) {
			return nil, errUnbatched
		}
		return nil, err
	}
	for i, it := range items {
		it.addresses(addrs[i])
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
