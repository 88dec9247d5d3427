package network

import (
	"context"
	"errors"
	"fmt"
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

// IPs reads ips as stored; only this package writes them. machine_id
// comes from its column, the one truth that allocation sets and freeing a
// machine clears; a machineId copied into spec is never shown.
var IPs = store.Table[*apiv1.IP]{Name: "ips", Key: "ip", New: func() *apiv1.IP { return &apiv1.IP{} },
	Spec: `CASE WHEN machine_id IS NULL THEN spec - 'machineId' ELSE spec || jsonb_build_object('machineId', machine_id) END`}

// IPTypeNames are the ips.type column's values.
var IPTypeNames = map[apiv1.IPType]string{
	apiv1.IPType_IP_TYPE_EPHEMERAL: "ephemeral",
	apiv1.IPType_IP_TYPE_STATIC:    "static",
}

// AllocateIP records ip with an address of its network (ip.NetworkId):
// want, or the next free address of family fam (IPv4 first when fam is
// 0), with its audit row. The next free address is the common case: one
// statement takes it from the family's first prefix, records and audits
// it, shared with the calls for the same prefix waiting at the same time
// (a lone call is a batch of one). What that statement cannot serve, and
// a wanted address, runs as a transaction of its own, which waits for
// locks, tries the network's other prefixes and reports the call's own
// error. A failure to read the network comes as *Error.
func (ns *Networks) AllocateIP(ctx context.Context, ip *apiv1.IP, want netip.Addr, fam int) (*apiv1.IP, error) {
	id := ip.GetNetworkId()
	if !want.IsValid() {
		if n, cached := ns.cache.get(id); cached {
			if err := checkIPNetwork(n, ip.GetProjectId()); err != nil {
				return nil, err
			}
			out, ok, err := ns.allocateNext(ctx, n, ip, fam)
			if err != nil || ok {
				return out, err
			}
			// Not served: the transactional path below, on a fresh read.
			ns.cache.forget(id)
		}
	}
	n, err := Table.Get(ctx, ns.st.Pool(), id)
	if err != nil {
		return nil, &Error{Network: id, Read: true, Err: err}
	}
	if err := checkIPNetwork(n, ip.GetProjectId()); err != nil {
		return nil, err
	}
	if !want.IsValid() {
		ns.cache.remember(n)
		out, ok, err := ns.allocateNext(ctx, n, ip, fam)
		if err != nil || ok {
			return out, err
		}
	}
	return ns.allocateIP(ctx, n, ip, want, fam)
}

// checkIPNetwork refuses networks IPs do not come from; project is the
// IP's.
func checkIPNetwork(n *apiv1.Network, project string) error {
	switch {
	case n.GetType() == apiv1.NetworkType_NETWORK_TYPE_CHILD && n.GetProjectId() != project:
		// Another project's network: answer as if it did not exist.
		return status.Errorf(codes.NotFound, "network %s not found", auth.Quote(n.GetId()))
	case n.GetType() == apiv1.NetworkType_NETWORK_TYPE_SUPER || n.GetType() == apiv1.NetworkType_NETWORK_TYPE_UNDERLAY:
		return status.Errorf(codes.FailedPrecondition, "network %q is a %s network: IPs come from child or external networks", n.GetId(), TypeNames[n.GetType()])
	}
	return nil
}

// ipBatchSize caps how many next-free calls for one pool share a statement;
// ipBatchesPerPool caps how many such statements run at once per pool. A
// child network's pool has ipam.FewShards ranges, so at most that many
// statements can each lock a range of their own.
const (
	ipBatchSize      = 64
	ipBatchesPerPool = ipam.FewShards
)

// ipKey names what a batch's calls share: the network (id and
// created_at: the row it was read from) and the prefix whose pool they
// take from.
type ipKey struct {
	network string
	created time.Time
	prefix  netip.Prefix
}

// ipReq is one next-free call: the IP to record (without its address)
// and its audit row.
type ipReq struct {
	ip      *apiv1.IP
	spec    []byte
	call    *auth.Call
	auditID string
}

// allocateNext hands ip the next free address of the family's first
// prefix of n through the batch of its key (ns.ips). ok is false when
// that batch did not serve this call; the caller then runs the full
// transaction.
func (ns *Networks) allocateNext(ctx context.Context, n *apiv1.Network, ip *apiv1.IP, fam int) (*apiv1.IP, bool, error) {
	// The pool of a prefix is named after it, so the network's own prefix
	// list tells the pool without another round trip.
	var prefixes []Prefix
	for _, c := range n.GetPrefixes() {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, false, fmt.Errorf("network %s has a bad prefix %q: %w", n.GetId(), c, err)
		}
		prefixes = append(prefixes, Prefix{CIDR: p, IPPool: ipam.IPPoolID(p)})
	}
	if fam == 0 {
		fam = defaultFamily(prefixes)
	}
	var pr *Prefix
	for i := range prefixes {
		if ipam.Family(prefixes[i].CIDR) == fam {
			pr = &prefixes[i]
			break
		}
	}
	call := auth.CallFrom(ctx)
	if pr == nil || call == nil {
		return nil, false, nil
	}
	spec, err := store.EncodeSpec(ip)
	if err != nil {
		return nil, false, err
	}
	key := ipKey{network: n.GetId(), created: n.GetMeta().GetCreatedAt().AsTime(), prefix: pr.CIDR.Masked()}
	out, err := ns.ips.Do(ctx, key, ipReq{ip: ip, spec: spec, call: call, auditID: uuid.NewString()})
	if err != nil || out == nil {
		return nil, false, err
	}
	return out, true, nil
}

