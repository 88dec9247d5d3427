package fleet

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// conn is one agent's stream on this replica. Its handler goroutine
// receives; documents are sent by the hub's few sender goroutines, so a
// stream costs one goroutine of ours, not two.
type conn struct {
	id        string
	kind      agentv1.Kind
	identity  string
	partition string
	tokenHash []byte
	stream    agentv1.AgentService_SyncServer
	// raw is the stream's connection; closing it is how a stream is ended
	// from outside its handler (see Creds).
	raw net.Conn
	// latest is the newest document read for the agent; a sender sends it
	// when the conn is scheduled. Older pending documents are replaced:
	// only the newest matters.
	latest atomic.Pointer[agentv1.Desired]
	queued atomic.Bool
	// sent is the revision last sent on the stream.
	sent atomic.Uint64
	// cause is why the stream was closed from outside.
	cause atomic.Pointer[error]

	// mu serialises sends on the stream with the handler's start and end.
	mu    sync.Mutex
	ready bool // the welcome is sent; documents may follow
	done  bool // the handler is returning; nothing may be sent
}

func (c *conn) holds(hash []byte) bool { return bytes.Equal(c.tokenHash, hash) }

func (c *conn) latestRevision() uint64 {
	if d := c.latest.Load(); d != nil {
		return d.GetRevision()
	}
	return 0
}

// close ends the stream from outside: the first cause wins and the
// handler returns it.
func (c *conn) close(cause error) {
	c.cause.CompareAndSwap(nil, &cause)
	if c.raw != nil {
		_ = c.raw.Close()
	}
}

func (c *conn) closedBy() error {
	if p := c.cause.Load(); p != nil {
		return *p
	}
	return nil
}

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
