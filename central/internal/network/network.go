// Package network is the network aggregate: the only writer of networks,
// prefixes and ips. It creates super, underlay and external networks,
// cuts child networks (one call, or a batch in one statement), hands out
// and releases IPs (one call, or a batch of next-free calls in one
// statement) and a machine's addresses at allocation and free, over
// ipam's pools. The callers validate requests and map errors.
package network

import (
	"context"
	"errors"
	"fmt"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"math/big"
	"net/netip"
	"time"
)

// Table reads networks as stored; only this package writes them.
var Table = store.Table[*apiv1.Network]{Name: "networks", New: func() *apiv1.Network { return &apiv1.Network{} }}

// TypeNames are the networks.type column's values.
var TypeNames = map[apiv1.NetworkType]string{
	apiv1.NetworkType_NETWORK_TYPE_SUPER:    "super",
	apiv1.NetworkType_NETWORK_TYPE_CHILD:    "child",
	apiv1.NetworkType_NETWORK_TYPE_UNDERLAY: "underlay",
	apiv1.NetworkType_NETWORK_TYPE_EXTERNAL: "external",
}

// Prefix is one prefix of a network with its pools.
type Prefix struct {
	CIDR netip.Prefix
	// IPPool holds its addresses, ChildPool (of a super network) its
	// child prefix slots.
	IPPool    string
	ChildPool string
}

func networkCols(n *apiv1.Network) []store.Col {
	var vrf any
	if n.GetVrf() != 0 {
		vrf = int64(n.GetVrf())
	}
	return []store.Col{
		{Name: "type", Val: TypeNames[n.GetType()]},
		{Name: "partition_id", Val: store.Nullable(n.GetPartitionId())},
		{Name: "project_id", Val: store.Nullable(n.GetProjectId())},
		{Name: "parent_id", Val: store.Nullable(n.GetParentId())},
		{Name: "vrf", Val: vrf},
	}
}

// MaxVNI is the largest VXLAN network identifier (24 bits); a network's VRF
// id is its VNI on the switches.
const MaxVNI = 1<<24 - 1

// checkNoOverlap refuses a top-level prefix that shares addresses with another.
func checkNoOverlap(ctx context.Context, tx pgx.Tx, prefixes []netip.Prefix) error {
	rows, err := tx.Query(ctx, `SELECT cidr, network_id FROM prefixes WHERE parent_pool IS NULL`)
	if err != nil {
		return fmt.Errorf("read prefixes: %w", err)
	}
	type existing struct {
		p   netip.Prefix
		net string
	}
	var all []existing
	for rows.Next() {
		var c, id string
		if err := rows.Scan(&c, &id); err != nil {
			rows.Close()
			return err
		}
		all = append(all, existing{netip.MustParsePrefix(c), id})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, p := range prefixes {
		for _, e := range all {
			if ipam.Overlaps(p, e.p) {
				return status.Errorf(codes.AlreadyExists, "prefix %s overlaps %s of network %q", p, e.p, e.net)
			}
		}
	}
	return nil
}

// insertPrefix records p for network n with its pool: super prefixes get a
// pool of child slots, the others a pool of host addresses.
func insertPrefix(ctx context.Context, tx pgx.Tx, n *apiv1.Network, p netip.Prefix, parentPool string, parentUnit *big.Int) error {
	var ipPool, childPool any
	if n.GetType() == apiv1.NetworkType_NETWORK_TYPE_SUPER {
		l := n.GetChildPrefixLengthIpv4()
		if !p.Addr().Is4() {
			l = n.GetChildPrefixLengthIpv6()
		}
		slots, err := ipam.ChildSlots(p, int(l))
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "%v", err)
		}
		id := ipam.ChildPoolID(p)
		if err := ipam.CreatePool(ctx, tx, id, ipam.KindChild, big.NewInt(0), slots.Sub(slots, big.NewInt(1))); err != nil {
			return err
		}
		childPool = id
	} else {
		first, last := ipam.HostRange(p)
		id := ipam.IPPoolID(p)
		ranges := ipam.Shards
		if parentPool != "" {
			// A child network's addresses are taken by its own project's
			// machines, rarely many at once; few ranges make allocating the
			// network itself cheap.
			ranges = ipam.FewShards
		}
		if err := ipam.CreatePoolRanges(ctx, tx, id, ipam.KindIP, first, last, ranges); err != nil {
			return err
		}
		ipPool = id
	}
	var pu any
	if parentUnit != nil {
		pu = parentUnit.String()
	}
	_, err := tx.Exec(ctx, `INSERT INTO prefixes (cidr, network_id, family, ip_pool, child_pool, parent_pool, parent_unit)
		VALUES ($1, $2, $3, $4, $5, $6, $7::NUMERIC)`, p.String(), n.GetId(), ipam.Family(p), ipPool, childPool, store.Nullable(parentPool), pu)
	if err != nil {
		return fmt.Errorf("insert prefix %s: %w", p, err)
	}
	return nil
}

