// Package fsm is the machine lifecycle: one explicit state machine over the
// provisioning events installers, PXE services and installed systems report
// (docs/machine-lifecycle.md has the diagram). It is pure: central's store
// feeds it the current state and writes what it answers in the same
// transaction as the event row.
package fsm

import (
	"fmt"
	"time"
)

// State is a lifecycle state; its name is the event that leads into it.
type State string

// The states, named as the events that lead into them (DESIGN.md §4).
const (
	// None is a machine no event was recorded for yet.
	None             State = ""
	PXEBooting       State = "PXE Booting"
	Preparing        State = "Preparing"
	Registering      State = "Registering"
	Waiting          State = "Waiting"
	Installing       State = "Installing"
	BootingNewKernel State = "Booting New Kernel"
	PhonedHome       State = "Phoned Home"
	PlannedReboot    State = "Planned Reboot"
	MachineReclaim   State = "Machine Reclaim"
	Crashed          State = "Crashed"
)

// States lists every state but None, in lifecycle order.
func States() []State {
	return []State{PXEBooting, Preparing, Registering, Waiting, Installing, BootingNewKernel, PhonedHome, PlannedReboot, MachineReclaim, Crashed}
}

// Parse turns an event name into its state.
func Parse(event string) (State, bool) {
	for _, s := range States() {
		if string(s) == event {
			return s, true
		}
	}
	return None, false
}

// follows reports whether event may follow cur.
func follows(cur, event State) bool {
	switch event {
	case PXEBooting, Preparing, Crashed, PlannedReboot, MachineReclaim:
		// A server can be power-cycled, crash or be rebooted at any moment,
		// and the PXE service or installer that sees it next says so.
		return true
	case Registering:
		return cur == Preparing
	case Waiting:
		return cur == Registering || cur == Waiting
	case Installing:
		return cur == Registering || cur == Waiting || cur == Installing
	case BootingNewKernel:
		return cur == Installing
	case PhonedHome:
		// An installed machine rebooted by its owner comes back to Phoned
		// Home from Planned Reboot.
		return cur == BootingNewKernel || cur == PhonedHome || cur == PlannedReboot
	}
	return false
}

// Transition answers the state after event in state cur. An invalid
// transition returns cur and an error: the caller keeps the event in the
// log with the error (an operator sees it as an issue) but does not move
// the machine, so one wrong report cannot throw a machine out of the pool.
func Transition(cur State, event State) (State, error) {
	if _, ok := Parse(string(event)); !ok {
		return cur, fmt.Errorf("unknown provisioning event %q", event)
	}
	if follows(cur, event) {
		return event, nil
	}
	name := string(cur)
	if cur == None {
		name = "no state"
	}
	return cur, fmt.Errorf("%q cannot follow %q", event, name)
}

// Stable states are where a machine stays as long as nobody acts: they
// reset the crash counter and have no timeout.
func Stable(s State) bool { return s == Waiting || s == PhonedHome }

// Timeout is how long a machine may stay in s before it counts as stuck;
// 0 means it may stay forever. The values are the longest a healthy step
// takes on slow hardware (a 30-minute install of a big image over a slow
// link) plus margin.
func Timeout(s State) time.Duration {
	switch s {
	case PXEBooting, Preparing, Registering:
		return 10 * time.Minute
	case Installing:
		return 30 * time.Minute
	case BootingNewKernel, PlannedReboot, Crashed:
		return 10 * time.Minute
	case MachineReclaim:
		return 15 * time.Minute
	}
	return 0
}

// PXEWhenStuck says whether a machine stuck in s is power-cycled into PXE
// (the BMC's next boot set to the network) rather than into its own boot
// order. The states before the installed system runs (PXE Booting,
// Preparing, Registering, Installing, Machine Reclaim) are the installer's,
// which only ever runs PXE-booted: a cycle that lands on a half-written
// disk instead would not help. Waiting has no timeout. After the install
// (Booting New Kernel) and for an installed machine (Planned Reboot,
// Crashed) the system on the disk is what should come up, so the cycle
// keeps the machine's boot order (the PXE service sends an installed
// machine to its disk anyway). A machine that crashed before it was ever
// installed crashed in the installer: PXE.
func PXEWhenStuck(s State, installed bool) bool {
	switch s {
	case PXEBooting, Preparing, Registering, Installing, MachineReclaim:
		return true
	case Crashed:
		return !installed
	}
	return false
}

// CrashLoop is how many crashes without reaching a stable state make a
// crash loop.
const CrashLoop = 3

// Crashes is the crash counter after event, given the counter before.
func Crashes(before int, event State) int {
	switch {
	case event == Crashed:
		return before + 1
	case Stable(event):
		return 0
	}
	return before
}

// Issue is something about a machine an operator should look at.
type Issue struct {
	ID          string
	Description string
}

// Issue ids.
const (
	IssueCrashLoop = "crash-loop"
	IssueStuck     = "stuck"
	// IssueStuckCyclesExhausted: central power-cycled the stuck machine as
	// often as its partition allows and gives up (docs/bmc.md).
	IssueStuckCyclesExhausted = "stuck-cycles-exhausted"
	IssueNoSize               = "no-size"
	IssueFailedEvent          = "failed-event"
	IssueDead                 = "dead"
	IssueUnknown              = "liveliness-unknown"
)

// View is what Issues needs to know of a machine.
type View struct {
	State       State
	LastEventAt time.Time
	Crashes     int
	SizeID      string
	// LastError is the error of the newest event, if it was invalid.
	LastError string
	// Dead / Unknown liveliness of the machine's agent.
	Dead, Unknown bool
	// Registered: the machine reported its hardware at least once.
	Registered bool
	// StuckCycles is how many power cycles central raised while the
	// machine was stuck in StuckState; StuckExhausted says it gave up.
	StuckState     State
	StuckCycles    int
	StuckExhausted bool
}

// Issues lists the machine's issues at now.
func Issues(v View, now time.Time) []Issue {
	var out []Issue
	if v.Crashes >= CrashLoop {
		out = append(out, Issue{IssueCrashLoop, fmt.Sprintf("crashed %d times without reaching Waiting or Phoned Home", v.Crashes)})
	}
	if t := Timeout(v.State); t > 0 && !v.LastEventAt.IsZero() && now.Sub(v.LastEventAt) > t {
		out = append(out, Issue{IssueStuck, fmt.Sprintf("%s for %s (longer than %s)", v.State, now.Sub(v.LastEventAt).Round(time.Second), t)})
	}
	// Only while the machine is still in the state central gave up on: a
	// machine that moved on is a new episode.
	if v.StuckExhausted && v.StuckState == v.State && v.State != None {
		out = append(out, Issue{IssueStuckCyclesExhausted, fmt.Sprintf("stuck in %s after %d power cycles through its BMC; no more cycles: look at the machine", v.State, v.StuckCycles)})
	}
	if v.Registered && v.SizeID == "" {
		out = append(out, Issue{IssueNoSize, "the hardware matches no size: the machine cannot be allocated"})
	}
	if v.LastError != "" {
		out = append(out, Issue{IssueFailedEvent, v.LastError})
	}
	switch {
	case v.Dead:
		out = append(out, Issue{IssueDead, "no contact with the machine for a long time"})
	case v.Unknown:
		out = append(out, Issue{IssueUnknown, "no recent contact with the machine"})
	}
	return out
}
