package machine

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/catalog"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// TestDualAttach: a machine is allocatable only when LLDP on its NICs
// sees two different switches of its partition; otherwise it is refused
// (by id: FailedPrecondition saying which link is missing; by size: not
// picked) and carries the issue, unless its partition allows single
// attachment.
func TestDualAttach(t *testing.T) {
	l := newLab(t)
	ms := New(l.st, aliveWithin, WithDocs(l.hub))
	if _, err := catalog.UpdatePartition(l.ctx, l.st, &apiv1.Partition{Id: "p1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := catalog.CreatePartition(l.ctx, l.st, &apiv1.Partition{Id: "p2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.st.Pool().Exec(l.ctx, `INSERT INTO switches (id, partition_id, spec) VALUES
		('leaf01', 'p1', '{}'), ('leaf02', 'p1', '{}'), ('leaf09', 'p2', '{}')`); err != nil {
		t.Fatal(err)
	}
	for i, tc := range []struct {
		name    string
		links   []string
		refused []string // in the error and the issue; nil: allocatable
	}{
		{name: "two leaves", links: []string{"leaf01 Ethernet0", "leaf02 Ethernet0"}},
		{name: "one link", links: []string{"leaf01 Ethernet4", ""}, refused: []string{"only leaf01 (eth0→Ethernet4)", "on eth1"}},
		{name: "both links to one leaf", links: []string{"leaf01 Ethernet8", "leaf01 Ethernet12"}, refused: []string{"only leaf01 (eth0→Ethernet8, eth1→Ethernet12)"}},
		{name: "second leaf in another partition", links: []string{"leaf01 Ethernet16", "leaf09 Ethernet0"}, refused: []string{"only leaf01", "on eth1"}},
		{name: "an unknown switch", links: []string{"leaf01 Ethernet20", "leaf77 Ethernet0"}, refused: []string{"only leaf01", "on eth1"}},
		{name: "no links", refused: []string{"no switch of partition p1", "on eth0, eth1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := l.machineLinked(ms, 100+i, tc.links)
			m, err := ms.Get(l.ctx, l.st.Pool(), id)
			if err != nil {
				t.Fatal(err)
			}
			var issue string
			for _, is := range m.GetIssues() {
				if is.GetId() == IssueSingleAttach {
					issue = is.GetDescription()
				}
			}
			_, err = ms.Allocate(l.ctx, &apiv1.MachineServiceCreateRequest{Id: id, ProjectId: project, ImageId: "debian-12"})
			if tc.refused == nil {
				if err != nil || issue != "" {
					t.Fatalf("dual attached machine: allocate %v, issue %q; want allocated without issue", err, issue)
				}
				return
			}
			if status.Code(err) != codes.FailedPrecondition {
				t.Fatalf("allocate: %v, want FailedPrecondition", err)
			}
			for _, want := range tc.refused {
				if !strings.Contains(err.Error(), want) || !strings.Contains(issue, want) {
					t.Errorf("error %q / issue %q: want both to say %q", err, issue, want)
				}
			}
		})
	}
	// A single-attached machine is not picked by size either, and the
	// partition's setting lets it be allocated.
	id := l.machineLinked(ms, 200, []string{"leaf02 Ethernet40", ""})
	req := &apiv1.MachineServiceCreateRequest{ProjectId: project, ImageId: "debian-12", PartitionId: "p1", SizeId: "s1"}
	if _, err := ms.Allocate(l.ctx, req); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("by size with only single-attached machines waiting: %v, want ResourceExhausted", err)
	}
	if _, err := catalog.UpdatePartition(l.ctx, l.st, &apiv1.Partition{Id: "p1", AllowSingleAttach: true}); err != nil {
		t.Fatal(err)
	}
	m, err := ms.Get(l.ctx, l.st.Pool(), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, is := range m.GetIssues() {
		if is.GetId() == IssueSingleAttach {
			t.Errorf("partition allows single attachment, yet: %v", is)
		}
	}
	if _, err := ms.Allocate(l.ctx, req); err != nil {
		t.Fatalf("single attachment allowed: %v", err)
	}
}

// TestAllocationRuleOnePlace: a rule added to the machine aggregate (as
// the dual-attach rule is) is consulted by every
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
