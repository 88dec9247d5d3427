package network

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// ChildRequest asks for a child network.
type ChildRequest struct {
	Partition string
	// Parent is the super network to cut from; "" for the partition's
	// only one.
	Parent string
	// V4 and V6 are the families wanted; neither means every family of
	// the parent.
	V4, V6 bool
	// Project, Name, Description and Labels are the child's.
	Project, Name, Description string
	Labels                     map[string]string
}

// AllocateChild cuts a child network for r.Project out of its super
// network, with a VRF id and a child prefix of each wanted family, and
// writes it with its address pools and its audit row. Concurrent calls
// for the same partition, parent and families share one transaction (a
// lone call is a batch of one); a batch that fails leaves no trace, and
// its calls then run here one by one, each getting its own answer.
// Failures of finding or cutting from the super network come as *Error.
func (ns *Networks) AllocateChild(ctx context.Context, r ChildRequest) (*apiv1.Network, error) {
	if call := auth.CallFrom(ctx); call != nil {
		key := childKey{partition: r.Partition, parent: r.Parent, v4: r.V4, v6: r.V6}
		out, err := ns.children.Do(ctx, key, childReq{req: r, call: call, id: uuid.NewString()})
		if err != nil || out != nil {
			return out, err
		}
		// The batch failed: this call on its own, which reports its own error.
	}
	parent, err := ns.findParent(ctx, r.Partition, r.Parent)
	if err != nil {
		return nil, err
	}
	want := map[int]bool{}
	if r.V4 {
		want[4] = true
	}
	if r.V6 {
		want[6] = true
	}
	out, err := ns.allocateChild(ctx, parent, childOf(parent, uuid.NewString(), r), want)
	if err != nil {
		return nil, &Error{Network: parent.GetId(), Err: err}
	}
	return out, nil
}

// childBatchSize and childBatchesPerParent bound the batches of
// concurrent AllocateChild calls (see store.Combiner): calls for the same
// partition, parent and families share one transaction.
const (
	childBatchSize        = 64
	childBatchesPerParent = 4
)

type childKey struct {
	partition string
	parent    string
	v4, v6    bool // requested families; none: every family of the parent
}

type childReq struct {
	req  ChildRequest
	call *auth.Call
	id   string // the new network's id
}

// runChildBatch finds the parent once and, in one transaction, takes its
// calls' VRF ids and child prefixes with one statement per pool and
// writes all their network, pool, prefix and audit rows with one
// statement (allocateChildren). It returns each call's network, or nil
// when the call must run on its own; an error only when findParent
// refuses, which every call of the key would hear alike.
func (ns *Networks) runChildBatch(ctx context.Context, key childKey, reqs []childReq) []store.Outcome[*apiv1.Network] {
	outs := make([]store.Outcome[*apiv1.Network], len(reqs))
	parent, err := ns.findParent(ctx, key.partition, key.parent)
	if err != nil {
		for i := range outs {
			outs[i].Err = err
		}
		return outs
	}
	nets, err := ns.allocateChildren(ctx, parent, key.v4, key.v6, reqs)
	if err != nil {
		ns.log.Debug("child network batch failed, allocating one by one", "calls", len(reqs), "err", err)
		return outs
	}
	for i := range outs {
		outs[i].Val = nets[i]
	}
	return outs
}

// findParent picks the super network children are cut from: parentID,
// or the partition's only super network when parentID is empty.
func (ns *Networks) findParent(ctx context.Context, partition, parentID string) (*apiv1.Network, error) {
	if parentID != "" {
		p, err := Table.Get(ctx, ns.st.Pool(), parentID)
		if err != nil {
			return nil, &Error{Network: parentID, Read: true, Err: err}
		}
		if p.GetType() != apiv1.NetworkType_NETWORK_TYPE_SUPER {
			return nil, status.Errorf(codes.FailedPrecondition, "network %s is not a super network", auth.Quote(parentID))
		}
		if p.GetPartitionId() != partition {
			return nil, status.Errorf(codes.FailedPrecondition, "super network %s is in partition %s, not %s", auth.Quote(parentID), auth.Quote(p.GetPartitionId()), auth.Quote(partition))
		}
		return p, nil
	}
	supers, err := Table.List(ctx, ns.st.Pool(), "type = 'super' AND partition_id = $1", partition)
	if err != nil {
		return nil, &Error{Read: true, Err: err}
	}
	switch len(supers) {
	case 0:
		return nil, status.Errorf(codes.FailedPrecondition, "partition %s has no super network", auth.Quote(partition))
	case 1:
		return supers[0], nil
	}
	return nil, status.Errorf(codes.FailedPrecondition, "partition %s has %d super networks: name one with parent_id", auth.Quote(partition), len(supers))
}

