package store_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/central/internal/store"
)

// Every call gets its own result, batches respect their size and the number
// running at once per key, keys do not mix, and a lone call runs at once.
func TestCombiner(t *testing.T) {
	const maxBatch, maxRunning = 8, 2
	var (
		running  [2]atomic.Int32
		overlap  atomic.Bool
		oversize atomic.Bool
		mixed    atomic.Bool
	)
	c := store.NewCombiner(maxBatch, maxRunning, func(ctx context.Context, key int, reqs []int) []store.Outcome[int] {
		if n := running[key].Add(1); n > maxRunning {
			overlap.Store(true)
		}
		defer running[key].Add(-1)
		if len(reqs) > maxBatch {
			oversize.Store(true)
		}
		time.Sleep(time.Millisecond) // let calls queue up
		outs := make([]store.Outcome[int], len(reqs))
		for i, r := range reqs {
			if r%2 != key {
				mixed.Store(true)
			}
			outs[i].Val = r * 10
		}
		return outs
	})
	if v, err := c.Do(context.Background(), 1, 7); v != 70 || err != nil {
		t.Fatalf("lone call = %d, %v", v, err)
	}
	if b, n := c.Stats(); b != 1 || n != 1 {
		t.Fatalf("lone call: %d batches, %d calls", b, n)
	}
	var wg sync.WaitGroup
	for g := range 64 {
		wg.Go(func() {
			for i := range 50 {
				r := g*1000 + i
				if v, err := c.Do(context.Background(), r%2, r); v != r*10 || err != nil {
					t.Errorf("call %d = %d, %v", r, v, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if overlap.Load() || oversize.Load() || mixed.Load() {
		t.Fatalf("overlap %v, oversize %v, mixed keys %v", overlap.Load(), oversize.Load(), mixed.Load())
	}
	b, n := c.Stats()
	if n != 64*50+1 {
		t.Fatalf("%d calls served, want %d", n, 64*50+1)
	}
	if b >= n {
		t.Fatalf("%d batches for %d calls: nothing was combined", b, n)
	}
	t.Logf("%d calls in %d batches", n, b)
}

// A waiting call whose context ends still gets its batch's result: the
// batch may have committed it.
func TestCombinerIgnoresCancelWhileQueued(t *testing.T) {
	release := make(chan struct{})
	c := store.NewCombiner(4, 1, func(ctx context.Context, key string, reqs []int) []store.Outcome[int] {
		if ctx.Err() != nil {
			t.Error("batch context cancelled")
		}
		<-release
		outs := make([]store.Outcome[int], len(reqs))
		for i, r := range reqs {
			outs[i].Val = r
		}
		return outs
	})
	first := make(chan int)
	go func() { v, _ := c.Do(context.Background(), "k", 1); first <- v }()
	time.Sleep(10 * time.Millisecond)
	ctx, cancel := context.WithCancel(context.Background())
	second := make(chan int)
	go func() { v, _ := c.Do(ctx, "k", 2); second <- v }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	close(release)
	if v := <-first; v != 1 {
		t.Fatalf("first = %d", v)
	}
	if v := <-second; v != 2 {
		t.Fatalf("second = %d", v)
	}
}