// runIPBatch hands out the next free addresses of key's prefix to reqs in
// one statement (allocateIPs). A call it leaves without an IP takes the
// transactional path on its own.
func (ns *Networks) runIPBatch(ctx context.Context, key ipKey, reqs []ipReq) []store.Outcome[*apiv1.IP] {
	outs := make([]store.Outcome[*apiv1.IP], len(reqs))
	for i, ip := range ns.allocateIPs(ctx, key, reqs) {
		outs[i].Val = ip
	}
	return outs
}

// takeAddress takes want, or the next free address of family fam (IPv4 first
// when fam is 0), from the network's prefixes.
func takeAddress(ctx context.Context, tx pgx.Tx, prefixes []Prefix, want netip.Addr, fam int) (netip.Addr, string, error) {
	if want.IsValid() {
		for _, p := range prefixes {
			if p.CIDR.Contains(want) {
				err := ipam.AcquireSpecific(ctx, tx, p.IPPool, ipam.AddrUnit(want))
				if errors.Is(err, ipam.ErrTaken) {
					return want, "", status.Errorf(codes.AlreadyExists, "ip %s is already allocated", want)
				}
				if errors.Is(err, ipam.ErrOutOfRange) {
					return want, "", status.Errorf(codes.InvalidArgument, "ip %s is the network or broadcast address of %s", want, p.CIDR)
				}
				return want, p.IPPool, err
			}
		}
		return want, "", status.Errorf(codes.InvalidArgument, "ip %s is not inside the network's prefixes", want)
	}
	if fam == 0 {
		fam = defaultFamily(prefixes)
	}
	has := false
	for _, p := range prefixes {
		if ipam.Family(p.CIDR) != fam {
			continue
		}
		has = true
		u, err := ipam.Acquire(ctx, tx, p.IPPool)
		if errors.Is(err, ipam.ErrExhausted) {
			continue
		}
		if err != nil {
			return netip.Addr{}, "", err
		}
		return ipam.UnitAddr(u, fam == 4), p.IPPool, nil
	}
	if !has {
		return netip.Addr{}, "", status.Errorf(codes.FailedPrecondition, "network has no IPv%d prefix", fam)
	}
	return netip.Addr{}, "", status.Errorf(codes.ResourceExhausted, "no free IPv%d address left in the network", fam)
}

