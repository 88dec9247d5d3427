package service

import (
	"context"

	"github.com/metalfleet/metalfleet/central/internal/catalog"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type imageService struct {
	*API
	apiv1.UnimplementedImageServiceServer
}

func (s *imageService) Create(ctx context.Context, req *apiv1.ImageServiceCreateRequest) (*apiv1.ImageServiceCreateResponse, error) {
	out, err := catalog.CreateImage(ctx, s.store, req.GetImage())
	if err != nil {
		return nil, toStatus(err, named(catalog.Images, req.GetImage().GetId()))
	}
	return &apiv1.ImageServiceCreateResponse{Image: out}, nil
}

func (s *imageService) Get(ctx context.Context, req *apiv1.ImageServiceGetRequest) (*apiv1.ImageServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, catalog.Images, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.ImageServiceGetResponse{Image: out}, nil
}

func (s *imageService) List(ctx context.Context, req *apiv1.ImageServiceListRequest) (*apiv1.ImageServiceListResponse, error) {
	out, err := catalog.ListImages(ctx, s.store.Pool(), req.GetOs())
	if err != nil {
		return nil, toStatus(err, "images")
	}
	return &apiv1.ImageServiceListResponse{Images: out}, nil
}

func (s *imageService) Update(ctx context.Context, req *apiv1.ImageServiceUpdateRequest) (*apiv1.ImageServiceUpdateResponse, error) {
	out, err := catalog.UpdateImage(ctx, s.store, req.GetImage())
	if err != nil {
		return nil, toStatus(err, named(catalog.Images, req.GetImage().GetId()))
	}
	return &apiv1.ImageServiceUpdateResponse{Image: out}, nil
}

func (s *imageService) Delete(ctx context.Context, req *apiv1.ImageServiceDeleteRequest) (*apiv1.ImageServiceDeleteResponse, error) {
	if req.GetId() == "" {
		return nil, requiredKey(catalog.Images)
	}
	out, err := catalog.DeleteImage(ctx, s.store, req.GetId())
	if err != nil {
		return nil, toStatus(err, named(catalog.Images, req.GetId()))
	}
	return &apiv1.ImageServiceDeleteResponse{Image: out}, nil
}

// Latest is the highest usable version of the OS (catalog.LatestImage).
func (s *imageService) Latest(ctx context.Context, req *apiv1.ImageServiceLatestRequest) (*apiv1.ImageServiceLatestResponse, error) {
	if req.GetOs() == "" {
		var v violations
		v.add("os", "required")
		return nil, v.err()
	}
	best, err := catalog.LatestImage(ctx, s.store.Pool(), req.GetOs(), req.GetIncludeDeprecated())
	if err != nil {
		return nil, toStatus(err, "images")
	}
	return &apiv1.ImageServiceLatestResponse{Image: best}, nil
}
