package catalog

import (
	"context"
	"fmt"
	"path"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/field"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Sizes reads sizes as stored; only this package writes them.
var Sizes = store.Table[*apiv1.Size]{Name: "sizes", New: func() *apiv1.Size { return &apiv1.Size{} }}

func validateSize(s *apiv1.Size) error {
	v := violations()
	if s == nil {
		v.Add("size", "required")
		return v.Err("")
	}
	v.ID("size.id", s.GetId())
	v.Text("size.name", s.GetName(), 128)
	v.Text("size.description", s.GetDescription(), 1024)
	v.Labels("size.labels", s.GetLabels())
	if len(s.GetConstraints()) == 0 {
		v.Add("size.constraints", "at least one constraint is required")
	}
	seen := map[string]bool{}
	for i, c := range s.GetConstraints() {
		f := field.Index("size.constraints", i)
		if c.GetType() == apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_UNSPECIFIED {
			v.Add(f+".type", "required")
		}
		if c.GetMin() > c.GetMax() {
			v.Add(f, "min %d is greater than max %d", c.GetMin(), c.GetMax())
		}
		if c.GetIdentifier() != "" {
			if c.GetType() != apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU {
				v.Add(f+".identifier", "only GPU constraints take an identifier")
			} else if _, err := path.Match(c.GetIdentifier(), ""); err != nil {
				v.Add(f+".identifier", "bad glob: %v", err)
			}
		}
		key := c.GetType().String() + "/" + c.GetIdentifier()
		if seen[key] {
			v.Add(f, "duplicate constraint of this type")
		}
		seen[key] = true
	}
	return v.Err("")
}

// CreateSize checks s and stores it with its audit row.
func CreateSize(ctx context.Context, st *store.Store, s *apiv1.Size) (*apiv1.Size, error) {
	if err := validateSize(s); err != nil {
		return nil, err
	}
	return Sizes.Create(ctx, st, s.GetId(), "", s)
}

// UpdateSize checks s and replaces the stored size of its id, with its
// audit row.
func UpdateSize(ctx context.Context, st *store.Store, s *apiv1.Size) (*apiv1.Size, error) {
	if err := validateSize(s); err != nil {
		return nil, err
	}
	return Sizes.Replace(ctx, st, s.GetId(), "", s)
}

// DeleteSize deletes the size with its audit row.
func DeleteSize(ctx context.Context, st *store.Store, id string) (*apiv1.Size, error) {
	return Sizes.Remove(ctx, st, id, "")
}

// ListSizes reads every size, by id.
func ListSizes(ctx context.Context, db store.Querier) ([]*apiv1.Size, error) {
	return Sizes.List(ctx, db, "TRUE")
}

// SizeMatches reports whether facts satisfy every constraint of s.
func SizeMatches(s *apiv1.Size, f *agentv1.MachineFacts) bool {
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

// MatchSize is the size a registering machine gets: the first by id whose
// constraints the hardware meets, "" for none. Sizes should not overlap
// (docs/machine-lifecycle.md); registration does not stop when they do.
func MatchSize(ctx context.Context, db store.Querier, f *agentv1.MachineFacts) (string, error) {
	all, err := ListSizes(ctx, db)
	if err != nil {
		return "", fmt.Errorf("read sizes: %w", err)
	}
	return firstMatch(all, f), nil
}

// firstMatch is MatchSize over all, which is ordered by id. A size
// without constraints would take every machine; it is no match.
func firstMatch(all []*apiv1.Size, f *agentv1.MachineFacts) string {
	for _, s := range all {
		if len(s.GetConstraints()) > 0 && SizeMatches(s, f) {
			return s.GetId()
		}
	}
	return ""
}

// SizeOf finds the one size the facts belong to. Overlapping sizes make
// the answer ambiguous, which is an operator error worth surfacing, not
// guessing: FailedPrecondition; NotFound when none matches.
func SizeOf(ctx context.Context, db store.Querier, f *agentv1.MachineFacts) (*apiv1.Size, error) {
	all, err := ListSizes(ctx, db)
	if err != nil {
		return nil, err
	}
	return onlyMatch(all, f)
}

// onlyMatch is SizeOf over all.
func onlyMatch(all []*apiv1.Size, f *agentv1.MachineFacts) (*apiv1.Size, error) {
	var found []*apiv1.Size
	for _, s := range all {
		if SizeMatches(s, f) {
			found = append(found, s)
		}
	}
	switch len(found) {
	case 0:
		return nil, status.Error(codes.NotFound, "no size matches these facts")
	case 1:
		return found[0], nil
	}
	return nil, status.Errorf(codes.FailedPrecondition, "facts match %d sizes (%s, %s, ...): size constraints overlap", len(found), found[0].GetId(), found[1].GetId())
}
