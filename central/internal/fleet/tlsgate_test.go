package fleet

import (
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

func value(t *testing.T, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	switch {
	case d.Counter != nil:
		return d.Counter.GetValue()
	case d.Gauge != nil:
		return d.Gauge.GetValue()
	}
	t.Fatal("not a counter or gauge")
	return 0
}

func TestTLSGateAdmitsWaitsAndSheds(t *testing.T) {
	g := NewTLSGate(2, 100*time.Millisecond)
	hold := make(chan struct{})
	var running, finished sync.WaitGroup
	for range 2 {
		raw, _ := net.Pipe()
		running.Add(1)
		finished.Go(func() {
			_ = g.handshake(raw, func() error { running.Done(); <-hold; return nil })
		})
	}
	running.Wait()

	// Both slots busy past the wait: shed, closed, counted.
	raw, far := net.Pipe()
	called := false
	err := g.handshake(raw, func() error { called = true; return nil })
	if err == nil || called {
		t.Fatalf("third handshake: err %v, ran %v; want shed without running", err, called)
	}
	if _, rerr := far.Read(make([]byte, 1)); rerr == nil {
		t.Error("shed connection left open")
	}
	if got := value(t, g.shed); got != 1 {
		t.Errorf("shed = %v, want 1", got)
	}

	// A slot freed within the wait admits the waiting one.
	done := make(chan error, 1)
	raw, _ = net.Pipe()
	go func() { done <- g.handshake(raw, func() error { return errors.New("peer left") }) }()
	time.Sleep(20 * time.Millisecond)
	if got := value(t, g.waiting); got != 1 {
		t.Errorf("waiting = %v, want 1", got)
	}
	hold <- struct{}{} // one of the first two completes
	if err := <-done; err == nil || err.Error() != "peer left" {
		t.Fatalf("waiting handshake: %v, want its own error", err)
	}
	close(hold)
	finished.Wait()
	for name, want := range map[string]struct {
		c    prometheus.Metric
		want float64
	}{
		"started":   {g.started, 3},
		"completed": {g.completed, 2},
		"failed":    {g.failed, 1},
		"waiting":   {g.waiting, 0},
	} {
		if got := value(t, want.c); got != want.want {
			t.Errorf("%s = %v, want %v", name, got, want.want)
		}
	}
}

// TestTLSGateBoundsConcurrency: many connections racing for few slots
// never run more than the slots at once, and every one is either
// started or shed.
func TestTLSGateBoundsConcurrency(t *testing.T) {
	const slots, conns = 4, 200
	g := NewTLSGate(slots, 5*time.Millisecond)
	var now, peak atomic.Int64
	var wg sync.WaitGroup
	for range conns {
		raw, _ := net.Pipe()
		wg.Go(func() {
			_ = g.handshake(raw, func() error {
				n := now.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				time.Sleep(time.Millisecond)
				now.Add(-1)
				return nil
			})
		})
	}
	wg.Wait()
	if p := peak.Load(); p > slots {
		t.Errorf("%d handshakes at once, want ≤ %d", p, slots)
	}
	started, shed := value(t, g.started), value(t, g.shed)
	if started+shed != conns || value(t, g.completed) != started {
		t.Errorf("started %v + shed %v != %d, or completed %v != started", started, shed, conns, value(t, g.completed))
	}
	if shed == 0 {
		t.Error("nothing shed: the wait bound was never reached (test too gentle)")
	}
}
