package service

import (
	"context"
	"path"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type sizeService struct {
	*API
	apiv1.UnimplementedSizeServiceServer
}

var sizes = store.Table[*apiv1.Size]{Name: "sizes", New: func() *apiv1.Size { return &apiv1.Size{} }}

func validateSize(s *apiv1.Size) error {
	var v violations
	if s == nil {
		v.add("size", "required")
		return v.err()
	}
	v.id("size.id", s.GetId())
	v.text("size.name", s.GetName(), 128)
	v.text("size.description", s.GetDescription(), 1024)
	v.labels("size.labels", s.GetLabels())
	if len(s.GetConstraints()) == 0 {
		v.add("size.constraints", "at least one constraint is required")
	}
	seen := map[string]bool{}
	for i, c := range s.GetConstraints() {
		f := fieldIndex("size.constraints", i)
		if c.GetType() == apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_UNSPECIFIED {
			v.add(f+".type", "required")
		}
		if c.GetMin() > c.GetMax() {
			v.add(f, "min %d is greater than max %d", c.GetMin(), c.GetMax())
		}
		if c.GetIdentifier() != "" {
			if c.GetType() != apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU {
				v.add(f+".identifier", "only GPU constraints take an identifier")
			} else if _, err := path.Match(c.GetIdentifier(), ""); err != nil {
				v.add(f+".identifier", "bad glob: %v", err)
			}
		}
		key := c.GetType().String() + "/" + c.GetIdentifier()
		if seen[key] {
			v.add(f, "duplicate constraint of this type")
		}
		seen[key] = true
	}
	return v.err()
}

// sizeMatches reports whether facts satisfy every constraint of s.
func sizeMatches(s *apiv1.Size, f *agentv1.MachineFacts) bool {
	for _, c := range s.GetConstraints() {
		var val uint64
		switch c.GetType() {
		case apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES:
			val = uint64(f.GetCores())
		case apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY:
			val = f.GetMemoryBytes()
		case apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_STORAGE:
			for _, d := range f.GetDisks() {
				val += d.GetSizeBytes()
			}
		case apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU:
			for _, g := range f.GetGpus() {
				if ok, _ := path.Match(orStar(c.GetIdentifier()), g.GetModel()); ok {
					val++
				}
			}
		default:
			return false
		}
		if val < c.GetMin() || val > c.GetMax() {
			return false
		}
	}
	return true
}

func orStar(s string) string {
	if s == "" {
		return "*"
	}
	return s
}

func (s *sizeService) Create(ctx context.Context, req *apiv1.SizeServiceCreateRequest) (*apiv1.SizeServiceCreateResponse, error) {
	if err := validateSize(req.GetSize()); err != nil {
		return nil, err
	}
	out, err := create(ctx, s.API, sizes, req.GetSize().GetId(), "", req.GetSize())
	if err != nil {
		return nil, err
	}
	return &apiv1.SizeServiceCreateResponse{Size: out}, nil
}

func (s *sizeService) Get(ctx context.Context, req *apiv1.SizeServiceGetRequest) (*apiv1.SizeServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, sizes, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.SizeServiceGetResponse{Size: out}, nil
}

func (s *sizeService) List(ctx context.Context, _ *apiv1.SizeServiceListRequest) (*apiv1.SizeServiceListResponse, error) {
	out, err := sizes.List(ctx, s.store.Pool(), "TRUE")
	if err != nil {
		return nil, toStatus(err, "sizes")
	}
	return &apiv1.SizeServiceListResponse{Sizes: out}, nil
}

func (s *sizeService) Update(ctx context.Context, req *apiv1.SizeServiceUpdateRequest) (*apiv1.SizeServiceUpdateResponse, error) {
	if err := validateSize(req.GetSize()); err != nil {
		return nil, err
	}
	out, err := replace(ctx, s.API, sizes, req.GetSize().GetId(), "", req.GetSize())
	if err != nil {
		return nil, err
	}
	return &apiv1.SizeServiceUpdateResponse{Size: out}, nil
}

func (s *sizeService) Delete(ctx context.Context, req *apiv1.SizeServiceDeleteRequest) (*apiv1.SizeServiceDeleteResponse, error) {
	out, err := remove(ctx, s.API, sizes, req.GetId(), "")
	if err != nil {
		return nil, err
	}
	return &apiv1.SizeServiceDeleteResponse{Size: out}, nil
}

// Match finds the one size the facts belong to. Overlapping sizes make the
// answer ambiguous, which is an operator error worth surfacing, not guessing.
func (s *sizeService) Match(ctx context.Context, req *apiv1.SizeServiceMatchRequest) (*apiv1.SizeServiceMatchResponse, error) {
	if req.GetFacts() == nil {
		var v violations
		v.add("facts", "required")
		return nil, v.err()
	}
	all, err := sizes.List(ctx, s.store.Pool(), "TRUE")
	if err != nil {
		return nil, toStatus(err, "sizes")
	}
	var found []*apiv1.Size
	for _, sz := range all {
		if sizeMatches(sz, req.GetFacts()) {
			found = append(found, sz)
		}
	}
	switch len(found) {
	case 0:
		return nil, status.Error(codes.NotFound, "no size matches these facts")
	case 1:
		return &apiv1.SizeServiceMatchResponse{Size: found[0]}, nil
	}
	return nil, status.Errorf(codes.FailedPrecondition, "facts match %d sizes (%s, %s, ...): size constraints overlap", len(found), found[0].GetId(), found[1].GetId())
}
