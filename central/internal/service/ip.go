package service

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
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

var ips = table[*apiv1.IP]{name: "ips", key: "ip", newFn: func() *apiv1.IP { return &apiv1.IP{} }}

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
	n, err := fetch(ctx, s.API, networks, req.GetNetworkId())
	if err != nil {
		return nil, err
	}
	switch {
	case n.GetType() == apiv1.NetworkType_NETWORK_TYPE_CHILD && n.GetProjectId() != req.GetProjectId():
		// Another project's network: answer as if it did not exist.
		return nil, status.Errorf(codes.NotFound, "network %q not found", req.GetNetworkId())
	case n.GetType() == apiv1.NetworkType_NETWORK_TYPE_SUPER || n.GetType() == apiv1.NetworkType_NETWORK_TYPE_UNDERLAY:
		return nil, status.Errorf(codes.FailedPrecondition, "network %q is a %s network: IPs come from child or external networks", n.GetId(), networkTypeNames[n.GetType()])
	}
	ip := &apiv1.IP{
		NetworkId:   n.GetId(),
		ProjectId:   req.GetProjectId(),
		Name:        req.GetName(),
		Description: req.GetDescription(),
		Type:        typ,
		Labels:      req.GetLabels(),
	}
	if !want.IsValid() {
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
		out, err = ips.insert(ctx, tx, ip.GetIp(), ip,
			col{"pool_id", pool}, col{"unit", ipam.AddrUnit(addr).String()}, col{"network_id", n.GetId()},
			col{"project_id", ip.GetProjectId()}, col{"type", ipTypeNames[typ]})
		if err != nil {
			return err
		}
		return s.audit(ctx, tx, "ip/"+ip.GetIp(), ip.GetProjectId())
	})
	if err != nil {
		return nil, toStatus(err, "ip in network "+quote(n.GetId()))
	}
	return &apiv1.IPServiceAllocateResponse{Ip: out}, nil
}

// allocateNextSQL inserts the IP for the unit ipam.TakeInto took, computing
// its address from the prefix base ($3, $4) and its audit row, all in the
// same statement. The address text comes from PostgreSQL's host(), which
// formats IPv6 the RFC 5952 way, as net/netip does.
const allocateNextSQL = `,
addr AS (
	SELECT host($3::INET + (unit - $4::NUMERIC)::BIGINT) AS ip, unit FROM taken
), ins AS (
	INSERT INTO ips (ip, spec, pool_id, unit, network_id, project_id, type)
	SELECT ip, jsonb_set($2::JSONB, '{ip}', to_jsonb(ip)), $1, unit, $5, $6, $7 FROM addr
	RETURNING ip, spec, generation, created_at, updated_at
), aud AS (
	INSERT INTO audit (id, subject, method, request_id, target, project_id)
	SELECT $8, $9, $10, $11, 'ip/' || ip, $6 FROM ins
)
SELECT spec, generation, created_at, updated_at FROM ins`

// allocateNext is the common case in one round trip: the next free address
// of the family's first prefix, taken, recorded and audited by a single
// statement, atomic on its own. ok is false when that prefix has no range
// free of other writers' locks (or is exhausted, or its next offset is too
// large for BIGINT); the caller then runs the full transaction, which waits
// for locks, tries the other prefixes and reports exhaustion.
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
	spec, err := encodeSpec(ip)
	if err != nil {
		return nil, false, err
	}
	base := pr.prefix.Masked().Addr()
	out, err := ips.scan(ipam.TakeInto(ctx, s.store.Pool(), pr.ipPool, allocateNextSQL,
		spec, base.String(), ipam.AddrUnit(base).String(), n.GetId(), ip.GetProjectId(), ipTypeNames[ip.GetType()],
		uuid.NewString(), call.Principal.TokenID, call.Method, call.RequestID))
	switch {
	case errors.Is(err, pgx.ErrNoRows), store.IsCode(err, store.CodeNumericOutOfRange):
		return nil, false, nil
	case err != nil:
		return nil, false, err
	}
	return out, true, nil
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
	all, err := ips.list(ctx, s.store.Pool(), "($1 = '' OR project_id = $1) AND ($2 = '' OR network_id = $2)", req.GetProjectId(), req.GetNetworkId())
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
	out, err := modify(ctx, s.API, ips, canonicalIP(req.GetIp()), func(ip *apiv1.IP) ([]col, string) {
		ip.Name, ip.Description, ip.Labels = req.GetName(), req.GetDescription(), req.GetLabels()
		if req.GetType() != apiv1.IPType_IP_TYPE_UNSPECIFIED {
			ip.Type = req.GetType()
		}
		return []col{{"type", ipTypeNames[ip.GetType()]}}, ip.GetProjectId()
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
		if out, err = ips.delete(ctx, tx, canonicalIP(req.GetIp())); err != nil {
			return err
		}
		if err := ipam.Release(ctx, tx, pool, mustUnit(unit)); err != nil {
			return err
		}
		return s.audit(ctx, tx, "ip/"+out.GetIp(), out.GetProjectId())
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
