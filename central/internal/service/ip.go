package service

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"
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

type ipService struct {
	*API
	apiv1.UnimplementedIPServiceServer
}

// ips reads machine_id from its column, the one truth that allocation sets
// and freeing a machine clears; a machineId copied into spec is never shown.
var ips = store.Table[*apiv1.IP]{Name: "ips", Key: "ip", New: func() *apiv1.IP { return &apiv1.IP{} },
	Spec: `CASE WHEN machine_id IS NULL THEN spec - 'machineId' ELSE spec || jsonb_build_object('machineId', machine_id) END`}

var ipTypeNames = map[apiv1.IPType]string{
	apiv1.IPType_IP_TYPE_EPHEMERAL: "ephemeral",
	apiv1.IPType_IP_TYPE_STATIC:    "static",
}

func (s *ipService) Allocate(ctx context.Context, req *apiv1.IPServiceAllocateRequest) (*apiv1.IPServiceAllocateResponse, error) {
	var v violations
	v.uuid("project_id", req.GetProjectId())
	if req.GetNetworkId() == "" {
		v.add("network_id", "required")
	}
	v.text("name", req.GetName(), 128)
	v.text("description", req.GetDescription(), 1024)
	v.labels("labels", req.GetLabels())
	var want netip.Addr
	if req.GetIp() != "" {
		a, err := netip.ParseAddr(req.GetIp())
		if err != nil || a.Zone() != "" {
			v.add("ip", "not an IP address")
		}
		want = a.Unmap()
	}
	fam := 0
	switch strings.ToLower(req.GetAddressFamily()) {
	case "":
	case "ipv4", "4":
		fam = 4
	case "ipv6", "6":
		fam = 6
	default:
		v.add("address_family", "must be ipv4 or ipv6")
	}
	typ := req.GetType()
	if typ == apiv1.IPType_IP_TYPE_UNSPECIFIED {
		typ = apiv1.IPType_IP_TYPE_EPHEMERAL
	}
	if _, ok := ipTypeNames[typ]; !ok {
		v.add("type", "must be ephemeral or static")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	ip := &apiv1.IP{
		ProjectId:   req.GetProjectId(),
		Name:        req.GetName(),
		Description: req.GetDescription(),
		Type:        typ,
		Labels:      req.GetLabels(),
	}
	if !want.IsValid() {
		// The common case: a cached network, one shared statement.
		if n, cached := s.networkCache.get(req.GetNetworkId()); cached {
			if err := checkIPNetwork(n, req); err != nil {
				return nil, err
			}
			ip.NetworkId = n.GetId()
			out, ok, err := s.allocateNext(ctx, n, ip, fam)
			if err != nil {
				return nil, toStatus(err, "ip in network "+quote(n.GetId()))
			}
			if ok {
				return &apiv1.IPServiceAllocateResponse{Ip: out}, nil
			}
			// Not served: the transactional path below, on a fresh read.
			s.networkCache.forget(req.GetNetworkId())
		}
	}
	n, err := fetch(ctx, s.API, networks, req.GetNetworkId())
	if err != nil {
		return nil, err
	}
	if err := checkIPNetwork(n, req); err != nil {
		return nil, err
	}
	ip.NetworkId = n.GetId()
	if !want.IsValid() {
		s.networkCache.remember(n)
		out, ok, err := s.allocateNext(ctx, n, ip, fam)
		if err != nil {
			return nil, toStatus(err, "ip in network "+quote(n.GetId()))
		}
		if ok {
			return &apiv1.IPServiceAllocateResponse{Ip: out}, nil
		}
	}
	var out *apiv1.IP
	err = s.store.Tx(ctx, func(tx pgx.Tx) error {
		prefixes, err := networkPrefixes(ctx, tx, n)
		if err != nil {
			return err
		}
		addr, pool, err := takeAddress(ctx, tx, prefixes, want, fam)
		if err != nil {
			return err
		}
		ip.Ip = addr.String()
		out, err = ips.Insert(ctx, tx, ip.GetIp(), ip,
			store.Col{Name: "pool_id", Val: pool}, store.Col{Name: "unit", Val: ipam.AddrUnit(addr).String()}, store.Col{Name: "network_id", Val: n.GetId()},
			store.Col{Name: "project_id", Val: ip.GetProjectId()}, store.Col{Name: "type", Val: ipTypeNames[typ]})
		if err != nil {
			return err
		}
		return store.Audit(ctx, tx, "ip/"+ip.GetIp(), ip.GetProjectId())
	})
	if err != nil {
		return nil, toStatus(err, "ip in network "+quote(n.GetId()))
	}
	return &apiv1.IPServiceAllocateResponse{Ip: out}, nil
}

// ipBatchSize caps how many next-free calls for one pool share a statement;
// ipBatchesPerPool caps how many such statements run at once per pool. A
// child network's pool has ipam.FewShards ranges, so at most that many
// statements can each lock a range of their own.
const (
	ipBatchSize      = 64
	ipBatchesPerPool = ipam.FewShards
)

// ipBatchKey names what a batch's calls share: the database, the network
// (id and created_at: the row it was read from) and the prefix whose pool
// they take from.
type ipBatchKey struct {
	network string
	created time.Time
	prefix  netip.Prefix
}

// ipBatchReq is one next-free call: the IP to record (without its address)
// and its audit row.
type ipBatchReq struct {
	ip      *apiv1.IP
	spec    []byte
	call    *auth.Call
	auditID string
}

// ipBatchRes is a call's IP, or nil when the batch could not serve it: the
// caller then runs the transactional path on its own.
type ipBatchRes struct{ ip *apiv1.IP }

// ipBatches (a field of API) combines concurrent next-free calls of one
// pool (see store.Combiner): each batch is one statement that takes as many
// addresses as it has calls, from one range, and writes every call's IP row
// and audit row. Calls it cannot serve fall back to the transactional path
// one by one.
type ipBatches = store.Combiner[ipBatchKey, ipBatchReq, ipBatchRes]

// allocateBatchSQL follows ipam.TakeInto's "taken (unit, ord)": the ord-th
// call of the batch ($3..$9, arrays in call order) gets the ord-th unit. The
// address text comes from PostgreSQL's host(), computed from the prefix base
// ($10, $11), which formats IPv6 the RFC 5952 way, as net/netip does. Every
// call's IP row and audit row are written by this one statement, so either
// all of them are or none.
const allocateBatchSQL = `, req AS (
	SELECT * FROM unnest($3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[], $9::TEXT[])
		WITH ORDINALITY AS r (spec, project_id, type, audit_id, subject, method, request_id, ord)
), addr AS (
	SELECT host($10::INET + (t.unit - $11::NUMERIC)::BIGINT) AS ip, t.unit, r.*
	FROM taken t JOIN req r ON r.ord = t.ord
), ins AS (
	INSERT INTO ips (ip, spec, pool_id, unit, network_id, project_id, type)
	SELECT ip, jsonb_set(spec::JSONB, '{ip}', to_jsonb(ip)), $1, unit, $12, project_id, type FROM addr
	RETURNING ip, generation, created_at, updated_at
), aud AS (
	INSERT INTO audit (id, subject, method, request_id, target, project_id)
	SELECT audit_id, subject, method, request_id, 'ip/' || ip, project_id FROM addr
)
SELECT a.ord, i.ip, i.generation, i.created_at, i.updated_at FROM ins i JOIN addr a ON a.ip = i.ip`

// allocateBatchGuard lets the statement take addresses only while the
// network row the caller read ($12, $13) still exists: the network may have
// come from networkCache.
const allocateBatchGuard = `EXISTS (SELECT 1 FROM networks WHERE id = $12 AND created_at = $13)`

// runIPBatch hands out the next free addresses of key's prefix to reqs in
// one statement. Calls it leaves without an IP (the range it locked had
// fewer units left, every range is locked, the pool is exhausted, the
// offset does not fit BIGINT, or the statement failed, e.g. because one
// call's project is gone) take the transactional path on their own, which
// waits for locks, tries the network's other prefixes and reports each
// call's own error.
func (a *API) runIPBatch(ctx context.Context, key ipBatchKey, reqs []ipBatchReq) []store.Outcome[ipBatchRes] {
	outs := make([]store.Outcome[ipBatchRes], len(reqs))
	cols := make([][]string, 7)
	for i := range cols {
		cols[i] = make([]string, len(reqs))
	}
	for i, r := range reqs {
		cols[0][i] = string(r.spec)
		cols[1][i] = r.ip.GetProjectId()
		cols[2][i] = ipTypeNames[r.ip.GetType()]
		cols[3][i] = r.auditID
		cols[4][i] = r.call.Principal.TokenID
		cols[5][i] = r.call.Method
		cols[6][i] = r.call.RequestID
	}
	base := key.prefix.Masked().Addr()
	rows, err := ipam.TakeInto(ctx, a.store.Pool(), ipam.IPPoolID(key.prefix), len(reqs), allocateBatchGuard, allocateBatchSQL,
		cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6],
		base.String(), ipam.AddrUnit(base).String(), key.network, key.created)
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
		outs[s.ord-1].Val.ip = out
	}
	return outs
}

