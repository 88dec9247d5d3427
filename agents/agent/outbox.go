package agent

import (
	"context"
	"errors"
	"sync"

	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// outbox holds events and facts an agent reports on its own initiative
// (not in answer to a document) until a stream carries them. It survives
// reconnects; nothing in it is lost while the process runs.
type outbox struct {
	mu     sync.Mutex
	events []*agentv1.Event
	facts  *agentv1.Facts
	// sending counts what a session took but has not confirmed sent.
	sending int
	wake    chan struct{}
	// idle is closed and replaced whenever the outbox becomes empty.
	idle chan struct{}
}

// maxOutboxEvents bounds the memory an agent spends on events central
// cannot take; the oldest go first, as the newest say the most.
const maxOutboxEvents = 1024

func newOutbox() *outbox {
	return &outbox{wake: make(chan struct{}, 1), idle: make(chan struct{})}
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
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// take hands a session at most maxEvents events and the pending facts.
func (o *outbox) take(maxEvents int) (*agentv1.Facts, []*agentv1.Event) {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := min(len(o.events), maxEvents)
	events := o.events[:n:n]
	o.events = o.events[n:]
	facts := o.facts
	o.facts = nil
	if facts != nil || n > 0 {
		o.sending++
	}
	return facts, events
}

// done confirms a take: sent, or put back in front when the send failed.
func (o *outbox) done(facts *agentv1.Facts, events []*agentv1.Event, sent bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.sending--
	if !sent {
		o.events = append(append([]*agentv1.Event(nil), events...), o.events...)
		if o.facts == nil {
			o.facts = facts
		}
		return
	}
	if o.sending == 0 && len(o.events) == 0 && o.facts == nil {
		close(o.idle)
		o.idle = make(chan struct{})
	}
}

func (o *outbox) empty() (bool, <-chan struct{}) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.sending == 0 && len(o.events) == 0 && o.facts == nil, o.idle
}

// Emit queues events (and, when facts is not nil, facts) for central. They
// are sent on the current stream, or on the next one after a reconnect.
func (a *Agent) Emit(facts *agentv1.Facts, events ...*agentv1.Event) {
	a.outbox.add(facts, events...)
}

// Flush waits until everything emitted so far went out on a stream, or ctx
// ends. An installer flushes before it kexecs: the last event must not die
// with the process.
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
// Run. It returns once central has ended its side of the stream, which it
// does only after it processed (stored) every message before the end: so
// a nil return is an acknowledgement, where Flush only means "sent". An
// installer closes before kexec: the last event must not die with the
// process. Close gives up when ctx ends.
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
