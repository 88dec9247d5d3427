package catalog

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func TestSizeMatches(t *testing.T) {
	const gib = 1 << 30
	size := &apiv1.Size{Id: "s1", Constraints: []*apiv1.SizeConstraint{
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, Min: 4, Max: 8},
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY, Min: 8 * gib, Max: 64 * gib},
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_STORAGE, Min: 100 * gib, Max: 1000 * gib},
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU, Min: 1, Max: 2, Identifier: "H100*"},
	}}
	facts := func(cores uint32, mem uint64, disks []uint64, gpus ...string) *agentv1.MachineFacts {
		f := &agentv1.MachineFacts{Cores: cores, MemoryBytes: mem}
		for _, d := range disks {
			f.Disks = append(f.Disks, &agentv1.DiskFact{SizeBytes: d})
		}
		for _, g := range gpus {
			f.Gpus = append(f.Gpus, &agentv1.GPUFact{Model: g})
		}
		return f
	}
	tests := []struct {
		name string
		f    *agentv1.MachineFacts
		want bool
	}{
		{"fits", facts(8, 16*gib, []uint64{60 * gib, 60 * gib}, "H100 SXM"), true},
		{"storage summed below min", facts(8, 16*gib, []uint64{40 * gib, 40 * gib}, "H100"), false},
		{"too many cores", facts(9, 16*gib, []uint64{200 * gib}, "H100"), false},
		{"wrong gpu model", facts(8, 16*gib, []uint64{200 * gib}, "A100"), false},
		{"too many matching gpus", facts(8, 16*gib, []uint64{200 * gib}, "H100", "H100", "H100"), false},
		{"no gpu", facts(8, 16*gib, []uint64{200 * gib}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SizeMatches(size, tt.f); got != tt.want {
				t.Fatalf("SizeMatches = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMatchOfSeveralSizes(t *testing.T) {
	cores := func(id string, lo, hi uint64) *apiv1.Size {
		return &apiv1.Size{Id: id, Constraints: []*apiv1.SizeConstraint{{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, Min: lo, Max: hi}}}
	}
	unconstrained := &apiv1.Size{Id: "a-any"}
	// By id, as ListSizes returns them.
	all := []*apiv1.Size{unconstrained, cores("b-small", 1, 8), cores("c-mid", 8, 16), cores("d-big", 17, 64)}
	tests := []struct {
		name  string
		cores uint32
		first string     // MatchSize: the first by id, unconstrained sizes left out
		code  codes.Code // SizeOf: exactly one, the unconstrained size counted
		only  string
	}{
		{"one constrained size", 4, "b-small", codes.FailedPrecondition, ""},
		{"overlap of two takes the first by id", 8, "b-small", codes.FailedPrecondition, ""},
		{"only the unconstrained size", 100, "", codes.OK, "a-any"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := &agentv1.MachineFacts{Cores: tt.cores}
			if got := firstMatch(all, f); got != tt.first {
				t.Errorf("firstMatch = %q, want %q", got, tt.first)
			}
			got, err := onlyMatch(all, f)
			if status.Code(err) != tt.code || got.GetId() != tt.only {
				t.Errorf("onlyMatch = %v, %v; want %q, %v", got.GetId(), err, tt.only, tt.code)
			}
		})
	}

	constrained := all[1:]
	tests2 := []struct {
		name  string
		cores uint32
		code  codes.Code
		want  string // the size, or what the message says
	}{
		{"exactly one", 20, codes.OK, "d-big"},
		{"none", 100, codes.NotFound, "no size matches these facts"},
		{"overlap names the first two", 8, codes.FailedPrecondition, "facts match 2 sizes (b-small, c-mid, ...): size constraints overlap"},
	}
	for _, tt := range tests2 {
		t.Run("only "+tt.name, func(t *testing.T) {
			got, err := onlyMatch(constrained, &agentv1.MachineFacts{Cores: tt.cores})
			if status.Code(err) != tt.code {
				t.Fatalf("onlyMatch = %v, %v; want %v", got, err, tt.code)
			}
			if tt.code == codes.OK {
				if got.GetId() != tt.want {
					t.Fatalf("onlyMatch = %s, want %s", got.GetId(), tt.want)
				}
				return
			}
			if msg := status.Convert(err).Message(); !strings.Contains(msg, tt.want) {
				t.Fatalf("message %q, want %q", msg, tt.want)
			}
		})
	}
}
