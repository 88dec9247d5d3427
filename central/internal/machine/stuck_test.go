package machine

import (
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/metalfleet/metalfleet/central/internal/bmc"
	"github.com/metalfleet/metalfleet/central/internal/fsm"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// stuckLab is a lab with a metal-bmc agent in p1 and a machine
// aggregate over the hub.
type stuckLab struct {
	*lab
	ms    *Machines
	bmcID string
}

func newStuckLab(t *testing.T) *stuckLab {
	t.Helper()
	l := newLab(t)
	var id string
	if err := l.st.Tx(l.ctx, func(tx pgx.Tx) error {
		e, err := l.hub.Enroll(l.ctx, tx, agentv1.Kind_KIND_BMC, "bmc-p1", "p1", "test")
		id = e.ID
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return &stuckLab{lab: l, ms: New(l.st, aliveWithin, WithDocs(l.hub)), bmcID: id}
}

// exec runs statements on the test's database, standing in for time
// passing and for metal-bmc's reports.
func (l *stuckLab) exec(sql string, args ...any) {
	l.t.Helper()
	if _, err := l.st.Pool().Exec(l.ctx, sql, args...); err != nil {
		l.t.Fatalf("%s: %v", sql, err)
	}
}

// withBMC records that the partition's metal-bmc reads machine id's BMC.
func (l *stuckLab) withBMC(id string) {
	l.exec(`INSERT INTO machine_bmcs (machine_uuid, partition_id, agent_id, reachable, fact) VALUES ($1, 'p1', $2, TRUE, '{}')`, id, l.bmcID)
}

// event reports lifecycle or other events on machine id.
func (l *stuckLab) event(id string, types ...string) {
	l.t.Helper()
	for _, typ := range types {
		if err := l.st.Tx(l.ctx, func(tx pgx.Tx) error {
			if _, err := Table.GetForUpdate(l.ctx, tx, id); err != nil {
				return err
			}
			return Record(l.ctx, tx, Event{Machine: id, Type: typ})
		}); err != nil {
			l.t.Fatal(err)
		}
	}
}

// age makes machine id's last event (and last cycle) minutes old.
func (l *stuckLab) age(id string, minutes int) {
	l.exec(`UPDATE machines SET last_event_at = now() - $2 * INTERVAL '1 minute',
		stuck_cycled_at = CASE WHEN stuck_cycled_at IS NULL THEN NULL ELSE now() - $2 * INTERVAL '1 minute' END WHERE id = $1`, id, minutes)
}

// intents reads machine id's BMC intents as raised.
func (l *stuckLab) intents(id string) *agentv1.BmcMachine {
	l.t.Helper()
	var raw []byte
	err := l.st.Pool().QueryRow(l.ctx, `SELECT intent FROM bmc_intents WHERE machine_uuid = $1`, id).Scan(&raw)
	if err == pgx.ErrNoRows {
		return &agentv1.BmcMachine{}
	}
	if err != nil {
		l.t.Fatal(err)
	}
	m := &agentv1.BmcMachine{}
	if err := protojson.Unmarshal(raw, m); err != nil {
		l.t.Fatal(err)
	}
	return m
}

// counted reads machine id's stuck episode.
func (l *stuckLab) counted(id string) (state string, cycles int, exhausted bool) {
	l.t.Helper()
	if err := l.st.Pool().QueryRow(l.ctx, `SELECT stuck_state, stuck_cycles, stuck_exhausted FROM machines WHERE id = $1`, id).
		Scan(&state, &cycles, &exhausted); err != nil {
		l.t.Fatal(err)
	}
	return state, cycles, exhausted
}

// events lists the types of machine id's events of kind typ.
func (l *stuckLab) events(id, typ string) []string {
	l.t.Helper()
	rows, err := l.st.Pool().Query(l.ctx, `SELECT message FROM machine_events WHERE machine_id = $1 AND event = $2 ORDER BY seq`, id, typ)
	if err != nil {
		l.t.Fatal(err)
	}
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		l.t.Fatal(err)
	}
	return out
}

func (l *stuckLab) issues(id string) []string {
	l.t.Helper()
	m, err := l.ms.Get(l.ctx, l.st.Pool(), id)
	if err != nil {
		l.t.Fatal(err)
	}
	var out []string
	for _, is := range m.GetIssues() {
		out = append(out, is.GetId())
	}
	return out
}

func (l *stuckLab) policy(off bool, maxCycles uint32) {
	l.t.Helper()
	if _, err := bmc.Set(l.ctx, l.st, l.hub, &apiv1.PartitionBMC{PartitionId: "p1", StuckCycleDisabled: off, StuckMaxCycles: maxCycles}); err != nil {
		l.t.Fatal(err)
	}
}

// TestStuckRule: which machines get a power cycle, which one is given up
// on, and what each leaves behind.
func TestStuckRule(t *testing.T) {
	t.Parallel()
	const (
		nothing = iota
		cycled
		exhausted
	)
	tests := []struct {
		name  string
		setup func(l *stuckLab, id string)
		want  int
		// pxe: the cycle boots PXE.
		pxe bool
	}{
		{"not stuck yet", func(l *stuckLab, id string) {
			l.event(id, "PXE Booting", "Preparing")
			l.age(id, 9)
		}, nothing, false},
		{"stuck preparing", func(l *stuckLab, id string) {
			l.event(id, "PXE Booting", "Preparing")
			l.age(id, 11)
		}, cycled, true},
		{"stuck installing for longer than its timeout", func(l *stuckLab, id string) {
			l.event(id, "Installing")
			l.age(id, 31)
		}, cycled, true},
		{"installing within its timeout", func(l *stuckLab, id string) {
			l.event(id, "Installing")
			l.age(id, 20)
		}, nothing, false},
		{"stuck booting the new kernel keeps its boot order", func(l *stuckLab, id string) {
			l.event(id, "Installing", "Booting New Kernel")
			l.age(id, 11)
		}, cycled, false},
		{"stable state", func(l *stuckLab, id string) {
			l.age(id, 48*60)
		}, nothing, false},
		{"no BMC", func(l *stuckLab, id string) {
			l.exec(`DELETE FROM machine_bmcs WHERE machine_uuid = $1`, id)
			l.event(id, "PXE Booting", "Preparing")
			l.age(id, 11)
		}, nothing, false},
		{"partition does not cycle", func(l *stuckLab, id string) {
			l.policy(true, 0)
			l.event(id, "PXE Booting", "Preparing")
			l.age(id, 11)
		}, nothing, false},
		{"locked by an operator", func(l *stuckLab, id string) {
			l.event(id, "PXE Booting", "Preparing")
			if err := l.ms.SetState(l.ctx, id, apiv1.MachineState_MACHINE_STATE_LOCKED, "maintenance"); err != nil {
				l.t.Fatal(err)
			}
			l.age(id, 11)
		}, nothing, false},
		{"cycled recently", func(l *stuckLab, id string) {
			l.event(id, "PXE Booting", "Preparing")
			l.exec(`UPDATE machines SET stuck_state = 'Preparing', stuck_cycles = 1, stuck_cycled_at = now() - INTERVAL '5 minutes',
				last_event_at = now() - INTERVAL '11 minutes' WHERE id = $1`, id)
		}, nothing, false},
		{"max reached", func(l *stuckLab, id string) {
			l.event(id, "PXE Booting", "Preparing")
			l.exec(`UPDATE machines SET stuck_state = 'Preparing', stuck_cycles = 3, stuck_cycled_at = now() - INTERVAL '11 minutes',
				last_event_at = now() - INTERVAL '11 minutes' WHERE id = $1`, id)
		}, exhausted, false},
		{"partition's own max reached", func(l *stuckLab, id string) {
			l.policy(false, 1)
			l.event(id, "PXE Booting", "Preparing")
			l.exec(`UPDATE machines SET stuck_state = 'Preparing', stuck_cycles = 1, stuck_cycled_at = now() - INTERVAL '11 minutes',
				last_event_at = now() - INTERVAL '11 minutes' WHERE id = $1`, id)
		}, exhausted, false},
		{"max reached in another state counts anew", func(l *stuckLab, id string) {
			l.event(id, "PXE Booting", "Preparing")
			l.exec(`UPDATE machines SET stuck_state = 'Installing', stuck_cycles = 3, stuck_exhausted = TRUE,
				last_event_at = now() - INTERVAL '11 minutes' WHERE id = $1`, id)
		}, cycled, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := newStuckLab(t)
			id := l.machine(l.ms, 1)
			l.withBMC(id)
			tt.setup(l, id)
			s := NewStuck(l.st, l.hub, nil, 0)
			res, err := s.Reconcile(l.ctx)
			if err != nil {
				t.Fatal(err)
			}
			in := l.intents(id)
			_, cycles, gaveUp := l.counted(id)
			switch tt.want {
			case nothing:
				if len(res.Cycled)+len(res.Exhausted) != 0 || in.GetPower() != nil {
					t.Fatalf("result %+v, intents %v: want nothing", res, in)
				}
			case cycled:
				if len(res.Cycled) != 1 || res.Cycled[0] != id || len(res.Exhausted) != 0 {
					t.Fatalf("result %+v: want %s cycled", res, id)
				}
				if in.GetPower().GetAction() != agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE || in.GetPower().GetGeneration() != 1 {
					t.Fatalf("power intent %v, want cycle generation 1", in.GetPower())
				}
				if got := in.GetBoot().GetDevice() == agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE; got != tt.pxe {
					t.Fatalf("boot intent %v, want PXE %v", in.GetBoot(), tt.pxe)
				}
				if cycles != 1 {
					t.Fatalf("stuck cycles %d, want 1", cycles)
				}
				if ev := l.events(id, EventStuckCycle); len(ev) != 1 || !strings.Contains(ev[0], "power cycle 1 of 3") {
					t.Fatalf("events %q", ev)
				}
				// The partition's metal-bmc document carries the cycle.
				var raw []byte
				if err := l.st.Pool().QueryRow(l.ctx, `SELECT desired FROM agents WHERE id = $1`, l.bmcID).Scan(&raw); err != nil {
					t.Fatal(err)
				}
				d := &agentv1.Desired{}
				if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, d); err != nil {
					t.Fatal(err)
				}
				if ms := d.GetBmc().GetMachines(); len(ms) != 1 || ms[0].GetPower().GetGeneration() != 1 {
					t.Fatalf("metal-bmc document machines %v", ms)
				}
				if slices.Contains(l.issues(id), fsm.IssueStuckCyclesExhausted) {
					t.Fatal("exhausted issue after a cycle")
				}
			case exhausted:
				if len(res.Exhausted) != 1 || len(res.Cycled) != 0 || in.GetPower() != nil {
					t.Fatalf("result %+v, intents %v: want %s given up on, no cycle", res, in, id)
				}
				if !gaveUp {
					t.Fatal("not marked exhausted")
				}
				if !slices.Contains(l.issues(id), fsm.IssueStuckCyclesExhausted) {
					t.Fatalf("issues %v lack %s", l.issues(id), fsm.IssueStuckCyclesExhausted)
				}
				if ev := l.events(id, EventStuckGaveUp); len(ev) != 1 || !strings.Contains(ev[0], "Preparing") {
					t.Fatalf("events %q", ev)
				}
				// Giving up is once: the next pass leaves it alone.
				l.age(id, 11)
				if res, err := s.Reconcile(l.ctx); err != nil || len(res.Cycled)+len(res.Exhausted) != 0 {
					t.Fatalf("second pass %+v, %v", res, err)
				}
			}
		})
	}
}

