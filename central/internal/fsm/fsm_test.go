package fsm

import (
	"slices"
	"testing"
	"time"
)

// TestTransitionEveryStateAndEvent walks the whole table: every state
// (and no state) against every event, with the expected answer spelled
// out here independently of the implementation's switch.
func TestTransitionEveryStateAndEvent(t *testing.T) {
	valid := map[State][]State{
		Registering:      {Preparing},
		Waiting:          {Registering, Waiting},
		Installing:       {Registering, Waiting, Installing},
		BootingNewKernel: {Installing},
		PhonedHome:       {BootingNewKernel, PhonedHome, PlannedReboot},
	}
	anytime := []State{PXEBooting, Preparing, Crashed, PlannedReboot, MachineReclaim}
	all := append([]State{None}, States()...)
	for _, cur := range all {
		for _, ev := range States() {
			ok := slices.Contains(anytime, ev) || slices.Contains(valid[ev], cur)
			t.Run(string(cur)+"->"+string(ev), func(t *testing.T) {
				got, err := Transition(cur, ev)
				if ok {
					if err != nil || got != ev {
						t.Fatalf("Transition(%q, %q) = %q, %v; want %q, nil", cur, ev, got, err, ev)
					}
					return
				}
				if err == nil || got != cur {
					t.Fatalf("Transition(%q, %q) = %q, %v; want %q and an error", cur, ev, got, err, cur)
				}
			})
		}
	}
}

func TestTransitionUnknownEvent(t *testing.T) {
	got, err := Transition(Waiting, State("Dancing"))
	if err == nil || got != Waiting {
		t.Fatalf("got %q, %v; want Waiting and an error", got, err)
	}
}

func TestParse(t *testing.T) {
	for _, s := range States() {
		if got, ok := Parse(string(s)); !ok || got != s {
			t.Fatalf("Parse(%q) = %q, %v", s, got, ok)
		}
	}
	for _, bad := range []string{"", "waiting", "Allocated"} {
		if _, ok := Parse(bad); ok {
			t.Fatalf("Parse(%q) accepted", bad)
		}
	}
}

func TestCrashes(t *testing.T) {
	tests := []struct {
		before int
		ev     State
		want   int
	}{
		{0, Crashed, 1},
		{2, Crashed, 3},
		{2, PXEBooting, 2},
		{2, Preparing, 2},
		{3, Waiting, 0},
		{3, PhonedHome, 0},
		{1, Installing, 1},
	}
	for _, tt := range tests {
		if got := Crashes(tt.before, tt.ev); got != tt.want {
			t.Errorf("Crashes(%d, %q) = %d, want %d", tt.before, tt.ev, got, tt.want)
		}
	}
}

func TestEveryTransientStateHasATimeout(t *testing.T) {
	for _, s := range States() {
		if Stable(s) {
			if Timeout(s) != 0 {
				t.Errorf("stable state %q has a timeout", s)
			}
			continue
		}
		if Timeout(s) <= 0 {
			t.Errorf("state %q has no timeout: a machine could hang there unseen", s)
		}
	}
}

func TestIssues(t *testing.T) {
	now := time.Date(2026, 11, 24, 12, 0, 0, 0, time.UTC)
	ids := func(is []Issue) []string {
		var out []string
		for _, i := range is {
			out = append(out, i.ID)
		}
		return out
	}
	tests := []struct {
		name string
		v    View
		want []string
	}{
		{"healthy waiting", View{State: Waiting, LastEventAt: now.Add(-48 * time.Hour), SizeID: "s1", Registered: true}, nil},
		{"installing briefly", View{State: Installing, LastEventAt: now.Add(-time.Minute), SizeID: "s1", Registered: true}, nil},
		{"installing too long", View{State: Installing, LastEventAt: now.Add(-31 * time.Minute), SizeID: "s1", Registered: true}, []string{IssueStuck}},
		{"crash loop", View{State: Crashed, LastEventAt: now, Crashes: 3, SizeID: "s1", Registered: true}, []string{IssueCrashLoop}},
		{"two crashes", View{State: Crashed, LastEventAt: now, Crashes: 2, SizeID: "s1", Registered: true}, nil},
		{"no size", View{State: Waiting, LastEventAt: now, Registered: true}, []string{IssueNoSize}},
		{"not registered has no size issue", View{State: PXEBooting, LastEventAt: now}, nil},
		{"failed event", View{State: Waiting, LastEventAt: now, SizeID: "s1", Registered: true, LastError: "bad"}, []string{IssueFailedEvent}},
		{"dead", View{State: PhonedHome, LastEventAt: now, SizeID: "s1", Registered: true, Dead: true, Unknown: true}, []string{IssueDead}},
		{"unknown", View{State: PhonedHome, LastEventAt: now, SizeID: "s1", Registered: true, Unknown: true}, []string{IssueUnknown}},
		{"stuck cycles exhausted", View{State: Preparing, LastEventAt: now, StuckState: Preparing, StuckCycles: 3, StuckExhausted: true}, []string{IssueStuckCyclesExhausted}},
		{"exhausted and still stuck", View{State: Preparing, LastEventAt: now.Add(-11 * time.Minute), StuckState: Preparing, StuckCycles: 3, StuckExhausted: true}, []string{IssueStuck, IssueStuckCyclesExhausted}},
		{"exhausted in another state", View{State: Registering, LastEventAt: now, StuckState: Preparing, StuckCycles: 3, StuckExhausted: true}, nil},
		{"cycled, not exhausted", View{State: Preparing, LastEventAt: now, StuckState: Preparing, StuckCycles: 2}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ids(Issues(tt.v, now)); !slices.Equal(got, tt.want) {
				t.Fatalf("issues %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPXEWhenStuck(t *testing.T) {
	tests := []struct {
		s         State
		installed bool
		want      bool
	}{
		{PXEBooting, false, true},
		{Preparing, false, true},
		{Registering, true, true},
		{Installing, false, true},
		{MachineReclaim, true, true},
		{BootingNewKernel, false, false},
		{PlannedReboot, true, false},
		{Crashed, true, false},
		{Crashed, false, true},
		{Waiting, false, false},
	}
	for _, tt := range tests {
		if got := PXEWhenStuck(tt.s, tt.installed); got != tt.want {
			t.Errorf("PXEWhenStuck(%q, installed %v) = %v, want %v", tt.s, tt.installed, got, tt.want)
		}
	}
}
