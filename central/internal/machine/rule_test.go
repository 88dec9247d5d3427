package machine

import (
	"context"
	"errors"
	"reflect"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// The dual-attach rule is built in and, until the switch fabric reports
// links, accepts every machine.
func TestBothLinksSeenIsBuiltInPlaceholder(t *testing.T) {
	var found bool
	for _, r := range New(nil, 0).rules {
		found = found || reflect.ValueOf(r).Pointer() == reflect.ValueOf(Rule(bothLinksSeen)).Pointer()
	}
	if !found {
		t.Fatal("bothLinksSeen is not among the rules every allocation honours")
	}
	if err := bothLinksSeen(context.Background(), nil, Candidate{}); err != nil {
		t.Fatalf("placeholder refused a machine: %v", err)
	}
}

// TestAllocationRuleOnePlace: a rule added to the machine aggregate (as
// the dual-attach rule, bothLinksSeen, is) is consulted by every
// allocation path — one call, a batch of calls, a machine named by id —
// so an allocation rule is written once.
func TestAllocationRuleOnePlace(t *testing.T) {
	l := newLab(t)
	var (
		mu      sync.Mutex
		checked = map[string]int{}
		refused string
	)
	rule := func(_ context.Context, _ pgx.Tx, c Candidate) error {
		mu.Lock()
		defer mu.Unlock()
		checked[c.Machine.GetId()]++
		if c.Machine.GetId() == refused {
			return errors.New("only one link seen")
		}
		return nil
	}
	ms := New(l.st, aliveWithin, WithDocs(l.hub), WithRule(rule))
	var ids []string
	for i := range 4 {
		ids = append(ids, l.machine(ms, i))
	}
	req := func() *apiv1.MachineServiceCreateRequest {
		return &apiv1.MachineServiceCreateRequest{ProjectId: project, ImageId: "debian-12", PartitionId: "p1", SizeId: "s1"}
	}

	// One call.
	id, err := ms.Allocate(l.ctx, req())
	if err != nil {
		t.Fatal(err)
	}
	if checked[id] == 0 {
		t.Fatalf("single allocation of %s did not consult the rule (%v)", id, checked)
	}

	// A batch of two calls.
	call := auth.CallFrom(l.ctx)
	outs := ms.runAllocBatch(l.ctx, allocKey{partition: "p1", size: "s1", project: project}, []allocReq{{req: req(), call: call}, {req: req(), call: call}})
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
		m, err := ms.Get(l.ctx, l.st.Pool(), id)
		if err != nil {
			t.Fatal(err)
		}
		if m.GetAllocation() == nil {
			last = id
		}
	}
	mu.Lock()
	refused = last
	mu.Unlock()
	if _, err := ms.Allocate(l.ctx, &apiv1.MachineServiceCreateRequest{Id: last, ProjectId: project, ImageId: "debian-12"}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("allocating %s, which the rule refuses, by id: %v, want FailedPrecondition", last, err)
	}
	if _, err := ms.Allocate(l.ctx, req()); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("allocating the one machine the rule refuses: %v, want ResourceExhausted", err)
	}
}