// defaultFamily is IPv4 when the network has an IPv4 prefix, else IPv6.
func defaultFamily(prefixes []Prefix) int {
	for _, p := range prefixes {
		if p.CIDR.Addr().Is4() {
			return 4
		}
	}
	return 6
}

// allocateIP takes want, or the next free address of family fam (IPv4
// first when fam is 0), from any of n's prefixes for ip, and writes it
// with its audit row: one call alone, waiting for locks.
func (ns *Networks) allocateIP(ctx context.Context, n *apiv1.Network, ip *apiv1.IP, want netip.Addr, fam int) (*apiv1.IP, error) {
	var out *apiv1.IP
	typ := ip.GetType()
	err := ns.st.Tx(ctx, func(tx pgx.Tx) error {
		prefixes, err := Prefixes(ctx, tx, n)
		if err != nil {
			return err
		}
		addr, pool, err := takeAddress(ctx, tx, prefixes, want, fam)
		if err != nil {
			return err
		}
		ip.Ip = addr.String()
		out, err = IPs.Insert(ctx, tx, ip.GetIp(), ip,
			store.Col{Name: "pool_id", Val: pool}, store.Col{Name: "unit", Val: ipam.AddrUnit(addr).String()}, store.Col{Name: "network_id", Val: n.GetId()},
			store.Col{Name: "project_id", Val: ip.GetProjectId()}, store.Col{Name: "type", Val: IPTypeNames[typ]})
		if err != nil {
			return err
		}
		return store.Audit(ctx, tx, "ip/"+ip.GetIp(), ip.GetProjectId())
	})
	return out, err
}

// allocateIPs hands out the next free addresses of key's prefix (of
// key's network row, which the caller read) to reqs in one statement that
// writes every call's IP row and audit row. A call it leaves without an
// IP (nil: the range it locked had fewer units left, every range is
// locked, the pool is exhausted, the offset does not fit BIGINT, the
// network row is gone, or the statement failed, e.g. because one call's
// project is gone) takes allocateIP on its own, which waits for locks,
// tries the network's other prefixes and reports the call's own error.
func (ns *Networks) allocateIPs(ctx context.Context, key ipKey, reqs []ipReq) []*apiv1.IP {
	outs := make([]*apiv1.IP, len(reqs))
	cols := make([][]string, 7)
	for i := range cols {
		cols[i] = make([]string, len(reqs))
	}
	for i, r := range reqs {
		cols[0][i] = string(r.spec)
		cols[1][i] = r.ip.GetProjectId()
		cols[2][i] = IPTypeNames[r.ip.GetType()]
		cols[3][i] = r.auditID
		cols[4][i] = r.call.Principal.TokenID
		cols[5][i] = r.call.Method
		cols[6][i] = r.call.RequestID
	}
	base := key.prefix.Masked().Addr()
	pool := ipam.IPPoolID(key.prefix)
	rows, err := ipam.TakeInto(ctx, ns.st.Pool(), pool, len(reqs), allocateBatchGuard, allocateBatchSQL, []any{
		cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6],
		base.String(), ipam.AddrUnit(base).String(), key.network, key.created, pool})
	if err != nil {
		return outs
	}
	defer rows.Close()
	type served struct {
		ord              int64
		ip               string
		gen              int64
		created, updated time.Time
	}
	var got []served
	for rows.Next() {
		var s served
		if err := rows.Scan(&s.ord, &s.ip, &s.gen, &s.created, &s.updated); err != nil {
			return outs
		}
		got = append(got, s)
	}
	if rows.Err() != nil {
		// Nothing was committed: a statement that fails changes nothing.
		return outs
	}
	for _, s := range got {
		if s.ord < 1 || int(s.ord) > len(reqs) {
			continue
		}
		out := proto.Clone(reqs[s.ord-1].ip).(*apiv1.IP)
		out.Ip = s.ip
		store.SetMeta(out, &apiv1.Meta{CreatedAt: timestamppb.New(s.created), UpdatedAt: timestamppb.New(s.updated), Generation: uint64(s.gen)})
		outs[s.ord-1] = out
	}
	return outs
}

