package fleet

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// conn is one agent's stream on this replica.
type conn struct {
	id        string
	kind      agentv1.Kind
	identity  string
	tokenHash []byte
	// latest is the newest document read for the agent; the stream's
	// sender sends it when woken. Older pending documents are simply
	// replaced: only the newest matters.
	latest atomic.Pointer[agentv1.Desired]
	// sent is the revision last sent on the stream.
	sent   atomic.Uint64
	wake   chan struct{}
	cancel context.CancelCauseFunc
}

func (c *conn) holds(hash []byte) bool { return bytes.Equal(c.tokenHash, hash) }

func (c *conn) latestRevision() uint64 {
	if d := c.latest.Load(); d != nil {
		return d.GetRevision()
	}
	return 0
}

// offer makes d the document to send unless a newer one is already there.
func (c *conn) offer(d *agentv1.Desired) bool {
	for {
		cur := c.latest.Load()
		if cur != nil && cur.GetRevision() >= d.GetRevision() {
			return false
		}
		if c.latest.CompareAndSwap(cur, d) {
			select {
			case c.wake <- struct{}{}:
			default:
			}
			return true
		}
	}
}

func (c *conn) close(cause error) { c.cancel(cause) }

// registry holds the streams of this replica, one per agent.
type registry struct {
	mu sync.RWMutex
	m  map[string]*conn
}

func newRegistry() *registry { return &registry{m: map[string]*conn{}} }

// put adds c and closes the stream it replaces (the agent reconnected
// before the old stream noticed).
func (r *registry) put(c *conn) {
	r.mu.Lock()
	old := r.m[c.id]
	r.m[c.id] = c
	r.mu.Unlock()
	if old != nil {
		old.close(errSuperseded)
	}
}

// remove drops c unless a newer stream took its place.
func (r *registry) remove(c *conn) {
	r.mu.Lock()
	if r.m[c.id] == c {
		delete(r.m, c.id)
	}
	r.mu.Unlock()
}

func (r *registry) get(id string) *conn {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.m[id]
}

func (r *registry) len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.m)
}

func (r *registry) snapshot() []*conn {
	r.mu.RLock()
	defer r.mu.RUnlock()
	out := make([]*conn, 0, len(r.m))
	for _, c := range r.m {
		out = append(out, c)
	}
	return out
}

func (r *registry) closeAll(cause error) {
	for _, c := range r.snapshot() {
		c.close(cause)
	}
}
