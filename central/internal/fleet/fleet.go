// Package fleet is central's side of the agent protocol (docs/agent-protocol.md):
// the Sync stream endpoint, the registry of agents connected to this replica,
// the hub that pushes an agent's desired document when it changes, and the
// store of observed state.
//
// Desired state is committed in SQL first; a hint (PostgreSQL NOTIFY, or a
// poll on CockroachDB) wakes the replica that holds the agent's stream, which
// re-reads the document and pushes it. Hints may be lost: a periodic resync
// compares revisions and heals. Only the newest document matters, so a slow
// agent's pending documents coalesce and never block others.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Config tunes the hub; zero fields take the defaults of DefaultConfig.
type Config struct {
	// Replica names this central replica in the agents table and in Welcome.
	Replica string
	// Heartbeat is the interval agents are told to send heartbeats at.
	Heartbeat time.Duration
	// Flush is how often batched contact and observed state are written.
	Flush time.Duration
	// Resync is how often the revisions of all local agents are compared
	// with the database, healing lost hints.
	Resync time.Duration
	// HelloTimeout bounds the wait for the first message of a stream.
	HelloTimeout time.Duration
	// MaxHandshakes bounds concurrent handshakes; a handshake waits up to
	// HandshakeWait for a slot and is then refused with Unavailable and a
	// retry delay, so a reconnect storm sheds load instead of queueing
	// until everything times out.
	MaxHandshakes int
	HandshakeWait time.Duration
	// HintBatch is how long hints are collected before one read serves them.
	HintBatch time.Duration
	// Senders is how many goroutines send documents to all streams.
	Senders int
	// SendTimeout closes a stream whose send blocks longer (a peer that
	// stopped reading), so that it cannot hold a sender.
	SendTimeout time.Duration
	// Liveliness thresholds, see Liveliness.
	Liveliness Thresholds
	// MaxUnusedBootTokens caps the unused, unexpired boot tokens of one
	// partition (DefaultMaxUnusedBootTokens).
	MaxUnusedBootTokens int
}

