package service

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/machine"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// TestAllocationRuleOnePlace: a rule added to the machine aggregate (as
// the dual-attach rule, machine.bothLinksSeen, is) is consulted by every
// allocation path — one call, a batch of calls, a machine named by id —
// so an allocation rule is written once.
func TestAllocationRuleOnePlace(t *testing.T) {
	l := newLab(t, 4)
	var (
		mu      sync.Mutex
		checked = map[string]int{}
		refused string
	)
	rule := func(_ context.Context, _ pgx.Tx, c machine.Candidate) error {
		mu.Lock()
		defer mu.Unlock()
		checked[c.Machine.GetId()]++
		if c.Machine.GetId() == refused {
			return errors.New("only one link seen")
		}
		return nil
	}
	l.a.machines = machine.New(l.a.store, l.a.cfg.AliveWithin, machine.WithDocs(l.hub), machine.WithRule(rule))
	var ids []string
	for i := range 4 {
		id, _ := l.machine(i, "")
		ids = append(ids, id)
	}

	// One call.
	m, err := l.create(&apiv1.MachineServiceCreateRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if checked[m.GetId()] == 0 {
		t.Fatalf("single allocation of %s did not consult the rule (%v)", m.GetId(), checked)
	}

	// A batch of two calls.
	req := func() allocReq {
		return allocReq{req: &apiv1.MachineServiceCreateRequest{ProjectId: l.project, ImageId: "debian-12", PartitionId: "p1", SizeId: "s1"},
			call: auth.CallFrom(l.ctx)}
	}
	outs := l.a.runAllocBatch(l.ctx, allocKey{partition: "p1", size: "s1", project: l.project}, []allocReq{req(), req()})
	for i, o := range outs {
		if o.Err != nil || o.Val.id == "" {
			t.Fatalf("batch call %d: %+v, want it served by the batch", i, o)
		}
		if checked[o.Val.id] == 0 {
			t.Fatalf("batched allocation of %s did not consult the rule (%v)", o.Val.id, checked)
		}
	}

	// By id: the rule refuses the last machine.
	var last string
	for _, id := range ids {
		if l.get(id).GetAllocation() == nil {
			last = id
		}
	}
	mu.Lock()
	refused = last
	mu.Unlock()
	if _, err := l.create(&apiv1.MachineServiceCreateRequest{Id: last}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("allocating %s, which the rule refuses, by id: %v, want FailedPrecondition", last, err)
	}
	if _, err := l.create(&apiv1.MachineServiceCreateRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("allocating the one machine the rule refuses: %v, want ResourceExhausted", err)
	}
}
