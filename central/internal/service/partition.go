package service

import (
	"context"

	"github.com/metalfleet/metalfleet/central/internal/catalog"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type partitionService struct {
	*API
	apiv1.UnimplementedPartitionServiceServer
}

func (s *partitionService) Create(ctx context.Context, req *apiv1.PartitionServiceCreateRequest) (*apiv1.PartitionServiceCreateResponse, error) {
	out, err := catalog.CreatePartition(ctx, s.store, req.GetPartition())
	if err != nil {
		return nil, toStatus(err, named(catalog.Partitions, req.GetPartition().GetId()))
	}
	return &apiv1.PartitionServiceCreateResponse{Partition: out}, nil
}

func (s *partitionService) Get(ctx context.Context, req *apiv1.PartitionServiceGetRequest) (*apiv1.PartitionServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, catalog.Partitions, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.PartitionServiceGetResponse{Partition: out}, nil
}

func (s *partitionService) List(ctx context.Context, _ *apiv1.PartitionServiceListRequest) (*apiv1.PartitionServiceListResponse, error) {
	out, err := catalog.ListPartitions(ctx, s.store.Pool())
	if err != nil {
		return nil, toStatus(err, "partitions")
	}
	return &apiv1.PartitionServiceListResponse{Partitions: out}, nil
}

func (s *partitionService) Update(ctx context.Context, req *apiv1.PartitionServiceUpdateRequest) (*apiv1.PartitionServiceUpdateResponse, error) {
	out, err := catalog.UpdatePartition(ctx, s.store, req.GetPartition())
	if err != nil {
		return nil, toStatus(err, named(catalog.Partitions, req.GetPartition().GetId()))
	}
	// The boot configuration reaches the partition's PXE services; if this
	// fails, central's start and the next update bring them up to date.
	if err := s.refreshPixies(ctx, out.GetId()); err != nil {
		s.log.Error("update PXE service documents", "partition", out.GetId(), "err", err)
	}
	return &apiv1.PartitionServiceUpdateResponse{Partition: out}, nil
}

func (s *partitionService) Delete(ctx context.Context, req *apiv1.PartitionServiceDeleteRequest) (*apiv1.PartitionServiceDeleteResponse, error) {
	if req.GetId() == "" {
		return nil, requiredKey(catalog.Partitions)
	}
	out, err := catalog.DeletePartition(ctx, s.store, req.GetId())
	if err != nil {
		return nil, toStatus(err, named(catalog.Partitions, req.GetId()))
	}
	return &apiv1.PartitionServiceDeleteResponse{Partition: out}, nil
}