// TestStuckOncePerEpisode: replicas reconciling at the same time raise one
// cycle per stuck episode, never two, and the next episode (after the
// timeout elapsed again since the cycle) gets the next generation.
func TestStuckOncePerEpisode(t *testing.T) {
	t.Parallel()
	l := newStuckLab(t)
	var ids []string
	for n := 1; n <= 3; n++ {
		id := l.machine(l.ms, n)
		l.withBMC(id)
		l.event(id, "PXE Booting", "Preparing")
		l.age(id, 11)
		ids = append(ids, id)
	}
	const replicas = 12
	reconcile := func() int {
		var (
			wg     sync.WaitGroup
			mu     sync.Mutex
			cycled int
		)
		for range replicas {
			// A reconciler each, as each replica has its own.
			s := NewStuck(l.st, l.hub, nil, 0)
			wg.Go(func() {
				res, err := s.Reconcile(l.ctx)
				if err != nil {
					t.Error(err)
				}
				mu.Lock()
				cycled += len(res.Cycled)
				mu.Unlock()
			})
		}
		wg.Wait()
		return cycled
	}
	for episode := uint64(1); episode <= 2; episode++ {
		if got := reconcile(); got != len(ids) {
			t.Fatalf("episode %d: %d cycles raised by %d replicas, want %d (one per machine)", episode, got, replicas, len(ids))
		}
		for _, id := range ids {
			if g := l.intents(id).GetPower().GetGeneration(); g != episode {
				t.Fatalf("episode %d: machine %s power generation %d", episode, id, g)
			}
			if ev := l.events(id, EventStuckCycle); len(ev) != int(episode) {
				t.Fatalf("episode %d: machine %s cycle events %q", episode, id, ev)
			}
		}
		// Nothing more before the timeout elapsed again since the cycle.
		if got := reconcile(); got != 0 {
			t.Fatalf("episode %d: %d cycles raised again at once", episode, got)
		}
		for _, id := range ids {
			l.age(id, 11)
		}
	}
}

