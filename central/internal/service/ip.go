package service

import (
	"context"
	"fmt"
	"github.com/metalfleet/metalfleet/central/internal/network"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type ipService struct {
	*API
	apiv1.UnimplementedIPServiceServer
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
	if _, ok := network.IPTypeNames[typ]; !ok {
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
	n, err := fetch(ctx, s.API, network.Table, req.GetNetworkId())
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
	out, err := network.AllocateIP(ctx, s.store, n, ip, want, fam)
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

// runIPBatch hands out the next free addresses of key's prefix to reqs in
// one statement. Calls it leaves without an IP (the range it locked had
// fewer units left, every range is locked, the pool is exhausted, the
// offset does not fit BIGINT, or the statement failed, e.g. because one
// call's project is gone) take the transactional path on their own, which
// waits for locks, tries the network's other prefixes and reports each
// call's own error.
func (a *API) runIPBatch(ctx context.Context, key ipBatchKey, reqs []ipBatchReq) []store.Outcome[ipBatchRes] {
	outs := make([]store.Outcome[ipBatchRes], len(reqs))
	nreqs := make([]network.IPReq, len(reqs))
	for i, r := range reqs {
		nreqs[i] = network.IPReq{IP: r.ip, Spec: r.spec, Call: r.call, AuditID: r.auditID}
	}
	for i, ip := range network.AllocateIPs(ctx, a.store.Pool(), key.network, key.created, key.prefix, nreqs) {
		outs[i].Val.ip = ip
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
	var prefixes []network.Prefix
	for _, c := range n.GetPrefixes() {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			return nil, false, fmt.Errorf("network %s has a bad prefix %q: %w", n.GetId(), c, err)
		}
		prefixes = append(prefixes, network.Prefix{CIDR: p, IPPool: ipam.IPPoolID(p)})
	}
	if fam == 0 {
		fam = network.DefaultFamily(prefixes)
	}
	var pr *network.Prefix
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
	key := ipBatchKey{network: n.GetId(), created: n.GetMeta().GetCreatedAt().AsTime(), prefix: pr.CIDR.Masked()}
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
		return status.Errorf(codes.FailedPrecondition, "network %q is a %s network: IPs come from child or external networks", n.GetId(), network.TypeNames[n.GetType()])
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

func (s *ipService) Get(ctx context.Context, req *apiv1.IPServiceGetRequest) (*apiv1.IPServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, network.IPs, canonicalIP(req.GetIp()))
	if err != nil {
		return nil, err
	}
	return &apiv1.IPServiceGetResponse{Ip: out}, nil
}

func (s *ipService) List(ctx context.Context, req *apiv1.IPServiceListRequest) (*apiv1.IPServiceListResponse, error) {
	all, err := network.IPs.List(ctx, s.store.Pool(), "($1 = '' OR project_id = $1) AND ($2 = '' OR network_id = $2)", req.GetProjectId(), req.GetNetworkId())
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
	if _, ok := network.IPTypeNames[req.GetType()]; !ok && req.GetType() != apiv1.IPType_IP_TYPE_UNSPECIFIED {
		v.add("type", "must be ephemeral or static")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	out, err := network.UpdateIP(ctx, s.store, canonicalIP(req.GetIp()), req.GetName(), req.GetDescription(), req.GetLabels(), req.GetType())
	if err != nil {
		return nil, toStatus(err, "ip "+quote(canonicalIP(req.GetIp())))
	}
	return &apiv1.IPServiceUpdateResponse{Ip: out}, nil
}

func (s *ipService) Release(ctx context.Context, req *apiv1.IPServiceReleaseRequest) (*apiv1.IPServiceReleaseResponse, error) {
	out, err := network.ReleaseIP(ctx, s.store, canonicalIP(req.GetIp()), req.GetIp())
	if err != nil {
		return nil, toStatus(err, "ip "+quote(req.GetIp()))
	}
	return &apiv1.IPServiceReleaseResponse{Ip: out}, nil
}

// canonicalIP normalises an address so that "fd00::0001" finds "fd00::1".
func canonicalIP(s string) string {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.Unmap().String()
	}
	return s
}
