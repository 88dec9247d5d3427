package web

import (
	"fmt"
	"testing"
	"time"
)

func TestLimiter(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newLimiter(3, 10*time.Second, func() time.Time { return now })
	const a, b = "52:54:00:00:00:01", "52:54:00:00:00:02"
	steps := []struct {
		advance time.Duration
		mac     string
		want    bool
	}{
		{0, a, true}, {0, a, true}, {0, a, true},
		{0, a, false},               // the burst is used up
		{0, b, true},                // another MAC has its own bucket
		{5 * time.Second, a, false}, // half a token back
		{5 * time.Second, a, true},  // a whole one
		{0, a, false},               // and gone again
		{time.Hour, a, true},        // refilled, never beyond the burst
		{0, a, true}, {0, a, true}, {0, a, false},
	}
	for i, s := range steps {
		now = now.Add(s.advance)
		if ok, wait := l.allow(s.mac); ok != s.want || (!ok && wait <= 0) {
			t.Fatalf("step %d (%s after %s): allowed %v (wait %s), want %v", i, s.mac, s.advance, ok, wait, s.want)
		}
	}
}

func TestLimiterBounded(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	l := newLimiter(1, time.Minute, func() time.Time { return now })
	for i := range maxBuckets {
		if ok, _ := l.allow(fmt.Sprintf("mac-%d", i)); !ok {
			t.Fatalf("MAC %d refused", i)
		}
	}
	// Every bucket is busy: a new MAC waits instead of growing the map.
	if ok, _ := l.allow("one-too-many"); ok || len(l.buckets) != maxBuckets {
		t.Fatalf("allowed %v with %d buckets", ok, len(l.buckets))
	}
	// Once they refilled, idle buckets make room.
	now = now.Add(time.Minute)
	if ok, _ := l.allow("one-too-many"); !ok || len(l.buckets) != 1 {
		t.Fatalf("after refill: allowed %v with %d buckets", ok, len(l.buckets))
	}
}
