package fleet

import (
	"fmt"
	"sync"
	"testing"
)

// TestWantedNeverOverflows: a burst of hints far larger than any queue,
// from many goroutines, leaves every local agent pending exactly once and
// ignores agents this replica does not hold.
func TestWantedNeverOverflows(t *testing.T) {
	h := &Hub{conns: newRegistry(), wanted: map[string]struct{}{}, wantWake: make(chan struct{}, 1)}
	const local = 20000
	for i := range local {
		h.conns.put(&conn{id: fmt.Sprint(i)})
	}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range local + 1000 {
				h.want(fmt.Sprint((i + g*977) % (local + 1000)))
			}
		})
	}
	wg.Wait()
	ids := h.takeWanted()
	if len(ids) != local {
		t.Fatalf("%d agents pending, want %d", len(ids), local)
	}
	if len(h.takeWanted()) != 0 {
		t.Fatal("pending set not cleared")
	}
	if h.hintEpoch.Load() != 8*(local+1000) {
		t.Fatalf("hint epoch %d, want %d", h.hintEpoch.Load(), 8*(local+1000))
	}
}
