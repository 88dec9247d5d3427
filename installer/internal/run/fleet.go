package run

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/agents/agent"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// fleet is the installer's connection to central: the shared agent runtime,
// plus what the installer needs around it. A boot token can be refused
// (spent by an earlier boot, expired); an agent's configuration is fixed,
// so the fleet then starts a new agent with a fresh token from pixie and
// hands over what the refused one had not sent yet.
type fleet struct {
	base       agent.Config
	stateDir   string
	freshToken func(ctx context.Context) (string, error)
	log        *slog.Logger
	// refusals bounds how often a fresh token is tried before the
	// installer gives up (and reboots into PXE, which brings a new one).
	refusals   int
	minBackoff time.Duration

	mu      sync.Mutex
	cur     *agent.Agent
	curDir  string
	swapped chan struct{}
	// unconfirmed are the events emitted since the agent's outbox was
	// last seen empty, to hand over to a successor.
	unconfirmed []*agentv1.Event
	facts       *agentv1.Facts
	// hello is what hello carries until the full facts were emitted.
	hello *agentv1.Facts

	docs chan *agentv1.Desired
}

func newFleet(base agent.Config, hello *agentv1.Facts, stateDir, bootToken string, freshToken func(context.Context) (string, error), refusals int, log *slog.Logger) (*fleet, error) {
	f := &fleet{base: base, hello: hello, stateDir: stateDir, freshToken: freshToken, log: log, refusals: refusals,
		minBackoff: base.MinBackoff, swapped: make(chan struct{}), docs: make(chan *agentv1.Desired, 1)}
	if f.minBackoff <= 0 {
		f.minBackoff = time.Second
	}
	f.base.Reconciler = agent.ReconcilerFunc(f.apply)
	f.base.Facts = f.helloFacts
	if err := f.start(0, bootToken); err != nil {
		return nil, err
	}
	return f, nil
}

// start makes the agent of attempt n. Each attempt has its own state dir:
// the agent prefers a stored credential to a boot token, and the refused
// one must not be tried again.
func (f *fleet) start(n int, bootToken string) error {
	cfg := f.base
	cfg.BootToken = bootToken
	cfg.StateDir = filepath.Join(f.stateDir, fmt.Sprintf("agent-%d", n))
	a, err := agent.New(cfg)
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	old := f.cur
	f.cur, f.curDir = a, cfg.StateDir
	close(f.swapped)
	f.swapped = make(chan struct{})
	if old != nil {
		if !drained(old) {
			a.Emit(f.facts, f.unconfirmed...)
		} else {
			f.unconfirmed = nil
		}
	}
	return nil
}

// drained reports, without waiting, whether a's outbox is empty.
func drained(a *agent.Agent) bool {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return a.Flush(ctx) == nil
}

// run holds the connection until ctx ends; it fails only when central
// keeps refusing the installer.
func (f *fleet) run(ctx context.Context) error {
	delay := f.minBackoff
	for n := 1; ; n++ {
		f.mu.Lock()
		a := f.cur
		f.mu.Unlock()
		err := a.Run(ctx)
		if err == nil || ctx.Err() != nil {
			return nil
		}
		if !errors.Is(err, agent.ErrRefused) {
			return err
		}
		if n > f.refusals {
			return fmt.Errorf("central refused the installer %d times: %w", n, err)
		}
		f.log.Warn("central refused the installer; getting a fresh boot token", "err", err, "attempt", n)
		var tok string
		for {
			if !agent.Sleep(ctx, delay) {
				return nil
			}
			delay = min(delay*2, 30*time.Second)
			if tok, err = f.freshToken(ctx); err == nil {
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			f.log.Warn("no fresh boot token yet", "err", err)
		}
		if err := f.start(n, tok); err != nil {
			return err
		}
	}
}

func (f *fleet) apply(_ context.Context, d *agentv1.Desired) error {
	// Only the newest document matters to the flow.
	select {
	case <-f.docs:
	default:
	}
	f.docs <- d
	return nil
}

// next waits for a document newer than the last one taken.
func (f *fleet) next(ctx context.Context, failed <-chan error) (*agentv1.Desired, error) {
	select {
	case d := <-f.docs:
		return d, nil
	case err := <-failed:
		return nil, err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Emit queues events (and facts) for central.
func (f *fleet) Emit(facts *agentv1.Facts, events ...*agentv1.Event) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if drained(f.cur) {
		f.unconfirmed = nil
	}
	f.unconfirmed = append(f.unconfirmed, events...)
	if facts != nil {
		f.facts = facts
	}
	f.cur.Emit(facts, events...)
}

// Close delivers everything emitted and ends the connection in order; a
// nil return means central stored it all (agent.Agent.Close). An agent
// swapped meanwhile (a refused boot token) carries the events over, so the
// new one is closed instead.
func (f *fleet) Close(ctx context.Context) error {
	for {
		f.mu.Lock()
		a, swapped := f.cur, f.swapped
		f.mu.Unlock()
		cctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-swapped:
				cancel()
			case <-cctx.Done():
			}
		}()
		err := a.Close(cctx)
		cancel()
		select {
		case <-swapped:
			if ctx.Err() == nil {
				continue
			}
		default:
		}
		return err
	}
}

// connected reports whether the current agent holds a stream, and its phase.
func (f *fleet) connected() (bool, agent.Phase) {
	f.mu.Lock()
	a := f.cur
	f.mu.Unlock()
	return a.Connected(), a.Phase()
}

func (f *fleet) helloFacts(context.Context) (*agentv1.Facts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.facts == nil {
		return f.hello, nil
	}
	return f.facts, nil
}

// credential is the machine's own agent credential, issued by central in
// exchange for the boot token; metal-phonehome uses it.
func (f *fleet) credential() (string, error) {
	f.mu.Lock()
	a := f.cur
	f.mu.Unlock()
	if a == nil || a.Credential() == "" {
		return "", errors.New("machine credential: central issued none")
	}
	return a.Credential(), nil
}

func event(typ, msg string) *agentv1.Event {
	return &agentv1.Event{Time: timestamppb.Now(), Type: typ, Message: msg}
}