// TestStuckCountResets: the count belongs to the state the machine is
// stuck in; a stable state clears it and the issue, and being stuck in
// another state counts anew.
func TestStuckCountResets(t *testing.T) {
	t.Parallel()
	l := newStuckLab(t)
	l.policy(false, 2)
	id := l.machine(l.ms, 1)
	l.withBMC(id)
	s := NewStuck(l.st, l.hub, nil, 0)
	pass := func() StuckResult {
		t.Helper()
		res, err := s.Reconcile(l.ctx)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	want := func(state string, cycles int, exhausted bool) {
		t.Helper()
		if s, c, e := l.counted(id); s != state || c != cycles || e != exhausted {
			t.Fatalf("stuck episode (%q, %d, exhausted %v), want (%q, %d, %v)", s, c, e, state, cycles, exhausted)
		}
	}
	// Stuck in Preparing: two cycles, the machine PXE-boots back into
	// Preparing in between (the same episode), then central gives up.
	l.event(id, "PXE Booting", "Preparing")
	for i := 1; i <= 2; i++ {
		l.age(id, 11)
		if res := pass(); len(res.Cycled) != 1 {
			t.Fatalf("pass %d: %+v", i, res)
		}
		want("Preparing", i, false)
		l.event(id, "PXE Booting", "Preparing")
	}
	l.age(id, 11)
	if res := pass(); len(res.Exhausted) != 1 {
		t.Fatalf("third pass: %+v", res)
	}
	want("Preparing", 2, true)
	if !slices.Contains(l.issues(id), fsm.IssueStuckCyclesExhausted) {
		t.Fatalf("issues %v", l.issues(id))
	}
	// The machine moves on and is stuck in Registering: a new count.
	l.event(id, "Registering")
	if slices.Contains(l.issues(id), fsm.IssueStuckCyclesExhausted) {
		t.Fatalf("issues after a state change %v", l.issues(id))
	}
	l.age(id, 11)
	if res := pass(); len(res.Cycled) != 1 {
		t.Fatalf("stuck in Registering: %+v", res)
	}
	want("Registering", 1, false)
	// A stable state ends the episode.
	l.event(id, "Waiting")
	want("", 0, false)
	if g := l.intents(id).GetPower().GetGeneration(); g != 3 {
		t.Fatalf("power generation %d, want 3", g)
	}
}