// childOf is the child network r asks for, to be cut from parent, with
// its id; VRF and prefixes come with the cut.
func childOf(parent *apiv1.Network, id string, r ChildRequest) *apiv1.Network {
	return &apiv1.Network{
		Id:          id,
		Name:        r.Name,
		Description: r.Description,
		Type:        apiv1.NetworkType_NETWORK_TYPE_CHILD,
		PartitionId: parent.GetPartitionId(),
		ProjectId:   r.Project,
		ParentId:    parent.GetId(),
		Labels:      r.Labels,
	}
}

// allocateChild cuts child, a child network of parent, with a VRF id and
// a child prefix of each wanted family (every family of the parent when
// want is empty), and writes it with its audit row: one call alone,
// waiting for locks and moving on to the parent's other prefixes.
func (ns *Networks) allocateChild(ctx context.Context, parent, child *apiv1.Network, want map[int]bool) (*apiv1.Network, error) {
	var out *apiv1.Network
	err := ns.st.Tx(ctx, func(tx pgx.Tx) error {
		// A transaction that lost a conflict runs again from here.
		child.Prefixes = nil
		parentPrefixes, err := Prefixes(ctx, tx, parent)
		if err != nil {
			return err
		}
		vrf, err := ipam.Acquire(ctx, tx, ipam.VRFPoolID)
		if err != nil {
			return fmt.Errorf("vrf: %w", err)
		}
		child.Vrf = uint32(vrf.Uint64())
		type carved struct {
			p    netip.Prefix
			pool string
			slot *big.Int
		}
		var got []carved
		for _, fam := range []int{4, 6} {
			if len(want) > 0 && !want[fam] {
				continue
			}
			var has bool
			var cur *carved
			for _, pp := range parentPrefixes {
				if ipam.Family(pp.CIDR) != fam {
					continue
				}
				has = true
				slot, err := ipam.Acquire(ctx, tx, pp.ChildPool)
				if errors.Is(err, ipam.ErrExhausted) {
					continue
				}
				if err != nil {
					return err
				}
				l := parent.GetChildPrefixLengthIpv4()
				if fam == 6 {
					l = parent.GetChildPrefixLengthIpv6()
				}
				cur = &carved{ipam.ChildPrefix(pp.CIDR, int(l), slot), pp.ChildPool, slot}
				break
			}
			switch {
			case !has && want[fam]:
				return status.Errorf(codes.FailedPrecondition, "super network %q has no IPv%d prefix", parent.GetId(), fam)
			case has && cur == nil:
				return status.Errorf(codes.ResourceExhausted, "super network %q has no free IPv%d child prefix", parent.GetId(), fam)
			case cur != nil:
				got = append(got, *cur)
				child.Prefixes = append(child.Prefixes, cur.p.String())
			}
		}
		if out, err = Table.Insert(ctx, tx, child.GetId(), child, networkCols(child)...); err != nil {
			return err
		}
		for _, c := range got {
			if err := insertPrefix(ctx, tx, child, c.p, c.pool, c.slot); err != nil {
				return err
			}
		}
		return store.Audit(ctx, tx, "network/"+child.GetId(), child.GetProjectId())
	})
	return out, err
}