// DefaultConfig is what metal-central runs with.
func DefaultConfig() Config {
	return Config{
		Heartbeat:     20 * time.Second,
		Flush:         time.Second,
		Resync:        30 * time.Second,
		HelloTimeout:  15 * time.Second,
		MaxHandshakes: 64,
		HandshakeWait: time.Second,
		HintBatch:     2 * time.Millisecond,
		Senders:       4,
		SendTimeout:   10 * time.Second,
		Liveliness:    DefaultThresholds(),

		MaxUnusedBootTokens: DefaultMaxUnusedBootTokens,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	for _, f := range []struct{ v, def *time.Duration }{
		{&c.Heartbeat, &d.Heartbeat}, {&c.Flush, &d.Flush}, {&c.Resync, &d.Resync},
		{&c.HelloTimeout, &d.HelloTimeout}, {&c.HandshakeWait, &d.HandshakeWait}, {&c.HintBatch, &d.HintBatch},
		{&c.SendTimeout, &d.SendTimeout},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	if c.MaxUnusedBootTokens <= 0 {
		c.MaxUnusedBootTokens = d.MaxUnusedBootTokens
	}
	if c.MaxHandshakes <= 0 {
		c.MaxHandshakes = d.MaxHandshakes
	}
	if c.Senders <= 0 {
		c.Senders = d.Senders
	}
	if c.Liveliness == (Thresholds{}) {
		c.Liveliness = d.Liveliness
	}
	return c
}

// Hub serves agent streams of one central replica.
type Hub struct {
	agentv1.UnimplementedAgentServiceServer

	cfg       Config
	domain    Domain
	reporters map[agentv1.Kind]Reporter
	// enrolled derive the first document of a new agent of a kind (AttachEnrol).
	enrolled map[agentv1.Kind]EnrolHook
	// console serves metal-bmc's console streams (AttachConsole).
	console    ConsoleHandler
	store      *store.Store
	log        *slog.Logger
	hints      Hints
	metrics    *metrics
	conns      *registry
	observed   *observer
	handshakes chan struct{}
	// wanted holds the local agents whose documents must be read again;
	// a set, so a burst of changes can neither overflow nor duplicate work.
	wantMu   sync.Mutex
	wanted   map[string]struct{}
	wantWake chan struct{}
	// sendq holds streams with a newer document to send.
	sendq chan *conn
	// hintEpoch counts hints, so that a handshake can tell whether one
	// arrived while it was registering its stream.
	hintEpoch atomic.Uint64

	stop    context.CancelFunc
	wg      sync.WaitGroup
	stopped chan struct{}
}

// New builds a hub on st. hints nil picks NOTIFY on PostgreSQL and polling
// on CockroachDB.
func New(st *store.Store, log *slog.Logger, cfg Config, hints Hints) (*Hub, error) {
	cfg = cfg.withDefaults()
	if cfg.Replica == "" {
		return nil, errors.New("fleet: replica name required")
	}
	if hints == nil {
		if st.Cockroach() {
			hints = NewPollHints(st, time.Second)
		} else {
			hints = NewNotifyHints(st, log)
		}
	}
	h := &Hub{
		cfg:        cfg,
		store:      st,
		log:        log.With("part", "fleet"),
		hints:      hints,
		metrics:    newMetrics(),
		conns:      newRegistry(),
		handshakes: make(chan struct{}, cfg.MaxHandshakes),
		wanted:     map[string]struct{}{},
		wantWake:   make(chan struct{}, 1),
		sendq:      make(chan *conn, 1<<16),
		stopped:    make(chan struct{}),
	}
	h.observed = newObserver(st, h.log, cfg.Replica, h.metrics)
	return h, nil
}

// Collector exports the hub's metrics.
func (h *Hub) Collector() prometheus.Collector { return h.metrics }

// Register adds the agent service to s.
func (h *Hub) Register(s grpc.ServiceRegistrar) { agentv1.RegisterAgentServiceServer(s, h) }

// Start runs the hint listener, the fetcher, the flusher and the resync
// loop until Shutdown.
func (h *Hub) Start(ctx context.Context) {
	ctx, h.stop = context.WithCancel(context.WithoutCancel(ctx))
	h.wg.Add(4)
	go func() {
		defer h.wg.Done()
		h.hints.Listen(ctx, h.want, h.resyncAll)
	}()
	for range h.cfg.Senders {
		h.wg.Go(func() { h.sendLoop(ctx) })
	}
	go func() { defer h.wg.Done(); h.fetchLoop(ctx) }()
	go func() { defer h.wg.Done(); h.observed.run(ctx, h.cfg.Flush) }()
	go func() { defer h.wg.Done(); h.resyncLoop(ctx) }()
}

// Shutdown writes pending observed state, closes every stream, so that
// agents move to another replica at once, and stops the loops.
func (h *Hub) Shutdown(ctx context.Context) {
	select {
	case <-h.stopped:
		return
	default:
		close(h.stopped)
	}
	// What agents reported is written first, while their streams are up;
	// the contact times of the disconnects that follow are not worth a
	// write of every agent's row in the middle of a restart.
	if err := h.observed.flush(ctx); err != nil {
		h.log.Error("flush observed state on shutdown", "err", err)
	}
	h.conns.closeAll(errShuttingDown)
	if h.stop != nil {
		h.stop()
		h.wg.Wait()
	}
}

// Connected is the number of agents with a stream on this replica.
func (h *Hub) Connected() int { return h.conns.len() }

// want asks the fetcher to re-read agent id's document if it is local.
func (h *Hub) want(id string) {
	h.hintEpoch.Add(1)
	if h.conns.get(id) == nil {
		return
	}
	h.wantMu.Lock()
	h.wanted[id] = struct{}{}
	h.wantMu.Unlock()
	select {
	case h.wantWake <- struct{}{}:
	default:
	}
}

// takeWanted returns and clears the pending set.
func (h *Hub) takeWanted() []string {
	h.wantMu.Lock()
	defer h.wantMu.Unlock()
	ids := make([]string, 0, len(h.wanted))
	for id := range h.wanted {
		ids = append(ids, id)
	}
	clear(h.wanted)
	return ids
}

func (h *Hub) resyncAll() {
	go func() {
		if err := h.resync(context.Background()); err != nil {
			h.log.Warn("resync", "err", err)
		}
	}()
}

func (h *Hub) resyncLoop(ctx context.Context) {
	every(ctx, h.cfg.Resync, h.resync, func(err error) { h.log.Warn("resync", "err", err) })
}

// every runs fn each interval until ctx ends, handing its errors to onErr.
func every(ctx context.Context, interval time.Duration, fn func(context.Context) error, onErr func(error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				onErr(err)
			}
		}
	}
}

// resync compares every local agent's sent revision and credential with
// the database and re-reads those that differ.
func (h *Hub) resync(ctx context.Context) error {
	snap := h.conns.snapshot()
	const chunk = 5000
	for i := 0; i < len(snap); i += chunk {
		part := snap[i:min(i+chunk, len(snap))]
		ids := make([]string, len(part))
		for j, c := range part {
			ids[j] = c.id
		}
		rows, err := h.store.Pool().Query(ctx, `SELECT id, desired_revision, token_hash FROM agents WHERE id = ANY($1)`, ids)
		if err != nil {
			return fmt.Errorf("read revisions: %w", err)
		}
		type rev struct {
			rev  uint64
			hash []byte
		}
		found := make(map[string]rev, len(part))
		for rows.Next() {
			var id string
			var r rev
			if err := rows.Scan(&id, &r.rev, &r.hash); err != nil {
				rows.Close()
				return fmt.Errorf("read revisions: %w", err)
			}
			found[id] = r
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read revisions: %w", err)
		}
		for _, c := range part {
			r, ok := found[c.id]
			switch {
			case !ok || !c.holds(r.hash):
				c.close(errCredentialGone)
			case r.rev > c.latestRevision():
				h.metrics.resyncHealed.Inc()
				h.want(c.id)
			}
		}
	}
	return nil
}

// admit takes a handshake slot, waiting at most HandshakeWait.
func (h *Hub) admit(ctx context.Context) bool {
	select {
	case h.handshakes <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(h.cfg.HandshakeWait)
	defer t.Stop()
	select {
	case h.handshakes <- struct{}{}:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}