// Prefixes lists a network's prefixes in the order they were given.
func Prefixes(ctx context.Context, db store.Querier, n *apiv1.Network) ([]Prefix, error) {
	rows, err := db.Query(ctx, `SELECT cidr, COALESCE(ip_pool, ''), COALESCE(child_pool, '') FROM prefixes WHERE network_id = $1`, n.GetId())
	if err != nil {
		return nil, fmt.Errorf("read prefixes of %s: %w", n.GetId(), err)
	}
	defer rows.Close()
	byCIDR := map[string]Prefix{}
	for rows.Next() {
		var c, ip, child string
		if err := rows.Scan(&c, &ip, &child); err != nil {
			return nil, err
		}
		byCIDR[c] = Prefix{CIDR: netip.MustParsePrefix(c), IPPool: ip, ChildPool: child}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var out []Prefix
	for _, c := range n.GetPrefixes() {
		if r, ok := byCIDR[c]; ok {
			out = append(out, r)
		}
	}
	return out, nil
}

// Create stores a super, underlay or external network (validated by the
// caller) with its prefixes and their pools, and its audit row.
func Create(ctx context.Context, st *store.Store, n *apiv1.Network, prefixes []netip.Prefix) (*apiv1.Network, error) {
	var out *apiv1.Network
	// Serializable: the overlap check reads what concurrent creates write.
	err := st.SerializableTx(ctx, func(tx pgx.Tx) error {
		if err := checkNoOverlap(ctx, tx, prefixes); err != nil {
			return err
		}
		var err error
		if out, err = Table.Insert(ctx, tx, n.GetId(), n, networkCols(n)...); err != nil {
			return err
		}
		for _, p := range prefixes {
			if err := insertPrefix(ctx, tx, n, p, "", nil); err != nil {
				return err
			}
		}
		return store.Audit(ctx, tx, "network/"+n.GetId(), "")
	})
	return out, err
}

// AllocateChild cuts child, a child network of parent, with a VRF id and
// a child prefix of each wanted family (every family of the parent when
// want is empty), and writes it with its audit row: one call alone.
func AllocateChild(ctx context.Context, st *store.Store, parent, child *apiv1.Network, want map[int]bool) (*apiv1.Network, error) {
	var out *apiv1.Network
	err := st.Tx(ctx, func(tx pgx.Tx) error {
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

// ChildReq is one call of a batch of child network allocations.
type ChildReq struct {
	Req  *apiv1.NetworkServiceAllocateRequest
	Call *auth.Call
	ID   string // the new network's id
}

// AllocateChildren does what AllocateChild does for one call, for all of reqs
// in one transaction: one round trip takes every call's VRF id and the
// child slots of each family's first super prefix (more only when a range
// or prefix runs short), one statement writes all rows.
func AllocateChildren(ctx context.Context, st *store.Store, parent *apiv1.Network, v4, v6 bool, reqs []ChildReq) ([]*apiv1.Network, error) {
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
	err := st.Tx(ctx, func(tx pgx.Tx) error {
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
			children[i] = &apiv1.Network{
				Id:          r.ID,
				Name:        r.Req.GetName(),
				Description: r.Req.GetDescription(),
				Type:        apiv1.NetworkType_NETWORK_TYPE_CHILD,
				PartitionId: parent.GetPartitionId(),
				ProjectId:   r.Req.GetProjectId(),
				ParentId:    parent.GetId(),
				Labels:      r.Req.GetLabels(),
				Vrf:         uint32(vrfs[i].Uint64()),
			}
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
			call := reqs[i].Call
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

// Delete frees the network's prefixes and VRF. IPs and child networks must
// go first; the foreign keys back the explicit checks up under concurrency.
func Delete(ctx context.Context, st *store.Store, id string) (*apiv1.Network, error) {
	var out *apiv1.Network
	err := st.Tx(ctx, func(tx pgx.Tx) error {
		n, err := Table.GetForUpdate(ctx, tx, id)
		if err != nil {
			return err
		}
		var ips, children int
		if err := tx.QueryRow(ctx, `SELECT (SELECT count(*) FROM ips WHERE network_id = $1), (SELECT count(*) FROM networks WHERE parent_id = $1)`,
			n.GetId()).Scan(&ips, &children); err != nil {
			return err
		}
		if ips > 0 {
			return status.Errorf(codes.FailedPrecondition, "network %q still has %d IPs: release them first", n.GetId(), ips)
		}
		if children > 0 {
			return status.Errorf(codes.FailedPrecondition, "network %q still has %d child networks", n.GetId(), children)
		}
		rows, err := tx.Query(ctx, `DELETE FROM prefixes WHERE network_id = $1
			RETURNING COALESCE(ip_pool, ''), COALESCE(child_pool, ''), COALESCE(parent_pool, ''), COALESCE(parent_unit, 0)::TEXT`, n.GetId())
		if err != nil {
			return err
		}
		type freed struct{ ip, child, parent, unit string }
		var all []freed
		for rows.Next() {
			var f freed
			if err := rows.Scan(&f.ip, &f.child, &f.parent, &f.unit); err != nil {
				rows.Close()
				return err
			}
			all = append(all, f)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		for _, f := range all {
			for _, pool := range []string{f.ip, f.child} {
				if pool != "" {
					if err := ipam.DeletePool(ctx, tx, pool); err != nil {
						return err
					}
				}
			}
			if f.parent != "" {
				if err := ipam.Release(ctx, tx, f.parent, mustUnit(f.unit)); err != nil {
					return err
				}
			}
		}
		if out, err = Table.Delete(ctx, tx, n.GetId()); err != nil {
			return err
		}
		if n.GetType() == apiv1.NetworkType_NETWORK_TYPE_CHILD {
			if err := ipam.Release(ctx, tx, ipam.VRFPoolID, big.NewInt(int64(n.GetVrf()))); err != nil {
				return err
			}
		}
		return store.Audit(ctx, tx, "network/"+n.GetId(), n.GetProjectId())
	})
	return out, err
}

// Update changes a network's name, description and labels, with its
// audit row; nothing else of a network changes.
func Update(ctx context.Context, st *store.Store, id, name, description string, labels map[string]string) (*apiv1.Network, error) {
	return Table.Modify(ctx, st, id, func(n *apiv1.Network) ([]store.Col, string) {
		n.Name, n.Description, n.Labels = name, description, labels
		return nil, n.GetProjectId()
	})
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
	INSERT INTO audit (id, subject, method, request_id, target, project_id)
	SELECT * FROM unnest($13::TEXT[], $14::TEXT[], $15::TEXT[], $16::TEXT[], $17::TEXT[], $18::TEXT[])
), %s
SELECT id, generation, created_at, updated_at FROM net`