// allocateChildren does what allocateChild does for one call, for all of
// reqs in one transaction: one round trip takes every call's VRF id and
// the child slots of each family's first super prefix (more only when a
// range or prefix runs short), one statement writes all rows.
func (ns *Networks) allocateChildren(ctx context.Context, parent *apiv1.Network, v4, v6 bool, reqs []childReq) ([]*apiv1.Network, error) {
	n := len(reqs)
	want := map[int]bool{4: v4, 6: v6}
	anyFam := !v4 && !v6
	// A super prefix's child pool is named after it: the parent's own
	// prefix list tells the pools.
	type family struct {
		fam      int
		bits     int
		prefixes []netip.Prefix
	}
	var fams []family
	for _, fam := range []int{4, 6} {
		if !anyFam && !want[fam] {
			continue
		}
		f := family{fam: fam, bits: int(parent.GetChildPrefixLengthIpv4())}
		if fam == 6 {
			f.bits = int(parent.GetChildPrefixLengthIpv6())
		}
		for _, c := range parent.GetPrefixes() {
			p, err := netip.ParsePrefix(c)
			if err != nil {
				return nil, fmt.Errorf("network %s has a bad prefix %q: %w", parent.GetId(), c, err)
			}
			if ipam.Family(p) == fam {
				f.prefixes = append(f.prefixes, p.Masked())
			}
		}
		switch {
		case len(f.prefixes) == 0 && want[fam]:
			return nil, status.Errorf(codes.FailedPrecondition, "super network %q has no IPv%d prefix", parent.GetId(), fam)
		case len(f.prefixes) > 0:
			fams = append(fams, f)
		}
	}
	var outs []*apiv1.Network
	err := ns.st.Tx(ctx, func(tx pgx.Tx) error {
		outs = make([]*apiv1.Network, n)
		b := &pgx.Batch{}
		q, args := ipam.TakeManySQL(ipam.VRFPoolID, n)
		b.Queue(q, args...)
		for _, f := range fams {
			q, args := ipam.TakeManySQL(ipam.ChildPoolID(f.prefixes[0]), n)
			b.Queue(q, args...)
		}
		br := tx.SendBatch(ctx, b)
		take := func(pool string) ([]*big.Int, error) {
			rows, err := br.Query()
			if err != nil {
				return nil, fmt.Errorf("pool %s: take units: %w", pool, err)
			}
			return ipam.Units(rows, pool)
		}
		vrfs, err := take(ipam.VRFPoolID)
		if err != nil {
			br.Close()
			return err
		}
		firstSlots := make([][]*big.Int, len(fams))
		for i, f := range fams {
			if firstSlots[i], err = take(ipam.ChildPoolID(f.prefixes[0])); err != nil {
				br.Close()
				return err
			}
		}
		if err := br.Close(); err != nil {
			return err
		}
		if len(vrfs) < n {
			more, err := ipam.AcquireMany(ctx, tx, ipam.VRFPoolID, n-len(vrfs))
			if err != nil {
				return fmt.Errorf("vrf: %w", err)
			}
			if vrfs = append(vrfs, more...); len(vrfs) < n {
				return fmt.Errorf("vrf: %w", ipam.ErrExhausted)
			}
		}
		children := make([]*apiv1.Network, n)
		for i, r := range reqs {
			children[i] = childOf(parent, r.id, r.req)
			children[i].Vrf = uint32(vrfs[i].Uint64())
		}
		var pools []ipam.PoolDef
		var cidrs, netIDs, famCol, ipPools, parentPools, parentUnits []string
		for i, f := range fams {
			got := 0
			for j, pp := range f.prefixes {
				if got == n {
					break
				}
				pool := ipam.ChildPoolID(pp)
				var slots []*big.Int
				if j == 0 {
					slots = firstSlots[i]
				}
				if len(slots) < n-got {
					more, err := ipam.AcquireMany(ctx, tx, pool, n-got-len(slots))
					if err != nil {
						return err
					}
					slots = append(slots, more...)
				}
				for _, slot := range slots {
					p := ipam.ChildPrefix(pp, f.bits, slot)
					c := children[got]
					c.Prefixes = append(c.Prefixes, p.String())
					first, last := ipam.HostRange(p)
					pools = append(pools, ipam.PoolDef{ID: ipam.IPPoolID(p), Kind: ipam.KindIP, First: first, Last: last, Ranges: ipam.FewShards})
					cidrs, netIDs = append(cidrs, p.String()), append(netIDs, c.GetId())
					famCol, ipPools = append(famCol, fmt.Sprint(f.fam)), append(ipPools, ipam.IPPoolID(p))
					parentPools, parentUnits = append(parentPools, pool), append(parentUnits, slot.String())
					got++
				}
			}
			if got < n {
				return status.Errorf(codes.ResourceExhausted, "super network %q has no free IPv%d child prefix", parent.GetId(), f.fam)
			}
		}
		var ids, projects, vrfCol, specs []string
		var aIDs, subjects, methods, requestIDs, targets []string
		for i, c := range children {
			spec, err := store.EncodeSpec(c)
			if err != nil {
				return err
			}
			ids, projects = append(ids, c.GetId()), append(projects, c.GetProjectId())
			vrfCol, specs = append(vrfCol, fmt.Sprint(c.GetVrf())), append(specs, string(spec))
			call := reqs[i].call
			aIDs, subjects = append(aIDs, uuid.NewString()), append(subjects, call.Principal.TokenID)
			methods, requestIDs = append(methods, call.Method), append(requestIDs, call.RequestID)
			targets = append(targets, "network/"+c.GetId())
		}
		poolsCTE, args, err := ipam.CreatePoolsCTE(pools, []any{
			parent.GetPartitionId(), parent.GetId(), ids, projects, vrfCol, specs,
			cidrs, netIDs, famCol, ipPools, parentPools, parentUnits,
			aIDs, subjects, methods, requestIDs, targets, projects,
		})
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, fmt.Sprintf(allocateChildrenSQL, poolsCTE), args...)
		if err != nil {
			return err
		}
		meta := map[string]*apiv1.Meta{}
		for rows.Next() {
			var (
				id               string
				gen              int64
				created, updated time.Time
			)
			if err := rows.Scan(&id, &gen, &created, &updated); err != nil {
				rows.Close()
				return err
			}
			meta[id] = &apiv1.Meta{CreatedAt: timestamppb.New(created), UpdatedAt: timestamppb.New(updated), Generation: uint64(gen)}
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for i, c := range children {
			m, ok := meta[c.GetId()]
			if !ok {
				return fmt.Errorf("network %s: not returned by its insert", c.GetId())
			}
			out := proto.Clone(c).(*apiv1.Network)
			store.SetMeta(out, m)
			outs[i] = out
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return outs, nil
}

// allocateChildrenSQL writes a batch's child networks, their address pools
// (ipam.CreatePoolsCTE, whose parameters ipam numbers after $18), their
// prefixes (each pinning its parent slot) and their audit rows in one
// statement.
const allocateChildrenSQL = `WITH net AS (
	INSERT INTO networks (id, type, partition_id, project_id, parent_id, vrf, spec)
	SELECT id, 'child', NULLIF($1, ''), project_id, $2, vrf::BIGINT, spec::JSONB
	FROM unnest($3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[]) AS r (id, project_id, vrf, spec)
	RETURNING id, generation, created_at, updated_at
), pfx AS (
	INSERT INTO prefixes (cidr, network_id, family, ip_pool, parent_pool, parent_unit)
	SELECT cidr, network_id, family::INT, ip_pool, parent_pool, parent_unit::NUMERIC
	FROM unnest($7::TEXT[], $8::TEXT[], $9::TEXT[], $10::TEXT[], $11::TEXT[], $12::TEXT[])
		AS r (cidr, network_id, family, ip_pool, parent_pool, parent_unit)
), aud AS (
	` + store.AuditInsert + `
	SELECT * FROM unnest($13::TEXT[], $14::TEXT[], $15::TEXT[], $16::TEXT[], $17::TEXT[], $18::TEXT[])
), %s
SELECT id, generation, created_at, updated_at FROM net`
