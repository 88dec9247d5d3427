// Package agent is the runtime every Metalfleet agent shares
// (docs/agent-protocol.md): it dials central, says hello, applies desired
// documents through a per-kind Reconciler, reports, sends heartbeats,
// reconnects with exponential backoff and full jitter, and keeps the last
// desired document on disk so that the agent converges from it while
// central is unreachable.
package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Reconciler makes a desired document the local state. Apply is called with
// every new document (the cached one too, at start) and must be idempotent:
// documents are whole, and the same one may come again after a reconnect.
type Reconciler interface {
	Apply(ctx context.Context, d *agentv1.Desired) error
}

// ReconcilerFunc adapts a function to Reconciler.
type ReconcilerFunc func(ctx context.Context, d *agentv1.Desired) error

// Apply implements Reconciler.
func (f ReconcilerFunc) Apply(ctx context.Context, d *agentv1.Desired) error { return f(ctx, d) }

// Config describes one agent.
type Config struct {
	Kind     agentv1.Kind
	Identity string
	// Centrals are central's addresses, host:port, IPv4 or [IPv6]; the agent
	// starts at a random one and moves on when one fails.
	Centrals []string
	// Endpoints, when set, is asked before every connection attempt for
	// the addresses to try; an empty answer falls back to Centrals. The
	// addresses an agent can reach may change while it runs: an installed
	// machine learns its leaves' agent relays from router advertisements
	// only after it started.
	Endpoints func() []string
	// TLS pins central's CA (see PinnedTLS). Nil means plaintext, which
	// only a central started with --insecure-plaintext accepts.
	TLS *tls.Config
	// Token is the agent's credential. Empty: the one stored in StateDir,
	// else BootToken is exchanged for one.
	Token     string
	BootToken string
	// StateDir keeps the credential and the last desired document; empty
	// keeps nothing (no offline start).
	StateDir   string
	Reconciler Reconciler
	// Facts are collected for hello and when a document asks for them.
	Facts func(ctx context.Context) (*agentv1.Facts, error)
	Log   *slog.Logger
	// LogLevel, when set, follows the document's settings.log_level.
	LogLevel *slog.LevelVar
	// Metrics may be shared by many agents of one process; nil records nothing.
	Metrics *Metrics
	// MinBackoff and MaxBackoff bound the reconnect delay (defaults 500ms, 30s).
	MinBackoff, MaxBackoff time.Duration
	// ConnectTimeout bounds the TCP connection setup only (default 5s;
	// gRPC's own is 20s): an address that swallows the attempt — a black
	// hole, a source address not usable yet right after boot — must not
	// keep the agent from the next central for long. It does not cover
	// the TLS handshake: under a reconnect storm a handshake cut off and
	// retried throws central's work away (docs/agent-protocol.md).
	ConnectTimeout time.Duration
	// HandshakeTimeout bounds what follows TCP up to central's welcome:
	// the TLS handshake and hello (default 20s). Each attempt that runs
	// out doubles it, up to MaxHandshakeTimeout (default 2m); a welcome
	// sets it back. A central that is busy finishing handshakes gets the
	// time it needs; a silent one is still left.
	HandshakeTimeout, MaxHandshakeTimeout time.Duration
	// SessionRefresh is how often, while it holds a stream, the agent
	// makes a short extra TLS connection to central to get a fresh
	// session ticket (default 24h, ±25 % jitter; negative: never). A
	// ticket is accepted for about a week: without a refresh, an agent
	// whose stream outlived that would return from a central restart with
	// a full handshake, together with the whole fleet.
	SessionRefresh time.Duration
	// DialOptions are added to the agent's own.
	DialOptions []grpc.DialOption
	// Console, when set, serves central's ConsoleOpen messages (metal-bmc):
	// it is called in a goroutine of its own with the stream's context and
	// a dial of AgentService.Console on the stream's connection, with the
	// agent's credential. It ends with the stream at the latest.
	Console func(ctx context.Context, open *agentv1.ConsoleOpen, dial ConsoleDial)
}

// ConsoleDial opens an AgentService.Console stream to the central that
// sent a ConsoleOpen, on the connection of the agent's stream.
type ConsoleDial func(ctx context.Context) (agentv1.AgentService_ConsoleClient, error)

