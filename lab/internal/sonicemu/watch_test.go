package sonicemu

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is an Applier that keeps the plans (the Redis and its
// notifications are real; what runs the commands is not the point here).
type recorder struct {
	mu    sync.Mutex
	plans [][]Cmd
	fail  int // fail the next n applies
}

func (r *recorder) Apply(_ context.Context, p []Cmd) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.plans = append(r.plans, p)
	if r.fail > 0 {
		r.fail--
		return errors.New("injected")
	}
	return nil
}

// waitFor waits until a recorded plan after the first skip plans holds
// line, and returns how long that took.
func (r *recorder) waitFor(t *testing.T, skip int, line string) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < 5*time.Second {
		r.mu.Lock()
		for _, p := range r.plans[min(skip, len(r.plans)):] {
			if slices.ContainsFunc(p, func(c Cmd) bool { return c.String() == line }) {
				r.mu.Unlock()
				return time.Since(start)
			}
		}
		r.mu.Unlock()
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no plan with %q within 5s", line)
	return 0
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.plans)
}

func TestWatchRendersOnNotification(t *testing.T) {
	c, sep := startRedis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	load(t, c, rows{"PORT|Ethernet0": {"mtu": "9216", "admin_status": "up"}})
	rec := &recorder{}
	// A resync far away: only notifications can render the changes.
	e := &Emulator{Client: c, Sep: sep, Apply: rec, Resync: time.Hour}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	rec.waitFor(t, 0, "ip link set dev Ethernet0 mtu 9216")

	steps := []struct {
		name  string
		write func() error
		want  string
	}{
		{"hset field", func() error { return c.HSet(ctx, "PORT|Ethernet0", "admin_status", "down").Err() },
			"ip link set dev Ethernet0 down"},
		{"new row", func() error { return c.HSet(ctx, "VRF|Vrf104001", "vni", "104001", "fallback", "false").Err() },
			"ip link add Vrf104001 type vrf table 104001"},
		{"address row", func() error { return c.HSet(ctx, "INTERFACE|Ethernet0|192.0.2.1/30", "NULL", "NULL").Err() },
			"ip addr replace 192.0.2.1/30 dev Ethernet0"},
		{"del row", func() error { return c.Del(ctx, "INTERFACE|Ethernet0|192.0.2.1/30").Err() },
			"ip addr del 192.0.2.1/30 dev Ethernet0"},
		{"del vrf", func() error { return c.Del(ctx, "VRF|Vrf104001").Err() },
			"ip link del dev Vrf104001"},
	}
	for _, s := range steps {
		n := rec.count()
		if err := s.write(); err != nil {
			t.Fatal(err)
		}
		took := rec.waitFor(t, n, s.want)
		t.Logf("%s: rendered %s after %v", s.name, s.want, took)
	}
	// A table the emulation does not render wakes nothing.
	n := rec.count()
	if err := c.HSet(ctx, "DEVICE_METADATA|localhost", "hostname", "leaf01").Err(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if got := rec.count(); got != n {
		t.Errorf("a DEVICE_METADATA write rendered %d plans", got-n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestResyncAndRetry(t *testing.T) {
	c, sep := startRedis(t)
	ctx := context.Background()
	rec := &recorder{}
	e := &Emulator{Client: c, Sep: sep, Apply: rec}
	load(t, c, rows{"PORT|Ethernet0": {"mtu": "9216", "admin_status": "up"}, "VRF|Vrf1": {"vni": "1"}})
	if _, err := e.Sync(ctx, false); err != nil {
		t.Fatal(err)
	}
	// Nothing changed: an incremental sync runs nothing, a resync renders
	// everything again (idempotent commands: that heals drift).
	if p, err := e.Sync(ctx, false); err != nil || len(p) != 0 {
		t.Fatalf("no-op sync ran %v, %v", p, err)
	}
	p, err := e.Sync(ctx, true)
	if err != nil || !strings.Contains(Format(p), "ip link add Vrf1 type vrf table 1") {
		t.Fatalf("resync ran %q, %v", Format(p), err)
	}
	// A failed render is tried again: the removal stays in the plan
	// until it succeeds.
	if err := c.Del(ctx, "VRF|Vrf1").Err(); err != nil {
		t.Fatal(err)
	}
	rec.fail = 1
	if _, err := e.Sync(ctx, false); err == nil {
		t.Fatal("injected failure not reported")
	}
	p, err = e.Sync(ctx, false)
	if err != nil || Format(p) != "ip link del dev Vrf1\n" {
		t.Fatalf("retry ran %q, %v", Format(p), err)
	}
	if p, _ := e.Sync(ctx, false); len(p) != 0 {
		t.Fatalf("after success ran %q", Format(p))
	}
}

// TestRunResyncRendersOnlyWhatChanged: a write whose notification never
// came (notifications off) is rendered by the periodic re-read, and that
// re-read renders only the change, never everything again; the full
// render comes every Rerender.
func TestRunResyncRendersOnlyWhatChanged(t *testing.T) {
	c, sep := startRedis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	load(t, c, rows{"PORT|Ethernet0": {"mtu": "9216", "admin_status": "up"}})
	rec := &recorder{}
	e := &Emulator{Client: c, Sep: sep, Apply: rec, Resync: 100 * time.Millisecond, Rerender: -1}
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	rec.waitFor(t, 0, "ip link set dev Ethernet0 mtu 9216")
	// Run turned notifications on; turn them off, as if they were lost.
	if err := c.ConfigSet(ctx, "notify-keyspace-events", "").Err(); err != nil {
		t.Fatal(err)
	}
	n := rec.count()
	if err := c.HSet(ctx, "VRF|Vrf104001", "vni", "104001", "fallback", "false").Err(); err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, n, "ip link add Vrf104001 type vrf table 104001")
	time.Sleep(500 * time.Millisecond) // five more re-reads
	rec.mu.Lock()
	for _, p := range rec.plans[n:] {
		if slices.ContainsFunc(p, func(c Cmd) bool { return strings.Contains(c.String(), "Ethernet0 mtu") }) {
			t.Errorf("a re-read rendered the unchanged port again: %s", Format(p))
		}
	}
	rec.mu.Unlock()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}

	// With a Rerender, everything is rendered again.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	rec = &recorder{}
	e = &Emulator{Client: c, Sep: sep, Apply: rec, Resync: time.Hour, Rerender: 100 * time.Millisecond}
	go func() { done <- e.Run(ctx) }()
	rec.waitFor(t, 1, "ip link set dev Ethernet0 mtu 9216")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
