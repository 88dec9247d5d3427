package service

import (
	"context"
	"github.com/jackc/pgx/v5"
	"net/netip"
	"net/url"

	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type partitionService struct {
	*API
	apiv1.UnimplementedPartitionServiceServer
}

var partitions = store.Table[*apiv1.Partition]{Name: "partitions", New: func() *apiv1.Partition { return &apiv1.Partition{} }}

func validatePartition(p *apiv1.Partition) error {
	var v violations
	if p == nil {
		v.add("partition", "required")
		return v.err()
	}
	v.id("partition.id", p.GetId())
	v.text("partition.name", p.GetName(), 128)
	v.text("partition.description", p.GetDescription(), 1024)
	v.text("partition.region", p.GetRegion(), 63)
	v.labels("partition.labels", p.GetLabels())
	for _, u := range []struct{ f, val string }{{"partition.boot.kernel_url", p.GetBoot().GetKernelUrl()}, {"partition.boot.initramfs_url", p.GetBoot().GetInitramfsUrl()}} {
		if u.val == "" {
			continue
		}
		if pu, err := url.Parse(u.val); err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" {
			v.add(u.f, "must be an http(s) URL")
		}
	}
	for i, s := range p.GetDnsServers() {
		if _, err := netip.ParseAddr(s); err != nil {
			v.add(fieldIndex("partition.dns_servers", i), "not an IP address")
		}
	}
	for i, s := range p.GetNtpServers() {
		if s == "" || len(s) > 253 {
			v.add(fieldIndex("partition.ntp_servers", i), "must be a host name or address")
		}
	}
	return v.err()
}

func (s *partitionService) Create(ctx context.Context, req *apiv1.PartitionServiceCreateRequest) (*apiv1.PartitionServiceCreateResponse, error) {
	if err := validatePartition(req.GetPartition()); err != nil {
		return nil, err
	}
	out, err := create(ctx, s.API, partitions, req.GetPartition().GetId(), "", req.GetPartition())
	if err != nil {
		return nil, err
	}
	return &apiv1.PartitionServiceCreateResponse{Partition: out}, nil
}

func (s *partitionService) Get(ctx context.Context, req *apiv1.PartitionServiceGetRequest) (*apiv1.PartitionServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, partitions, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.PartitionServiceGetResponse{Partition: out}, nil
}

func (s *partitionService) List(ctx context.Context, _ *apiv1.PartitionServiceListRequest) (*apiv1.PartitionServiceListResponse, error) {
	out, err := partitions.List(ctx, s.store.Pool(), "TRUE")
	if err != nil {
		return nil, toStatus(err, "partitions")
	}
	return &apiv1.PartitionServiceListResponse{Partitions: out}, nil
}

func (s *partitionService) Update(ctx context.Context, req *apiv1.PartitionServiceUpdateRequest) (*apiv1.PartitionServiceUpdateResponse, error) {
	if err := validatePartition(req.GetPartition()); err != nil {
		return nil, err
	}
	out, err := replace(ctx, s.API, partitions, req.GetPartition().GetId(), "", req.GetPartition())
	if err != nil {
		return nil, err
	}
	// The boot configuration reaches the partition's PXE services; if this
	// fails, central's start and the next update bring them up to date.
	if err := s.store.Tx(ctx, func(tx pgx.Tx) error { return s.refreshPixies(ctx, tx, out.GetId()) }); err != nil {
		s.log.Error("update PXE service documents", "partition", out.GetId(), "err", err)
	}
	return &apiv1.PartitionServiceUpdateResponse{Partition: out}, nil
}

func (s *partitionService) Delete(ctx context.Context, req *apiv1.PartitionServiceDeleteRequest) (*apiv1.PartitionServiceDeleteResponse, error) {
	out, err := remove(ctx, s.API, partitions, req.GetId(), "")
	if err != nil {
		return nil, err
	}
	return &apiv1.PartitionServiceDeleteResponse{Partition: out}, nil
}
