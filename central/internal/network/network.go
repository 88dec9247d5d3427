// Package network is the network aggregate: the only writer of networks,
// prefixes and ips. It creates super, underlay and external networks,
// cuts child networks and hands out and releases IPs, and takes and
// releases a machine's addresses at allocation and free, over ipam's
// pools. Concurrent calls that take from the same pool run as one batch
// (store.Combiner): a lone call is a batch of one, so one call and many
// take the same steps. The callers validate requests and map errors.
package network

import (
	"context"
	"fmt"
	"log/slog"
	"math/big"
	"net/netip"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Networks is the network aggregate over the store. One serves a whole
// process: its batches combine the process's concurrent calls, and its
// cache holds the networks IP calls have read.
type Networks struct {
	st  *store.Store
	log *slog.Logger
	// ips combines next-free IP calls of one prefix, children child
	// network calls of one parent (see ip.go and child.go).
	ips      *store.Combiner[ipKey, ipReq, *apiv1.IP]
	children *store.Combiner[childKey, childReq, *apiv1.Network]
	cache    *cache
}

// New returns the network aggregate. log hears of batches that failed and
// left their calls to run one by one; nil discards that.
func New(st *store.Store, log *slog.Logger) *Networks {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ns := &Networks{st: st, log: log, cache: newCache()}
	ns.ips = store.NewCombiner(ipBatchSize, ipBatchesPerPool, ns.runIPBatch)
	ns.children = store.NewCombiner(childBatchSize, childBatchesPerParent, ns.runChildBatch)
	return ns
}

// IPBatchStats says how many shared statements next-free IP calls ran and
// how many calls they served.
func (ns *Networks) IPBatchStats() (batches, calls int64) { return ns.ips.Stats() }

// ChildBatchStats says how many shared transactions child network calls
// ran and how many calls they served.
func (ns *Networks) ChildBatchStats() (batches, calls int64) { return ns.children.Stats() }

// Error is a failure that concerns another network than the object a
// call writes: reading the network an IP is to come from or the super
// network a child is to be cut from (Read), or cutting a child from a
// super network the caller may not have named. Callers report it under
// that network's name.
type Error struct {
	// Network is the network's id; "" when listing a partition's super
	// networks failed.
	Network string
	Read    bool
	Err     error
}

func (e *Error) Error() string {
	if e.Network == "" {
		return "networks: " + e.Err.Error()
	}
	return "network " + e.Network + ": " + e.Err.Error()
}

// Unwrap keeps errors.Is working on the cause.
func (e *Error) Unwrap() error { return e.Err }

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

// EnsureVRFPool makes the pool of VRF ids that child networks take from,
// first to last, unless it exists: central makes it at start, and a pool
// made before keeps its range.
func (ns *Networks) EnsureVRFPool(ctx context.Context, first, last uint32) error {
	return ns.st.Tx(ctx, func(tx pgx.Tx) error {
		return ipam.EnsurePool(ctx, tx, ipam.VRFPoolID, ipam.KindVRF, big.NewInt(int64(first)), big.NewInt(int64(last)))
	})
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
func (ns *Networks) Create(ctx context.Context, n *apiv1.Network, prefixes []netip.Prefix) (*apiv1.Network, error) {
	var out *apiv1.Network
	// Serializable: the overlap check reads what concurrent creates write.
	err := ns.st.SerializableTx(ctx, func(tx pgx.Tx) error {
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

// Delete frees the network's prefixes and VRF. IPs and child networks must
// go first; the foreign keys back the explicit checks up under concurrency.
func (ns *Networks) Delete(ctx context.Context, id string) (*apiv1.Network, error) {
	// The cache drops the network whether or not the delete succeeds: a
	// reread costs one query, serving from a row known gone a retry.
	defer ns.cache.forget(id)
	var out *apiv1.Network
	err := ns.st.Tx(ctx, func(tx pgx.Tx) error {
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
func (ns *Networks) Update(ctx context.Context, id, name, description string, labels map[string]string) (*apiv1.Network, error) {
	// IP calls read nothing Update changes, but a cached copy should not
	// outlive a change this process made.
	defer ns.cache.forget(id)
	return Table.Modify(ctx, ns.st, id, func(n *apiv1.Network) ([]store.Col, string) {
		n.Name, n.Description, n.Labels = name, description, labels
		return nil, n.GetProjectId()
	})
}

// List returns the networks of a partition, project and type; an empty
// partition or project and an unspecified type match every network.
func (ns *Networks) List(ctx context.Context, partition, project string, typ apiv1.NetworkType) ([]*apiv1.Network, error) {
	return Table.List(ctx, ns.st.Pool(),
		"($1 = '' OR partition_id = $1) AND ($2 = '' OR project_id = $2) AND ($3 = '' OR type = $3)",
		partition, project, TypeNames[typ])
}

// Usage counts the free and used units of the network's pools: its
// addresses, or a super network's child prefixes.
func (ns *Networks) Usage(ctx context.Context, n *apiv1.Network) (*apiv1.NetworkUsage, error) {
	prefixes, err := Prefixes(ctx, ns.st.Pool(), n)
	if err != nil {
		return nil, err
	}
	total := map[int][2]*big.Int{4: {new(big.Int), new(big.Int)}, 6: {new(big.Int), new(big.Int)}}
	for _, p := range prefixes {
		pool := p.IPPool
		if pool == "" {
			pool = p.ChildPool
		}
		size, free, err := ipam.Usage(ctx, ns.st.Pool(), pool)
		if err != nil {
			return nil, err
		}
		t := total[ipam.Family(p.CIDR)]
		t[0].Add(t[0], free)
		t[1].Add(t[1], size.Sub(size, free))
	}
	return &apiv1.NetworkUsage{
		Ipv4Available: total[4][0].String(), Ipv4Used: total[4][1].String(),
		Ipv6Available: total[6][0].String(), Ipv6Used: total[6][1].String(),
	}, nil
}
