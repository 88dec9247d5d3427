package catalog

import (
	"testing"

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
