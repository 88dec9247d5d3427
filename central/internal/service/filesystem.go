package service

import (
	"context"

	"github.com/metalfleet/metalfleet/central/internal/catalog"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type filesystemLayoutService struct {
	*API
	apiv1.UnimplementedFilesystemLayoutServiceServer
}

func (s *filesystemLayoutService) Create(ctx context.Context, req *apiv1.FilesystemLayoutServiceCreateRequest) (*apiv1.FilesystemLayoutServiceCreateResponse, error) {
	out, err := catalog.CreateLayout(ctx, s.store, req.GetFilesystemLayout())
	if err != nil {
		return nil, toStatus(err, named(catalog.Layouts, req.GetFilesystemLayout().GetId()))
	}
	return &apiv1.FilesystemLayoutServiceCreateResponse{FilesystemLayout: out}, nil
}

func (s *filesystemLayoutService) Get(ctx context.Context, req *apiv1.FilesystemLayoutServiceGetRequest) (*apiv1.FilesystemLayoutServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, catalog.Layouts, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.FilesystemLayoutServiceGetResponse{FilesystemLayout: out}, nil
}

func (s *filesystemLayoutService) List(ctx context.Context, _ *apiv1.FilesystemLayoutServiceListRequest) (*apiv1.FilesystemLayoutServiceListResponse, error) {
	out, err := catalog.ListLayouts(ctx, s.store.Pool())
	if err != nil {
		return nil, toStatus(err, "filesystem layouts")
	}
	return &apiv1.FilesystemLayoutServiceListResponse{FilesystemLayouts: out}, nil
}

func (s *filesystemLayoutService) Update(ctx context.Context, req *apiv1.FilesystemLayoutServiceUpdateRequest) (*apiv1.FilesystemLayoutServiceUpdateResponse, error) {
	out, err := catalog.UpdateLayout(ctx, s.store, req.GetFilesystemLayout())
	if err != nil {
		return nil, toStatus(err, named(catalog.Layouts, req.GetFilesystemLayout().GetId()))
	}
	return &apiv1.FilesystemLayoutServiceUpdateResponse{FilesystemLayout: out}, nil
}

func (s *filesystemLayoutService) Delete(ctx context.Context, req *apiv1.FilesystemLayoutServiceDeleteRequest) (*apiv1.FilesystemLayoutServiceDeleteResponse, error) {
	if req.GetId() == "" {
		return nil, requiredKey(catalog.Layouts)
	}
	out, err := catalog.DeleteLayout(ctx, s.store, req.GetId())
	if err != nil {
		return nil, toStatus(err, named(catalog.Layouts, req.GetId()))
	}
	return &apiv1.FilesystemLayoutServiceDeleteResponse{FilesystemLayout: out}, nil
}
