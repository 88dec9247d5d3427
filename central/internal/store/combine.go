package store

import (
	"context"
	"sync"
	"sync/atomic"
)

// Outcome is one call's share of a batch.
type Outcome[R any] struct {
	Val R
	Err error
}

// Combiner lets concurrent calls that share a key run as one batch, so that
// many hand-outs from one pool cost one statement and one commit instead of
// one each (group commit done by the application). Batching is not delayed
// on purpose: a call that finds fewer than MaxRunning batches of its key
// under way runs at once, alone if need be; calls arriving meanwhile queue
// and leave together in the next batch. So a lone client sees no added
// latency, and under load the batch size adapts to the arrival rate.
//
// A batch is run by one of its own callers (the leader); when it is done
// the leader hands the lead to the oldest waiting call, so no caller serves
// batches it is not part of. Nothing is kept between batches: a crash loses
// only calls whose batch had not committed, and they never returned.
type Combiner[K comparable, Q, R any] struct {
	run        func(ctx context.Context, key K, reqs []Q) []Outcome[R]
	maxBatch   int
	maxRunning int

	mu     sync.Mutex
	queues map[K]*combineQueue[Q, R]

	batches, calls atomic.Int64
}

type combineQueue[Q, R any] struct {
	pending []*combineCall[Q, R]
	running int
}

type combineCall[Q, R any] struct {
	ctx  context.Context
	req  Q
	out  Outcome[R]
	done chan bool // true: the result is in out; false: lead the next batch
}

// NewCombiner returns a Combiner whose batches hold at most maxBatch calls,
// with at most maxRunning batches of one key under way at a time. run gets
// the calls' requests in arrival order and returns one outcome per request,
// in the same order; it runs with the context of the batch's leader, its
// cancellation removed (the other calls of the batch still want the result).
func NewCombiner[K comparable, Q, R any](maxBatch, maxRunning int, run func(ctx context.Context, key K, reqs []Q) []Outcome[R]) *Combiner[K, Q, R] {
	return &Combiner[K, Q, R]{
		run:        run,
		maxBatch:   max(maxBatch, 1),
		maxRunning: max(maxRunning, 1),
		queues:     map[K]*combineQueue[Q, R]{},
	}
}

// Do runs req in a batch of key and returns its outcome. A call that waits
// for its batch does not give up when ctx ends: its batch may already be
// committing, and the caller must learn the result.
func (c *Combiner[K, Q, R]) Do(ctx context.Context, key K, req Q) (R, error) {
	call := &combineCall[Q, R]{ctx: ctx, req: req, done: make(chan bool, 1)}
	c.mu.Lock()
	q := c.queues[key]
	if q == nil {
		q = &combineQueue[Q, R]{}
		c.queues[key] = q
	}
	if q.running < c.maxRunning {
		q.running++
		c.mu.Unlock()
	} else {
		q.pending = append(q.pending, call)
		c.mu.Unlock()
		if <-call.done {
			return call.out.Val, call.out.Err
		}
		// Handed the lead: we left the queue and hold a running slot.
	}
	c.lead(key, q, call)
	return call.out.Val, call.out.Err
}

// lead runs self together with the oldest waiting calls, then passes its
// running slot to the next waiting call, if any.
func (c *Combiner[K, Q, R]) lead(key K, q *combineQueue[Q, R], self *combineCall[Q, R]) {
	c.mu.Lock()
	n := min(len(q.pending), c.maxBatch-1)
	batch := make([]*combineCall[Q, R], 0, n+1)
	batch = append(batch, self)
	batch = append(batch, q.pending[:n]...)
	q.pending = q.pending[n:]
	c.mu.Unlock()

	reqs := make([]Q, len(batch))
	for i, cl := range batch {
		reqs[i] = cl.req
	}
	outs := c.run(context.WithoutCancel(self.ctx), key, reqs)
	c.batches.Add(1)
	c.calls.Add(int64(len(batch)))
	for i, cl := range batch {
		cl.out = outs[i]
		if i > 0 {
			cl.done <- true
		}
	}

	c.mu.Lock()
	if len(q.pending) > 0 {
		next := q.pending[0]
		q.pending = q.pending[1:]
		c.mu.Unlock()
		next.done <- false
		return
	}
	q.running--
	if q.running == 0 {
		delete(c.queues, key)
	}
	c.mu.Unlock()
}

// Stats returns how many batches ran and how many calls they served.
func (c *Combiner[K, Q, R]) Stats() (batches, calls int64) {
	return c.batches.Load(), c.calls.Load()
}