// Agent is a running agent; see Run.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	state *state
	next  int
	// applied is the revision in effect locally; received the newest
	// revision central sent; lag this agent's share of the lag gauge.
	applied  atomic.Uint64
	received atomic.Uint64
	lag      atomic.Int64
	// factsDone is the report_facts_generation last executed.
	factsDone uint64
	connected atomic.Bool
	// lastDoc is when the last document arrived (unix nanoseconds).
	lastDoc atomic.Int64
	phase   atomic.Value // Phase
	outbox  *outbox
	// credential is the agent's own credential once it has one (given, or
	// issued for a boot token); readable from any goroutine.
	credential atomic.Pointer[string]
	// closeReq carries Close's request to the session holding the stream.
	closeReq chan chan error
	// hsTimeout is the handshake timeout of the next attempt; only Run's
	// goroutine touches it.
	hsTimeout time.Duration
}

// New checks cfg and loads the agent's local state.
func New(cfg Config) (*Agent, error) {
	if cfg.Kind == agentv1.Kind_KIND_UNSPECIFIED {
		return nil, errors.New("agent: kind required")
	}
	if cfg.Identity == "" {
		return nil, errors.New("agent: identity required")
	}
	if len(cfg.Centrals) == 0 {
		return nil, errors.New("agent: at least one central address required")
	}
	if cfg.Reconciler == nil {
		return nil, errors.New("agent: reconciler required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 500 * time.Millisecond
	}
	if cfg.ConnectTimeout <= 0 {
		cfg.ConnectTimeout = 5 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.HandshakeTimeout <= 0 {
		cfg.HandshakeTimeout = 20 * time.Second
	}
	if cfg.MaxHandshakeTimeout < cfg.HandshakeTimeout {
		cfg.MaxHandshakeTimeout = max(2*time.Minute, cfg.HandshakeTimeout)
	}
	if cfg.TLS != nil {
		cfg.TLS = withSessionCache(cfg.TLS)
	}
	if cfg.SessionRefresh == 0 {
		cfg.SessionRefresh = 24 * time.Hour
	}
	st, err := openState(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	switch {
	case cfg.Token == "":
		cfg.Token = st.credential
	case cfg.Token != st.credential:
		// Kept so that the agent restarts from its state dir alone.
		if err := st.saveCredential(cfg.Token); err != nil {
			return nil, err
		}
	}
	if cfg.Token == "" && cfg.BootToken == "" {
		return nil, errors.New("agent: no credential: give a token or a boot token")
	}
	a := &Agent{cfg: cfg, log: cfg.Log, state: st, next: rand.N(len(cfg.Centrals)), factsDone: st.factsDone, outbox: newOutbox(cfg.Log, cfg.Metrics), closeReq: make(chan chan error), hsTimeout: cfg.HandshakeTimeout}
	if cfg.Token != "" {
		a.credential.Store(&cfg.Token)
	}
	return a, nil
}

// Credential is the agent's own credential: the one it was given, or the
// one central issued for its boot token; "" while it has none. An
// installer hands it on to the system it installs.
func (a *Agent) Credential() string {
	if p := a.credential.Load(); p != nil {
		return *p
	}
	return ""
}

// Applied is the revision in effect locally (0: none yet).
func (a *Agent) Applied() uint64 { return a.applied.Load() }

// Phase is what the agent is doing with its connection to central.
type Phase string

// Phases of an agent.
const (
	PhaseStarting  Phase = "starting"
	PhaseDialing   Phase = "dialing"
	PhaseHello     Phase = "hello"
	PhaseConnected Phase = "connected"
	PhaseBackoff   Phase = "backoff"
	PhaseStopped   Phase = "stopped"
)

// Phase reports what the agent is doing now.
func (a *Agent) Phase() Phase {
	if p, ok := a.phase.Load().(Phase); ok {
		return p
	}
	return PhaseStarting
}

// LastDocument is when central last sent a document (zero: never).
func (a *Agent) LastDocument() time.Time {
	if n := a.lastDoc.Load(); n != 0 {
		return time.Unix(0, n)
	}
	return time.Time{}
}

// Connected reports whether the agent holds a stream now.
func (a *Agent) Connected() bool { return a.connected.Load() }

// ErrRefused wraps the final answer of a central that will not accept this
// agent (bad credential, wrong identity, malformed hello): retrying with the
// same configuration cannot help.
var ErrRefused = errors.New("refused by central")

// Run applies the cached document, if any, then holds a stream to central
// until ctx ends, reconnecting after every failure. It returns nil when ctx
// ends and an error wrapping ErrRefused when central refuses the agent.
func (a *Agent) Run(ctx context.Context) error {
	if d := a.state.desired; d != nil {
		// Offline start: converge on what central wanted last, before and
		// regardless of reaching it.
		a.log.Info("applying cached desired document", "revision", d.GetRevision())
		a.apply(ctx, d)
	}
	b := backoff{min: a.cfg.MinBackoff, max: a.cfg.MaxBackoff}
	defer a.phase.Store(PhaseStopped)
	// lost is when the agent last had no stream: its start, or the end of
	// its last stream.
	lost := time.Now()
	for {
		established, err := a.session(ctx)
		if ctx.Err() != nil || errors.Is(err, errClosed) {
			return nil
		}
		if refused(err) {
			return fmt.Errorf("%w: %v", ErrRefused, err)
		}
		switch {
		case established:
			b.reset()
			lost = time.Now()
			a.hsTimeout = a.cfg.HandshakeTimeout
		case errors.Is(err, errHandshakeTimeout):
			a.cfg.Metrics.handshakeTimeout()
			a.hsTimeout = min(2*a.hsTimeout, a.cfg.MaxHandshakeTimeout)
		}
		// The wait never exceeds half the time the agent has been without
		// a stream: after an outage of a few seconds the fleet returns
		// within a few seconds, not after the backoff's ceiling, while a
		// long outage still spreads it over up to MaxBackoff.
		delay := b.next(max(a.cfg.MinBackoff, time.Since(lost)/2))
		if hint := retryDelay(err); hint > 0 {
			// Central asked for at least this much; jitter on top keeps
			// the agents it shed from coming back together.
			delay = hint + rand.N(hint/2+1)
		}
		a.log.Debug("stream ended; reconnecting", "err", err, "in", delay)
		a.cfg.Metrics.reconnect()
		a.phase.Store(PhaseBackoff)
		if !Sleep(ctx, delay) {
			return nil
		}
	}
}

// refused tells final answers from transient ones.
func refused(err error) bool {
	switch status.Code(err) {
	case codes.Unauthenticated, codes.PermissionDenied, codes.InvalidArgument:
		return true
	}
	return false
}

func retryDelay(err error) time.Duration {
	st, ok := status.FromError(err)
	if !ok {
		return 0
	}
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// dial makes a fresh connection per session: the reconnect backoff is
// ours alone, not stacked on gRPC's own (which grows to two minutes).
func (a *Agent) dial() (*grpc.ClientConn, string, error) {
	addrs := a.cfg.Centrals
	if a.cfg.Endpoints != nil {
		if e := a.cfg.Endpoints(); len(e) > 0 {
			addrs = e
		}
	}
	addr := addrs[a.next%len(addrs)]
	a.next++
	creds := insecure.NewCredentials()
	if a.cfg.TLS != nil {
		creds = countedCreds{credentials.NewTLS(a.cfg.TLS), a.cfg.Metrics}
	}
	tcp := net.Dialer{Timeout: a.cfg.ConnectTimeout}
	opts := append([]grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		// ConnectTimeout covers TCP alone; the session's handshake timer
		// covers TLS and hello.
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return tcp.DialContext(ctx, "tcp", addr)
		}),
		// Finds a dead central (or path) within about a minute even
		// while the agent has nothing to send.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 45 * time.Second, Timeout: 15 * time.Second, PermitWithoutStream: true}),
		// gRPC's own bound on an attempt must not cut the handshake off
		// before the session's timer does.
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: grpcbackoff.DefaultConfig, MinConnectTimeout: a.cfg.ConnectTimeout + a.hsTimeout}),
	}, a.cfg.DialOptions...)
	// gRPC parses its target as a URL: the zone of a link-local address
	// (an agent relay on a leaf, "[fe80::1%eth0]:4443") must be escaped,
	// or every attempt fails before a packet leaves ("invalid URL escape").
	cc, err := grpc.NewClient(strings.ReplaceAll(addr, "%", "%25"), opts...)
	if err != nil {
		return nil, addr, fmt.Errorf("dial %s: %w", addr, err)
	}
	return cc, addr, nil
}

// Sleep waits d or until ctx ends; false means ctx ended. It is the
// runtime's, exported for the installer's flow, which waits the same way.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// backoff is exponential with full jitter: a random delay up to a ceiling
// that doubles per failure, so that a fleet cut off together does not
// return together.
type backoff struct {
	min, max time.Duration
	n        int
}

// next is the next delay; limit caps the ceiling (but not below min).
func (b *backoff) next(limit time.Duration) time.Duration {
	ceil := b.min << min(b.n, 30)
	if ceil <= 0 || ceil > b.max {
		ceil = b.max
	}
	ceil = max(min(ceil, limit), b.min)
	b.n++
	return rand.N(ceil) + 1
}

func (b *backoff) reset() { b.n = 0 }
