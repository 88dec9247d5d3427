package lab

import (
	"testing"
	"time"
)

func TestRebootWatch(t *testing.T) {
	t0 := time.Date(2026, 11, 24, 5, 0, 0, 0, time.UTC)
	type step struct {
		event string
		want  int
	}
	tests := []struct {
		name  string
		steps []step
		owes  bool // a reboot still owed at the end
	}{
		{"free, then the machine reboots itself", []step{{evReclaim, watchStarted}, {evPlanned, watchRebooted}}, false},
		{"reinstall, then a PXE boot", []step{{evReinstall, watchStarted}, {evPXEBooting, watchRebooted}}, false},
		{"free of a machine that is off", []step{{evReclaim, watchStarted}}, true},
		{"reinstall right after free: one reboot", []step{{evReclaim, watchStarted}, {evReinstall, watchNothing}}, true},
		{"PXE boots without a request", []step{{evPXEBooting, watchNothing}, {evPlanned, watchNothing}}, false},
		{"unrelated events", []step{{"Allocated", watchNothing}, {"Phoned Home", watchNothing}}, false},
		{"a second free after the first was settled", []step{{evReclaim, watchStarted}, {evPlanned, watchRebooted}, {evReclaim, watchStarted}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var w rebootWatch
			for i, s := range tc.steps {
				if got := w.observe(s.event, t0.Add(time.Duration(i)*time.Second)); got != s.want {
					t.Fatalf("step %d (%s) = %d, want %d", i, s.event, got, s.want)
				}
			}
			if w.pending != tc.owes {
				t.Fatalf("owes a reboot = %v, want %v", w.pending, tc.owes)
			}
			w.done()
			if w.pending {
				t.Fatal("done left a reboot owed")
			}
		})
	}
}
