package catalog

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"net/url"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/field"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Partitions reads partitions as stored; only this package writes them.
var Partitions = store.Table[*apiv1.Partition]{Name: "partitions", New: func() *apiv1.Partition { return &apiv1.Partition{} }}

func validatePartition(p *apiv1.Partition) error {
	v := violations()
	if p == nil {
		v.Add("partition", "required")
		return v.Err("")
	}
	v.ID("partition.id", p.GetId())
	v.Text("partition.name", p.GetName(), 128)
	v.Text("partition.description", p.GetDescription(), 1024)
	v.Text("partition.region", p.GetRegion(), 63)
	v.Labels("partition.labels", p.GetLabels())
	for _, u := range []struct{ f, val string }{{"partition.boot.kernel_url", p.GetBoot().GetKernelUrl()}, {"partition.boot.initramfs_url", p.GetBoot().GetInitramfsUrl()}} {
		if u.val == "" {
			continue
		}
		if pu, err := url.Parse(u.val); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			v.Add(u.f, "must be an http(s) URL")
		}
	}
	for i, s := range p.GetDnsServers() {
		if _, err := netip.ParseAddr(s); err != nil {
			v.Add(field.Index("partition.dns_servers", i), "not an IP address")
		}
	}
	for i, s := range p.GetNtpServers() {
		if s == "" || len(s) > 253 {
			v.Add(field.Index("partition.ntp_servers", i), "must be a host name or address")
		}
	}
	if f := p.GetFabric(); f != nil {
		if l := f.GetLoopbacks(); l != "" {
			if pf, err := netip.ParsePrefix(l); err != nil || !pf.Addr().Is4() || pf.Bits() > 30 || pf.Masked() != pf {
				v.Add("partition.fabric.loopbacks", "must be an IPv4 prefix of at most /30, e.g. 10.255.0.0/24")
			}
		}
		if vl := f.GetPxeVlan(); vl != 0 && (vl > 4094 || (vl >= 1001 && vl <= 2000)) {
			v.Add("partition.fabric.pxe_vlan", "must be 1-4094 outside 1001-2000 (the tenant VRFs' VLANs)")
		}
		if b := f.GetAsnBase(); b != 0 && b < 4200000000 {
			v.Add("partition.fabric.asn_base", "must lie in the 4-byte private range (4200000000 and up)")
		}
	}
	return v.Err("")
}

// Fabric is how a partition numbers its leaves, defaults applied.
type Fabric struct {
	ASNBase   uint32
	Loopbacks netip.Prefix
	PXEVLAN   uint32
}

// FabricOf reads the fabric settings of partition id.
func FabricOf(ctx context.Context, db store.Querier, id string) (Fabric, error) {
	p, err := Partitions.Get(ctx, db, id)
	if err != nil {
		return Fabric{}, fmt.Errorf("partition %s: %w", id, err)
	}
	f := Fabric{ASNBase: 4200000000, Loopbacks: netip.MustParsePrefix("10.255.0.0/24"), PXEVLAN: 4000}
	if b := p.GetFabric().GetAsnBase(); b != 0 {
		f.ASNBase = b
	}
	if l, err := netip.ParsePrefix(p.GetFabric().GetLoopbacks()); err == nil {
		f.Loopbacks = l
	}
	if vl := p.GetFabric().GetPxeVlan(); vl != 0 {
		f.PXEVLAN = vl
	}
	return f, nil
}

// CreatePartition checks p and stores it with its audit row.
func CreatePartition(ctx context.Context, st *store.Store, p *apiv1.Partition) (*apiv1.Partition, error) {
	if err := validatePartition(p); err != nil {
		return nil, err
	}
	return Partitions.Create(ctx, st, p.GetId(), "", p)
}

// UpdatePartition checks p and replaces the stored partition of its id,
// with its audit row.
func UpdatePartition(ctx context.Context, st *store.Store, p *apiv1.Partition) (*apiv1.Partition, error) {
	if err := validatePartition(p); err != nil {
		return nil, err
	}
	return Partitions.Replace(ctx, st, p.GetId(), "", p)
}

// DeletePartition deletes the partition with its audit row; the foreign
// keys refuse while anything (networks, machines, agents, reservations)
// still refers to it.
func DeletePartition(ctx context.Context, st *store.Store, id string) (*apiv1.Partition, error) {
	return Partitions.Remove(ctx, st, id, "")
}

// ListPartitions reads every partition, by id.
func ListPartitions(ctx context.Context, db store.Querier) ([]*apiv1.Partition, error) {
	return Partitions.List(ctx, db, "TRUE")
}

// PartitionExists answers NotFound, naming the request's field, unless
// partition id exists.
func PartitionExists(ctx context.Context, db store.Querier, field, id string) error {
	var one int
	err := db.QueryRow(ctx, `SELECT 1 FROM partitions WHERE id = $1`, id).Scan(&one)
	if errors.Is(err, pgx.ErrNoRows) {
		return status.Errorf(codes.NotFound, "%s: partition %s not found", field, auth.Quote(id))
	}
	return err
}
