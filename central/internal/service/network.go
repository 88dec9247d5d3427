package service

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"strings"
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

type networkService struct {
	*API
	apiv1.UnimplementedNetworkServiceServer
}

var networks = store.Table[*apiv1.Network]{Name: "networks", New: func() *apiv1.Network { return &apiv1.Network{} }}

var networkTypeNames = map[apiv1.NetworkType]string{
	apiv1.NetworkType_NETWORK_TYPE_SUPER:    "super",
	apiv1.NetworkType_NETWORK_TYPE_CHILD:    "child",
	apiv1.NetworkType_NETWORK_TYPE_UNDERLAY: "underlay",
	apiv1.NetworkType_NETWORK_TYPE_EXTERNAL: "external",
}

// prefixRow is one prefix of a network with its pools.
type prefixRow struct {
	prefix    netip.Prefix
	ipPool    string
	childPool string
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func networkCols(n *apiv1.Network) []store.Col {
	var vrf any
	if n.GetVrf() != 0 {
		vrf = int64(n.GetVrf())
	}
	return []store.Col{
		{Name: "type", Val: networkTypeNames[n.GetType()]},
		{Name: "partition_id", Val: nullable(n.GetPartitionId())},
		{Name: "project_id", Val: nullable(n.GetProjectId())},
		{Name: "parent_id", Val: nullable(n.GetParentId())},
		{Name: "vrf", Val: vrf},
	}
}

// maxVNI is the largest VXLAN network identifier (24 bits); a network's VRF
// id is its VNI on the switches.
const maxVNI = 1<<24 - 1

func (s *networkService) validateCreate(n *apiv1.Network) ([]netip.Prefix, error) {
	var v violations
	if n == nil {
		v.add("network", "required")
		return nil, v.err()
	}
	v.id("network.id", n.GetId())
	v.text("network.name", n.GetName(), 128)
	v.text("network.description", n.GetDescription(), 1024)
	v.labels("network.labels", n.GetLabels())
	switch n.GetType() {
	case apiv1.NetworkType_NETWORK_TYPE_SUPER, apiv1.NetworkType_NETWORK_TYPE_UNDERLAY:
		v.id("network.partition_id", n.GetPartitionId())
	case apiv1.NetworkType_NETWORK_TYPE_EXTERNAL:
		v.optionalID("network.partition_id", n.GetPartitionId())
	case apiv1.NetworkType_NETWORK_TYPE_CHILD:
		v.add("network.type", "child networks are made with Allocate")
	default:
		v.add("network.type", "required: super, underlay or external")
	}
	if n.GetProjectId() != "" || n.GetParentId() != "" {
		v.add("network.project_id", "only child networks have a project and parent")
	}
	if len(n.GetPrefixes()) == 0 {
		v.add("network.prefixes", "at least one prefix is required")
	}
	var out []netip.Prefix
	fams := map[int]bool{}
	for i, ps := range n.GetPrefixes() {
		p, ok := v.prefix(fieldIndex("network.prefixes", i), ps)
		if !ok {
			continue
		}
		for j, q := range out {
			if ipam.Overlaps(p, q) {
				v.add(fieldIndex("network.prefixes", i), "overlaps network.prefixes[%d]", j)
			}
		}
		fams[ipam.Family(p)] = true
		out = append(out, p)
	}
	if n.GetType() == apiv1.NetworkType_NETWORK_TYPE_SUPER {
		for _, f := range []struct {
			fam   int
			field string
			l     uint32
		}{{4, "network.child_prefix_length_ipv4", n.GetChildPrefixLengthIpv4()}, {6, "network.child_prefix_length_ipv6", n.GetChildPrefixLengthIpv6()}} {
			switch {
			case fams[f.fam] && f.l == 0:
				v.add(f.field, "required for a super network with IPv%d prefixes", f.fam)
			case !fams[f.fam] && f.l != 0:
				v.add(f.field, "set but the network has no IPv%d prefix", f.fam)
			}
			for _, p := range out {
				if ipam.Family(p) != f.fam || f.l == 0 {
					continue
				}
				if _, err := ipam.ChildSlots(p, int(f.l)); err != nil {
					v.add(f.field, "%v", err)
				}
			}
		}
	} else if n.GetChildPrefixLengthIpv4() != 0 || n.GetChildPrefixLengthIpv6() != 0 {
		v.add("network.child_prefix_length_ipv4", "only super networks have child prefix lengths")
	}
	if n.GetVrf() != 0 && n.GetType() == apiv1.NetworkType_NETWORK_TYPE_SUPER {
		v.add("network.vrf", "super networks have no VRF; their child networks get one each")
	}
	if n.GetVrf() > maxVNI {
		v.add("network.vrf", "must be at most %d: a VRF id is the network's 24-bit VXLAN VNI", maxVNI)
	} else if n.GetVrf() >= s.cfg.VRFFirst && n.GetVrf() <= s.cfg.VRFLast {
		v.add("network.vrf", "%d lies in the range central hands to child networks (%d-%d)", n.GetVrf(), s.cfg.VRFFirst, s.cfg.VRFLast)
	}
	return out, v.err()
}

func (s *networkService) Create(ctx context.Context, req *apiv1.NetworkServiceCreateRequest) (*apiv1.NetworkServiceCreateResponse, error) {
	n := req.GetNetwork()
	prefixes, err := s.validateCreate(n)
	if err != nil {
		return nil, err
	}
	n.Usage = nil
	var out *apiv1.Network
	// Serializable: the overlap check reads what concurrent creates write.
	err = s.store.SerializableTx(ctx, func(tx pgx.Tx) error {
		if err := checkNoOverlap(ctx, tx, prefixes); err != nil {
			return err
		}
		var err error
		if out, err = networks.Insert(ctx, tx, n.GetId(), n, networkCols(n)...); err != nil {
			return err
		}
		for _, p := range prefixes {
			if err := insertPrefix(ctx, tx, n, p, "", nil); err != nil {
				return err
			}
		}
		return store.Audit(ctx, tx, "network/"+n.GetId(), "")
	})
	if err != nil {
		return nil, toStatus(err, "network "+quote(n.GetId()))
	}
	return &apiv1.NetworkServiceCreateResponse{Network: out}, nil
}

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
		VALUES ($1, $2, $3, $4, $5, $6, $7::NUMERIC)`, p.String(), n.GetId(), ipam.Family(p), ipPool, childPool, nullable(parentPool), pu)
	if err != nil {
		return fmt.Errorf("insert prefix %s: %w", p, err)
	}
	return nil
}

// networkPrefixes lists a network's prefixes in the order they were given.
func networkPrefixes(ctx context.Context, db store.Querier, n *apiv1.Network) ([]prefixRow, error) {
	rows, err := db.Query(ctx, `SELECT cidr, COALESCE(ip_pool, ''), COALESCE(child_pool, '') FROM prefixes WHERE network_id = $1`, n.GetId())
	if err != nil {
		return nil, fmt.Errorf("read prefixes of %s: %w", n.GetId(), err)
	}
	defer rows.Close()
	byCIDR := map[string]prefixRow{}
	for rows.Next() {
		var c, ip, child string
		if err := rows.Scan(&c, &ip, &child); err != nil {
			return nil, err
		}
		byCIDR[c] = prefixRow{prefix: netip.MustParsePrefix(c), ipPool: ip, childPool: child}
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var out []prefixRow
	for _, c := range n.GetPrefixes() {
		if r, ok := byCIDR[c]; ok {
			out = append(out, r)
		}
	}
	return out, nil
}

func (s *networkService) Allocate(ctx context.Context, req *apiv1.NetworkServiceAllocateRequest) (*apiv1.NetworkServiceAllocateResponse, error) {
	var v violations
	v.uuid("project_id", req.GetProjectId())
	v.id("partition_id", req.GetPartitionId())
	v.optionalID("parent_id", req.GetParentId())
	v.text("name", req.GetName(), 128)
	v.text("description", req.GetDescription(), 1024)
	v.labels("labels", req.GetLabels())
	want := map[int]bool{}
	for i, f := range req.GetAddressFamilies() {
		switch strings.ToLower(f) {
		case "ipv4", "4":
			want[4] = true
		case "ipv6", "6":
			want[6] = true
		default:
			v.add(fieldIndex("address_families", i), "must be ipv4 or ipv6")
		}
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	if call := auth.CallFrom(ctx); call != nil {
		key := childBatchKey{partition: req.GetPartitionId(), parent: req.GetParentId(), v4: want[4], v6: want[6]}
		out, err := s.childBatches.Do(ctx, key, childBatchReq{req: req, call: call, id: uuid.NewString()})
		if err != nil {
			return nil, err
		}
		if out != nil {
			return &apiv1.NetworkServiceAllocateResponse{Network: out}, nil
		}
		// The batch failed: this call on its own, which reports its own error.
	}
	parent, err := s.findParent(ctx, req.GetPartitionId(), req.GetParentId())
	if err != nil {
		return nil, err
	}
	child := &apiv1.Network{
		Id:          uuid.NewString(),
		Name:        req.GetName(),
		Description: req.GetDescription(),
		Type:        apiv1.NetworkType_NETWORK_TYPE_CHILD,
		PartitionId: parent.GetPartitionId(),
		ProjectId:   req.GetProjectId(),
		ParentId:    parent.GetId(),
		Labels:      req.GetLabels(),
	}
	var out *apiv1.Network
	err = s.store.Tx(ctx, func(tx pgx.Tx) error {
		parentPrefixes, err := networkPrefixes(ctx, tx, parent)
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
				if ipam.Family(pp.prefix) != fam {
					continue
				}
				has = true
				slot, err := ipam.Acquire(ctx, tx, pp.childPool)
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
				cur = &carved{ipam.ChildPrefix(pp.prefix, int(l), slot), pp.childPool, slot}
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
		if out, err = networks.Insert(ctx, tx, child.GetId(), child, networkCols(child)...); err != nil {
			return err
		}
		for _, c := range got {
			if err := insertPrefix(ctx, tx, child, c.p, c.pool, c.slot); err != nil {
				return err
			}
		}
		return store.Audit(ctx, tx, "network/"+child.GetId(), child.GetProjectId())
	})
	if err != nil {
		return nil, toStatus(err, "child network of "+quote(parent.GetId()))
	}
	return &apiv1.NetworkServiceAllocateResponse{Network: out}, nil
}

// childBatchSize and childBatchesPerParent bound the batches of
// concurrent Allocate calls (see store.Combiner): calls for the same
// partition, parent and families share one transaction.
const (
	childBatchSize        = 64
	childBatchesPerParent = 4
)

type childBatchKey struct {
	partition string
	parent    string
	v4, v6    bool // requested families; none: every family of the parent
}

type childBatchReq struct {
	req  *apiv1.NetworkServiceAllocateRequest
	call *auth.Call
	id   string // the new network's id
}

// childBatches combines concurrent child network allocations: one batch
// finds the parent once and, in one transaction, takes its calls' VRF ids
// and child prefixes with one statement per pool (ipam.AcquireMany) and
// writes all their network, pool, prefix and audit rows with one statement
// per table. A batch that fails (a pool ran out, a project vanished, a
// conflict) leaves no trace, and its calls go the single-call way, each
// getting its own answer.
type childBatches = store.Combiner[childBatchKey, childBatchReq, *apiv1.Network]

// runChildBatch returns each call's network, or nil when the call must run
// on its own; an error only when findParent refuses, which every call of
// the key would hear alike.
func (a *API) runChildBatch(ctx context.Context, key childBatchKey, reqs []childBatchReq) []store.Outcome[*apiv1.Network] {
	outs := make([]store.Outcome[*apiv1.Network], len(reqs))
	s := &networkService{API: a}
	parent, err := s.findParent(ctx, key.partition, key.parent)
	if err != nil {
		for i := range outs {
			outs[i].Err = err
		}
		return outs
	}
	nets, err := s.allocateChildren(ctx, parent, key.v4, key.v6, reqs)
	if err != nil {
		if s.log != nil {
			s.log.Debug("child network batch failed, allocating one by one", "calls", len(reqs), "err", err)
		}
		return outs
	}
	for i := range outs {
		outs[i].Val = nets[i]
	}
	return outs
}

// allocateChildrenSQL writes a batch's child networks, their address pools
// (ipam.CreatePoolsCTE, parameters from $20 on), their prefixes (each
// pinning its parent slot) and their audit rows in one statement.
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

// allocateChildren does what Allocate does for one call, for all of reqs
// in one transaction: one round trip takes every call's VRF id and the
// child slots of each family's first super prefix (more only when a range
// or prefix runs short), one statement writes all rows.
func (s *networkService) allocateChildren(ctx context.Context, parent *apiv1.Network, v4, v6 bool, reqs []childBatchReq) ([]*apiv1.Network, error) {
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
	err := s.store.Tx(ctx, func(tx pgx.Tx) error {
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
				Id:          r.id,
				Name:        r.req.GetName(),
				Description: r.req.GetDescription(),
				Type:        apiv1.NetworkType_NETWORK_TYPE_CHILD,
				PartitionId: parent.GetPartitionId(),
				ProjectId:   r.req.GetProjectId(),
				ParentId:    parent.GetId(),
				Labels:      r.req.GetLabels(),
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
			call := reqs[i].call
			aIDs, subjects = append(aIDs, uuid.NewString()), append(subjects, call.Principal.TokenID)
			methods, requestIDs = append(methods, call.Method), append(requestIDs, call.RequestID)
			targets = append(targets, "network/"+c.GetId())
		}
		poolsCTE, poolArgs, err := ipam.CreatePoolsCTE(pools, 19)
		if err != nil {
			return err
		}
		rows, err := tx.Query(ctx, fmt.Sprintf(allocateChildrenSQL, poolsCTE), append([]any{
			parent.GetPartitionId(), parent.GetId(), ids, projects, vrfCol, specs,
			cidrs, netIDs, famCol, ipPools, parentPools, parentUnits,
			aIDs, subjects, methods, requestIDs, targets, projects,
		}, poolArgs...)...)
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

// findParent picks the super network children are cut from.
func (s *networkService) findParent(ctx context.Context, partition, parentID string) (*apiv1.Network, error) {
	if parentID != "" {
		p, err := fetch(ctx, s.API, networks, parentID)
		if err != nil {
			return nil, err
		}
		if p.GetType() != apiv1.NetworkType_NETWORK_TYPE_SUPER {
			return nil, status.Errorf(codes.FailedPrecondition, "network %s is not a super network", quote(parentID))
		}
		if p.GetPartitionId() != partition {
			return nil, status.Errorf(codes.FailedPrecondition, "super network %s is in partition %s, not %s", quote(parentID), quote(p.GetPartitionId()), quote(partition))
		}
		return p, nil
	}
	supers, err := networks.List(ctx, s.store.Pool(), "type = 'super' AND partition_id = $1", partition)
	if err != nil {
		return nil, toStatus(err, "networks")
	}
	switch len(supers) {
	case 0:
		return nil, status.Errorf(codes.FailedPrecondition, "partition %s has no super network", quote(partition))
	case 1:
		return supers[0], nil
	}
	return nil, status.Errorf(codes.FailedPrecondition, "partition %s has %d super networks: name one with parent_id", quote(partition), len(supers))
}

func (s *networkService) Get(ctx context.Context, req *apiv1.NetworkServiceGetRequest) (*apiv1.NetworkServiceGetResponse, error) {
	n, err := fetch(ctx, s.API, networks, req.GetId())
	if err != nil {
		return nil, err
	}
	if err := s.fillUsage(ctx, n); err != nil {
		return nil, toStatus(err, "network "+quote(req.GetId()))
	}
	return &apiv1.NetworkServiceGetResponse{Network: n}, nil
}

// fillUsage counts free and used units of the network's pools.
func (s *networkService) fillUsage(ctx context.Context, n *apiv1.Network) error {
	prefixes, err := networkPrefixes(ctx, s.store.Pool(), n)
	if err != nil {
		return err
	}
	total := map[int][2]*big.Int{4: {new(big.Int), new(big.Int)}, 6: {new(big.Int), new(big.Int)}}
	for _, p := range prefixes {
		pool := p.ipPool
		if pool == "" {
			pool = p.childPool
		}
		size, free, err := ipam.Usage(ctx, s.store.Pool(), pool)
		if err != nil {
			return err
		}
		t := total[ipam.Family(p.prefix)]
		t[0].Add(t[0], free)
		t[1].Add(t[1], size.Sub(size, free))
	}
	n.Usage = &apiv1.NetworkUsage{
		Ipv4Available: total[4][0].String(), Ipv4Used: total[4][1].String(),
		Ipv6Available: total[6][0].String(), Ipv6Used: total[6][1].String(),
	}
	return nil
}

func (s *networkService) List(ctx context.Context, req *apiv1.NetworkServiceListRequest) (*apiv1.NetworkServiceListResponse, error) {
	var typ string
	if req.GetType() != apiv1.NetworkType_NETWORK_TYPE_UNSPECIFIED {
		typ = networkTypeNames[req.GetType()]
	}
	all, err := networks.List(ctx, s.store.Pool(),
		"($1 = '' OR partition_id = $1) AND ($2 = '' OR project_id = $2) AND ($3 = '' OR type = $3)",
		req.GetPartitionId(), req.GetProjectId(), typ)
	if err != nil {
		return nil, toStatus(err, "networks")
	}
	out, err := visible(ctx, s.API, all, (*apiv1.Network).GetProjectId, true)
	if err != nil {
		return nil, err
	}
	return &apiv1.NetworkServiceListResponse{Networks: out}, nil
}

func (s *networkService) Update(ctx context.Context, req *apiv1.NetworkServiceUpdateRequest) (*apiv1.NetworkServiceUpdateResponse, error) {
	var v violations
	v.text("name", req.GetName(), 128)
	v.text("description", req.GetDescription(), 1024)
	v.labels("labels", req.GetLabels())
	if err := v.err(); err != nil {
		return nil, err
	}
	out, err := modify(ctx, s.API, networks, req.GetId(), func(n *apiv1.Network) ([]store.Col, string) {
		n.Name, n.Description, n.Labels = req.GetName(), req.GetDescription(), req.GetLabels()
		return nil, n.GetProjectId()
	})
	if err != nil {
		return nil, err
	}
	return &apiv1.NetworkServiceUpdateResponse{Network: out}, nil
}

// Delete frees the network's prefixes and VRF. IPs and child networks must
// go first; the foreign keys back the explicit checks up under concurrency.
func (s *networkService) Delete(ctx context.Context, req *apiv1.NetworkServiceDeleteRequest) (*apiv1.NetworkServiceDeleteResponse, error) {
	var out *apiv1.Network
	err := s.store.Tx(ctx, func(tx pgx.Tx) error {
		n, err := networks.GetForUpdate(ctx, tx, req.GetId())
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
		if out, err = networks.Delete(ctx, tx, n.GetId()); err != nil {
			return err
		}
		if n.GetType() == apiv1.NetworkType_NETWORK_TYPE_CHILD {
			if err := ipam.Release(ctx, tx, ipam.VRFPoolID, big.NewInt(int64(n.GetVrf()))); err != nil {
				return err
			}
		}
		return store.Audit(ctx, tx, "network/"+n.GetId(), n.GetProjectId())
	})
	if err != nil {
		return nil, toStatus(err, "network "+quote(req.GetId()))
	}
	return &apiv1.NetworkServiceDeleteResponse{Network: out}, nil
}
