package agent

import (
	"runtime"
	"testing"
)

func TestNewRegistry(t *testing.T) {
	reg := NewRegistry()
	// The runtime's metrics must fit beside the collectors.
	NewMetrics(reg).connect(1)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, mf := range mfs {
		got[mf.GetName()] = true
	}
	for _, tc := range []struct {
		name      string
		linuxOnly bool // the process collector reads /proc
	}{
		{name: "go_goroutines"},
		{name: "go_memstats_heap_alloc_bytes"},
		{name: "process_start_time_seconds", linuxOnly: true},
		{name: "metalfleet_agent_connected"},
	} {
		if tc.linuxOnly && runtime.GOOS != "linux" {
			continue
		}
		if !got[tc.name] {
			t.Errorf("%s missing from the registry", tc.name)
		}
	}
}
