package network

import (
	"context"
	"errors"
	"github.com/jackc/pgx/v5"
	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"net/netip"
	"time"
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
		fam = DefaultFamily(prefixes)
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

// DefaultFamily is IPv4 when the network has an IPv4 prefix, else IPv6.
func DefaultFamily(prefixes []Prefix) int {
	for _, p := range prefixes {
		if p.CIDR.Addr().Is4() {
			return 4
		}
	}
	return 6
}

// AllocateIP takes want, or the next free address of family fam (IPv4
// first when fam is 0), from any of n's prefixes for ip, and writes it
// with its audit row: one call alone, waiting for locks.
func AllocateIP(ctx context.Context, st *store.Store, n *apiv1.Network, ip *apiv1.IP, want netip.Addr, fam int) (*apiv1.IP, error) {
	var out *apiv1.IP
	typ := ip.GetType()
	err := st.Tx(ctx, func(tx pgx.Tx) error {
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

// IPReq is one next-free call of a batch: the IP to record (without its
// address) and its audit row.
type IPReq struct {
	IP      *apiv1.IP
	Spec    []byte
	Call    *auth.Call
	AuditID string
}

// AllocateIPs hands out the next free addresses of prefix (of network
// networkID, created at created: the row the caller read) to reqs in one
// statement that writes every call's IP row and audit row. A call it
// leaves without an IP (nil: the range it locked had fewer units left,
// every range is locked, the pool is exhausted, the offset does not fit
// BIGINT, or the statement failed, e.g. because one call's project is
// gone) takes AllocateIP on its own, which waits for locks, tries the
// network's other prefixes and reports the call's own error.
func AllocateIPs(ctx context.Context, db store.Querier, networkID string, created time.Time, prefix netip.Prefix, reqs []IPReq) []*apiv1.IP {
	outs := make([]*apiv1.IP, len(reqs))
	cols := make([][]string, 7)
	for i := range cols {
		cols[i] = make([]string, len(reqs))
	}
	for i, r := range reqs {
		cols[0][i] = string(r.Spec)
		cols[1][i] = r.IP.GetProjectId()
		cols[2][i] = IPTypeNames[r.IP.GetType()]
		cols[3][i] = r.AuditID
		cols[4][i] = r.Call.Principal.TokenID
		cols[5][i] = r.Call.Method
		cols[6][i] = r.Call.RequestID
	}
	base := prefix.Masked().Addr()
	rows, err := ipam.TakeInto(ctx, db, ipam.IPPoolID(prefix), len(reqs), allocateBatchGuard, allocateBatchSQL,
		cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6],
		base.String(), ipam.AddrUnit(base).String(), networkID, created)
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
		out := proto.Clone(reqs[s.ord-1].IP).(*apiv1.IP)
		out.Ip = s.ip
		store.SetMeta(out, &apiv1.Meta{CreatedAt: timestamppb.New(s.created), UpdatedAt: timestamppb.New(s.updated), Generation: uint64(s.gen)})
		outs[s.ord-1] = out
	}
	return outs
}

// UpdateIP changes an IP's name, description, labels and, unless typ is
// unspecified, its type, with its audit row.
func UpdateIP(ctx context.Context, st *store.Store, addr, name, description string, labels map[string]string, typ apiv1.IPType) (*apiv1.IP, error) {
	return IPs.Modify(ctx, st, addr, func(ip *apiv1.IP) ([]store.Col, string) {
		ip.Name, ip.Description, ip.Labels = name, description, labels
		if typ != apiv1.IPType_IP_TYPE_UNSPECIFIED {
			ip.Type = typ
		}
		return []store.Col{{Name: "type", Val: IPTypeNames[ip.GetType()]}}, ip.GetProjectId()
	})
}

// ReleaseIP gives an IP that no machine holds back to its pool, with its
// audit row. asked is the address as the caller wrote it, for errors.
func ReleaseIP(ctx context.Context, st *store.Store, addr, asked string) (*apiv1.IP, error) {
	var out *apiv1.IP
	err := st.Tx(ctx, func(tx pgx.Tx) error {
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