// ListIPs returns the IPs of a project and network; an empty project or
// network matches every one.
func (ns *Networks) ListIPs(ctx context.Context, project, network string) ([]*apiv1.IP, error) {
	return IPs.List(ctx, ns.st.Pool(), "($1 = '' OR project_id = $1) AND ($2 = '' OR network_id = $2)", project, network)
}

// UpdateIP changes an IP's name, description, labels and, unless typ is
// unspecified, its type, with its audit row.
func (ns *Networks) UpdateIP(ctx context.Context, addr, name, description string, labels map[string]string, typ apiv1.IPType) (*apiv1.IP, error) {
	return IPs.Modify(ctx, ns.st, addr, func(ip *apiv1.IP) ([]store.Col, string) {
		ip.Name, ip.Description, ip.Labels = name, description, labels
		if typ != apiv1.IPType_IP_TYPE_UNSPECIFIED {
			ip.Type = typ
		}
		return []store.Col{{Name: "type", Val: IPTypeNames[ip.GetType()]}}, ip.GetProjectId()
	})
}

// ReleaseIP gives an IP that no machine holds back to its pool, with its
// audit row. asked is the address as the caller wrote it, for errors.
func (ns *Networks) ReleaseIP(ctx context.Context, addr, asked string) (*apiv1.IP, error) {
	var out *apiv1.IP
	err := ns.st.Tx(ctx, func(tx pgx.Tx) error {
		var pool, unit string
		var machine *string
		if err := tx.QueryRow(ctx, `SELECT pool_id, unit::TEXT, machine_id FROM ips WHERE ip = $1 FOR UPDATE`, addr).Scan(&pool, &unit, &machine); err != nil {
			return err
		}
		if machine != nil && *machine != "" {
			return status.Errorf(codes.FailedPrecondition, "ip %s is attached to machine %q", asked, *machine)
		}
		var err error
		if out, err = IPs.Delete(ctx, tx, addr); err != nil {
			return err
		}
		if err := ipam.Release(ctx, tx, pool, mustUnit(unit)); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "ip/"+out.GetIp(), out.GetProjectId())
	})
	return out, err
}

// allocateBatchSQL follows ipam.TakeInto's "taken (unit, ord)": the ord-th
// call of the batch ($1..$7, arrays in call order) gets the ord-th unit. The
// address text comes from PostgreSQL's host(), computed from the prefix base
// ($8, $9), which formats IPv6 the RFC 5952 way, as net/netip does; $10 is
// the network, $12 the pool the units come from. Every call's IP row and
// audit row are written by this one statement, so either all of them are
// or none.
const allocateBatchSQL = `, req AS (
	SELECT * FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[])
		WITH ORDINALITY AS r (spec, project_id, type, audit_id, subject, method, request_id, ord)
), addr AS (
	SELECT host($8::INET + (t.unit - $9::NUMERIC)::BIGINT) AS ip, t.unit, r.*
	FROM taken t JOIN req r ON r.ord = t.ord
), ins AS (
	INSERT INTO ips (ip, spec, pool_id, unit, network_id, project_id, type)
	SELECT ip, jsonb_set(spec::JSONB, '{ip}', to_jsonb(ip)), $12::TEXT, unit, $10, project_id, type FROM addr
	RETURNING ip, generation, created_at, updated_at
), aud AS (
	` + store.AuditInsert + `
	SELECT audit_id, subject, method, request_id, 'ip/' || ip, project_id FROM addr
)
SELECT a.ord, i.ip, i.generation, i.created_at, i.updated_at FROM ins i JOIN addr a ON a.ip = i.ip`

// allocateBatchGuard lets the statement take addresses only while the
// network row the caller read ($10, $11) still exists: the network may have
// come from the cache.
const allocateBatchGuard = `EXISTS (SELECT 1 FROM networks WHERE id = $10 AND created_at = $11)`
