package agent

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"log/slog"
	"sync"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// outbox holds what an agent reports until central acknowledged storing
// it: events and facts emitted on the agent's own initiative, and the
// reports that answer documents. It survives reconnects; nothing in it is
// lost while the process runs.
//
// Emitted events and facts wait in events/facts until a session frames
// them into reports (at most 64 events each). A framed report gets the
// next seq and stays in frames until central answers its seq with an ack:
// stored, or rejected (it can never be stored). A stream that ends first
// leaves it there, and the next stream sends every frame again, in order.
type outbox struct {
	log     *slog.Logger
	metrics *Metrics
	// id names this outbox in central's dedup key (agent, outbox, seq):
	// seq starts at 1 again in a new process.
	id string

	mu     sync.Mutex
	events []*agentv1.Event
	facts  *agentv1.Facts
	seq    uint64
	frames []*agentv1.Report
	// sent counts the frames (a prefix) sent on the current stream.
	sent int
	wake chan struct{}
	// idle is closed and replaced whenever the outbox becomes empty.
	idle chan struct{}
}

// maxOutboxEvents bounds the memory an agent spends on events central
// cannot take; the oldest go first, as the newest say the most.
const maxOutboxEvents = 1024

func newOutbox(log *slog.Logger, m *Metrics) *outbox {
	b := make([]byte, 16)
	_, _ = rand.Read(b) // never fails (crypto/rand)
	return &outbox{log: log, metrics: m, id: hex.EncodeToString(b), wake: make(chan struct{}, 1), idle: make(chan struct{})}
}

func (o *outbox) add(facts *agentv1.Facts, events ...*agentv1.Event) {
	o.mu.Lock()
	for _, e := range events {
		if e.GetTime() == nil {
			e.Time = timestamppb.Now()
		}
	}
	o.events = append(o.events, events...)
	if n := len(o.events); n > maxOutboxEvents {
		o.events = append([]*agentv1.Event(nil), o.events[n-maxOutboxEvents:]...)
	}
	if facts != nil {
		o.facts = facts
	}
	o.mu.Unlock()
	o.poke()
}

// push queues a whole report (the answer to a document) behind everything
// emitted before it.
func (o *outbox) push(r *agentv1.Report) {
	o.mu.Lock()
	o.frameLocked()
	o.appendLocked(r)
	o.mu.Unlock()
	o.poke()
}

func (o *outbox) poke() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// frameLocked turns emitted events and facts into reports.
func (o *outbox) frameLocked() {
	for len(o.events) > 0 || o.facts != nil {
		n := min(len(o.events), maxEventsPerReport)
		r := &agentv1.Report{Facts: o.facts, Events: o.events[:n:n]}
		o.events, o.facts = o.events[n:], nil
		o.appendLocked(r)
	}
}

// maxEventsPerReport is central's limit.
const maxEventsPerReport = 64

// appendLocked gives r the next seq and queues it, unless it cannot even
// be encoded (a string that is not UTF-8): such a report could never be
// sent, and keeping it would block every report behind it.
func (o *outbox) appendLocked(r *agentv1.Report) {
	o.seq++
	r.Outbox, r.Seq = o.id, o.seq
	if _, err := proto.Marshal(r); err != nil {
		o.log.Error("report dropped: it cannot be encoded", "seq", r.Seq, "err", err)
		o.metrics.reportRejected()
		return
	}
	o.frames = append(o.frames, r)
}

// restart makes the next stream send every unacknowledged report again.
func (o *outbox) restart() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sent = 0
}

// next returns the next report to send on this stream, nil when all are
// sent. applied is the agent's applied revision now: a report sent again
// must not take central's view of it back.
func (o *outbox) next(applied uint64) *agentv1.Report {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.frameLocked()
	if o.sent == len(o.frames) {
		o.idleLocked() // framing may have dropped the last of it
		return nil
	}
	r := o.frames[o.sent]
	o.sent++
	// The Send of the previous use of r has returned (one session sends
	// at a time), so r is not being encoded while it changes.
	if r.AppliedRevision < applied {
		r.AppliedRevision = applied
	}
	return r
}

// ack settles the report seq: stored, or rejected for good (dropped with
// the reason, there is nothing the agent can do about it but tell).
func (o *outbox) ack(a *agentv1.Ack) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, r := range o.frames {
		if r.Seq != a.GetSeq() {
			continue
		}
		if a.GetResult() == agentv1.AckResult_ACK_RESULT_REJECTED {
			o.log.Error("central rejected a report; it is dropped", "seq", r.Seq, "events", len(r.Events), "reason", a.GetMessage())
			o.metrics.reportRejected()
		}
		o.frames = append(o.frames[:i:i], o.frames[i+1:]...)
		if i < o.sent {
			o.sent--
		}
		o.idleLocked()
		return
	}
}

// forget drops a sent report unacknowledged: a central without acks
// stores what it reads, or ends the stream.
func (o *outbox) forget(r *agentv1.Report) {
	o.ack(&agentv1.Ack{Seq: r.Seq, Result: agentv1.AckResult_ACK_RESULT_STORED})
}

func (o *outbox) idleLocked() {
	if len(o.frames) == 0 && len(o.events) == 0 && o.facts == nil {
		close(o.idle)
		o.idle = make(chan struct{})
	}
}

func (o *outbox) empty() (bool, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.frames) == 0 && len(o.events) == 0 && o.facts == nil, o.idle
}

// Emit queues events (and, when facts is not nil, facts) for central. They
// are sent on the current stream, or on the next one after a reconnect,
// until central acknowledges them.
func (a *Agent) Emit(facts *agentv1.Facts, events ...*agentv1.Event) {
	a.outbox.add(facts, events...)
}

// Flush waits until central has answered everything emitted and reported
// so far (stored, or rejected for good), or ctx ends. Against a central
// without acks it means sent. An installer flushes before it kexecs: the
// last event must not die with the process.
func (a *Agent) Flush(ctx context.Context) error {
	for {
		empty, idle := a.outbox.empty()
		if empty {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-idle:
		}
	}
}

// errClosed ends a session that Close ended.
var errClosed = errors.New("agent closed")

// Close delivers everything emitted, ends the stream in order and stops
// Run. It returns once central has answered every report and ended its
// side of the stream: a nil return is an acknowledgement. An installer
// closes before kexec: the last event must not die with the process.
// Close gives up when ctx ends.
func (a *Agent) Close(ctx context.Context) error {
	done := make(chan error, 1)
	select {
	case a.closeReq <- done:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}