// allocateNext is the common case: the next free address of the family's
// first prefix, taken, recorded and audited by one statement, atomic on its
// own, which it shares with the other calls for the same prefix that are
// waiting at the same time (ipBatches). ok is false when that statement did
// not serve this call; the caller then runs the full transaction, which
// waits for locks, tries the other prefixes and reports exhaustion.
func (s *ipService) allocateNext(ctx context.Context, n *apiv1.Network, ip *apiv1.IP, fam int) (*apiv1.IP, bool, error) {
	// The pool of a prefix is named after it, so the network's own prefix
	// list tells the pool without another round trip.
	var prefixes []prefixRow
	for _, c := range n.GetPrefixes() {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, false, fmt.Errorf("network %s has a bad prefix %q: %w", n.GetId(), c, err)
		}
		prefixes = append(prefixes, prefixRow{prefix: p, ipPool: ipam.IPPoolID(p)})
	}
	if fam == 0 {
		fam = defaultFamily(prefixes)
	}
	var pr *prefixRow
	for i := range prefixes {
		if ipam.Family(prefixes[i].prefix) == fam {
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
	key := ipBatchKey{network: n.GetId(), created: n.GetMeta().GetCreatedAt().AsTime(), prefix: pr.prefix.Masked()}
	res, err := s.ipBatches.Do(ctx, key,
		ipBatchReq{ip: ip, spec: spec, call: call, auditID: uuid.NewString()})
	if err != nil || res.ip == nil {
		return nil, false, err
	}
	return res.ip, true, nil
}

// checkIPNetwork refuses networks IPs do not come from.
func checkIPNetwork(n *apiv1.Network, req *apiv1.IPServiceAllocateRequest) error {
	switch {
	case n.GetType() == apiv1.NetworkType_NETWORK_TYPE_CHILD && n.GetProjectId() != req.GetProjectId():
		// Another project's network: answer as if it did not exist.
		return status.Errorf(codes.NotFound, "network %s not found", quote(req.GetNetworkId()))
	case n.GetType() == apiv1.NetworkType_NETWORK_TYPE_SUPER || n.GetType() == apiv1.NetworkType_NETWORK_TYPE_UNDERLAY:
		return status.Errorf(codes.FailedPrecondition, "network %q is a %s network: IPs come from child or external networks", n.GetId(), networkTypeNames[n.GetType()])
	}
	return nil
}

// The next-free path reads only what never changes in a network (its
// type, project and prefixes: Update changes name, description and labels
// only), so it keeps networks it has read in memory for a while instead of
// reading the row on every call. A network deleted and created again under
// the same id is a different row: the shared statement takes nothing unless
// the row with the cached id and created_at still exists (guard in
// allocateBatchSQL), and a call it does not serve forgets the entry and
// starts over on a fresh read. So a stale entry can cost a retry, never a
// wrong answer.
const (
	networkCacheTTL  = 30 * time.Second
	networkCacheSize = 4096
)

type networkCacheEntry struct {
	n       *apiv1.Network
	expires time.Time
}

// networkCache is one API's cache of networks by id.
type networkCache struct {
	mu sync.RWMutex
	m  map[string]networkCacheEntry
}

func newNetworkCache() *networkCache { return &networkCache{m: map[string]networkCacheEntry{}} }

func (c *networkCache) get(id string) (*apiv1.Network, bool) {
	c.mu.RLock()
	e, ok := c.m[id]
	c.mu.RUnlock()
	if !ok || time.Now().After(e.expires) {
		return nil, false
	}
	return e.n, true
}

func (c *networkCache) remember(n *apiv1.Network) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= networkCacheSize {
		now := time.Now()
		for k, e := range c.m {
			if now.After(e.expires) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= networkCacheSize {
			clear(c.m)
		}
	}
	c.m[n.GetId()] = networkCacheEntry{n: n, expires: time.Now().Add(networkCacheTTL)}
}

func (c *networkCache) forget(id string) {
	c.mu.Lock()
	delete(c.m, id)
	c.mu.Unlock()
}

// takeAddress takes want, or the next free address of family fam (IPv4 first
// when fam is 0), from the network's prefixes.
func takeAddress(ctx context.Context, tx pgx.Tx, prefixes []prefixRow, want netip.Addr, fam int) (netip.Addr, string, error) {
	if want.IsValid() {
		for _, p := range prefixes {
			if p.prefix.Contains(want) {
				err := ipam.AcquireSpecific(ctx, tx, p.ipPool, ipam.AddrUnit(want))
				if errors.Is(err, ipam.ErrTaken) {
					return want, "", status.Errorf(codes.AlreadyExists, "ip %s is already allocated", want)
				}
				if errors.Is(err, ipam.ErrOutOfRange) {
					return want, "", status.Errorf(codes.InvalidArgument, "ip %s is the network or broadcast address of %s", want, p.prefix)
				}
				return want, p.ipPool, err
			}
		}
		return want, "", status.Errorf(codes.InvalidArgument, "ip %s is not inside the network's prefixes", want)
	}
	if fam == 0 {
		fam = defaultFamily(prefixes)
	}
	has := false
	for _, p := range prefixes {
		if ipam.Family(p.prefix) != fam {
			continue
		}
		has = true
		u, err := ipam.Acquire(ctx, tx, p.ipPool)
		if errors.Is(err, ipam.ErrExhausted) {
			continue
		}
		if err != nil {
			return netip.Addr{}, "", err
		}
		return ipam.UnitAddr(u, fam == 4), p.ipPool, nil
	}
	if !has {
		return netip.Addr{}, "", status.Errorf(codes.FailedPrecondition, "network has no IPv%d prefix", fam)
	}
	return netip.Addr{}, "", status.Errorf(codes.ResourceExhausted, "no free IPv%d address left in the network", fam)
}

func (s *ipService) Get(ctx context.Context, req *apiv1.IPServiceGetRequest) (*apiv1.IPServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, ips, canonicalIP(req.GetIp()))
	if err != nil {
		return nil, err
	}
	return &apiv1.IPServiceGetResponse{Ip: out}, nil
}

