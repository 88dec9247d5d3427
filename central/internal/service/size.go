package service

import (
	"context"

	"github.com/metalfleet/metalfleet/central/internal/catalog"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type sizeService struct {
	*API
	apiv1.UnimplementedSizeServiceServer
}

func (s *sizeService) Create(ctx context.Context, req *apiv1.SizeServiceCreateRequest) (*apiv1.SizeServiceCreateResponse, error) {
	out, err := catalog.CreateSize(ctx, s.store, req.GetSize())
	if err != nil {
		return nil, toStatus(err, named(catalog.Sizes, req.GetSize().GetId()))
	}
	return &apiv1.SizeServiceCreateResponse{Size: out}, nil
}

func (s *sizeService) Get(ctx context.Context, req *apiv1.SizeServiceGetRequest) (*apiv1.SizeServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, catalog.Sizes, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.SizeServiceGetResponse{Size: out}, nil
}

func (s *sizeService) List(ctx context.Context, _ *apiv1.SizeServiceListRequest) (*apiv1.SizeServiceListResponse, error) {
	out, err := catalog.ListSizes(ctx, s.store.Pool())
	if err != nil {
		return nil, toStatus(err, "sizes")
	}
	return &apiv1.SizeServiceListResponse{Sizes: out}, nil
}

func (s *sizeService) Update(ctx context.Context, req *apiv1.SizeServiceUpdateRequest) (*apiv1.SizeServiceUpdateResponse, error) {
	out, err := catalog.UpdateSize(ctx, s.store, req.GetSize())
	if err != nil {
		return nil, toStatus(err, named(catalog.Sizes, req.GetSize().GetId()))
	}
	return &apiv1.SizeServiceUpdateResponse{Size: out}, nil
}

func (s *sizeService) Delete(ctx context.Context, req *apiv1.SizeServiceDeleteRequest) (*apiv1.SizeServiceDeleteResponse, error) {
	if req.GetId() == "" {
		return nil, requiredKey(catalog.Sizes)
	}
	out, err := catalog.DeleteSize(ctx, s.store, req.GetId())
	if err != nil {
		return nil, toStatus(err, named(catalog.Sizes, req.GetId()))
	}
	return &apiv1.SizeServiceDeleteResponse{Size: out}, nil
}

// Match finds the one size the facts belong to (catalog.SizeOf).
func (s *sizeService) Match(ctx context.Context, req *apiv1.SizeServiceMatchRequest) (*apiv1.SizeServiceMatchResponse, error) {
	if req.GetFacts() == nil {
		var v violations
		v.add("facts", "required")
		return nil, v.err()
	}
	found, err := catalog.SizeOf(ctx, s.store.Pool(), req.GetFacts())
	if err != nil {
		return nil, toStatus(err, "sizes")
	}
	return &apiv1.SizeServiceMatchResponse{Size: found}, nil
}