func (s *ipService) List(ctx context.Context, req *apiv1.IPServiceListRequest) (*apiv1.IPServiceListResponse, error) {
	all, err := ips.List(ctx, s.store.Pool(), "($1 = '' OR project_id = $1) AND ($2 = '' OR network_id = $2)", req.GetProjectId(), req.GetNetworkId())
	if err != nil {
		return nil, toStatus(err, "ips")
	}
	out, err := visible(ctx, s.API, all, (*apiv1.IP).GetProjectId, false)
	if err != nil {
		return nil, err
	}
	return &apiv1.IPServiceListResponse{Ips: out}, nil
}

func (s *ipService) Update(ctx context.Context, req *apiv1.IPServiceUpdateRequest) (*apiv1.IPServiceUpdateResponse, error) {
	var v violations
	v.text("name", req.GetName(), 128)
	v.text("description", req.GetDescription(), 1024)
	v.labels("labels", req.GetLabels())
	if _, ok := ipTypeNames[req.GetType()]; !ok && req.GetType() != apiv1.IPType_IP_TYPE_UNSPECIFIED {
		v.add("type", "must be ephemeral or static")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	out, err := modify(ctx, s.API, ips, canonicalIP(req.GetIp()), func(ip *apiv1.IP) ([]store.Col, string) {
		ip.Name, ip.Description, ip.Labels = req.GetName(), req.GetDescription(), req.GetLabels()
		if req.GetType() != apiv1.IPType_IP_TYPE_UNSPECIFIED {
			ip.Type = req.GetType()
		}
		return []store.Col{{Name: "type", Val: ipTypeNames[ip.GetType()]}}, ip.GetProjectId()
	})
	if err != nil {
		return nil, err
	}
	return &apiv1.IPServiceUpdateResponse{Ip: out}, nil
}

func (s *ipService) Release(ctx context.Context, req *apiv1.IPServiceReleaseRequest) (*apiv1.IPServiceReleaseResponse, error) {
	var out *apiv1.IP
	err := s.store.Tx(ctx, func(tx pgx.Tx) error {
		var pool, unit string
		var machine *string
		if err := tx.QueryRow(ctx, `SELECT pool_id, unit::TEXT, machine_id FROM ips WHERE ip = $1 FOR UPDATE`, canonicalIP(req.GetIp())).Scan(&pool, &unit, &machine); err != nil {
			return err
		}
		if machine != nil && *machine != "" {
			return status.Errorf(codes.FailedPrecondition, "ip %s is attached to machine %q", req.GetIp(), *machine)
		}
		var err error
		if out, err = ips.Delete(ctx, tx, canonicalIP(req.GetIp())); err != nil {
			return err
		}
		if err := ipam.Release(ctx, tx, pool, mustUnit(unit)); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "ip/"+out.GetIp(), out.GetProjectId())
	})
	if err != nil {
		return nil, toStatus(err, "ip "+quote(req.GetIp()))
	}
	return &apiv1.IPServiceReleaseResponse{Ip: out}, nil
}

// defaultFamily is IPv4 when the network has an IPv4 prefix, else IPv6.
func defaultFamily(prefixes []prefixRow) int {
	for _, p := range prefixes {
		if p.prefix.Addr().Is4() {
			return 4
		}
	}
	return 6
}

// canonicalIP normalises an address so that "fd00::0001" finds "fd00::1".
func canonicalIP(s string) string {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().String()
	}
	return s
}
