package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// errHandshakeTimeout ends an attempt that got no welcome within the
// handshake timeout.
var errHandshakeTimeout = errors.New("no welcome within the handshake timeout")

// session holds one stream until it fails. established reports whether
// central welcomed the agent (which resets the backoff).
func (a *Agent) session(ctx context.Context) (established bool, err error) {
	hello := &agentv1.Hello{Kind: a.cfg.Kind, Identity: a.cfg.Identity, LastAppliedRevision: a.applied.Load()}
	if a.cfg.Token != "" {
		hello.Credential = &agentv1.Credential{Secret: &agentv1.Credential_Token{Token: a.cfg.Token}}
	} else {
		hello.Credential = &agentv1.Credential{Secret: &agentv1.Credential_BootToken{BootToken: a.cfg.BootToken}}
	}
	// Collected before dialling: the handshake timer measures central, not
	// the local machine.
	if a.cfg.Facts != nil {
		if hello.Facts, err = a.cfg.Facts(ctx); err != nil {
			a.log.Warn("collect facts", "err", err)
		}
	}
	a.phase.Store(PhaseDialing)
	cc, addr, err := a.dial()
	if err != nil {
		return false, err
	}
	defer cc.Close()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// One timer from here to the welcome: TCP (ConnectTimeout bounds that
	// part on its own), TLS and hello. When it fires the stream's context
	// ends and the deferred Close abandons the attempt.
	timeout := a.hsTimeout
	timer := time.AfterFunc(timeout, func() { cancel(errHandshakeTimeout) })
	defer timer.Stop()
	handshakeErr := func(err error) error {
		if errors.Is(context.Cause(ctx), errHandshakeTimeout) {
			return fmt.Errorf("%s: %w after %s", addr, errHandshakeTimeout, timeout)
		}
		return err
	}
	stream, err := agentv1.NewAgentServiceClient(cc).Sync(ctx)
	if err != nil {
		return false, handshakeErr(err)
	}
	a.phase.Store(PhaseHello)
	if err := stream.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Hello{Hello: hello}}); err != nil {
		return false, handshakeErr(recvErr(stream, err))
	}
	first, err := stream.Recv()
	if err != nil {
		return false, handshakeErr(err)
	}
	w := first.GetWelcome()
	if w == nil {
		return false, status.Error(codes.Internal, "central did not answer hello with welcome")
	}
	if tok := w.GetIssuedToken(); tok != "" {
		// The boot token is spent: without this credential the agent
		// could never come back, so it is stored before anything else,
		// even when the timer below has just fired.
		a.cfg.Token = tok
		a.credential.Store(&tok)
		if err := a.state.saveCredential(tok); err != nil {
			a.log.Error("store issued credential", "err", err)
		}
	}
	if !timer.Stop() {
		// Fired between the welcome's arrival and here: the stream is gone.
		return false, handshakeErr(context.Cause(ctx))
	}
	hb := w.GetHeartbeatInterval().AsDuration()
	if hb <= 0 {
		hb = 20 * time.Second
	}
	// Against a central from before acks a report is forgotten once sent.
	acks := w.GetReportAcks()
	a.outbox.restart()
	a.log.Info("connected to central", "central", addr, "replica", w.GetReplica(), "agent_id", w.GetAgentId())
	a.connected.Store(true)
	a.phase.Store(PhaseConnected)
	a.cfg.Metrics.connect(1)
	defer func() {
		a.connected.Store(false)
		a.cfg.Metrics.connect(-1)
	}()

	var latest atomic.Pointer[agentv1.Desired]
	wake := make(chan struct{}, 1)
	recvDone := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvDone <- err
				return
			}
			if ack := m.GetAck(); ack != nil {
				a.outbox.ack(ack)
			}
			if open := m.GetConsoleOpen(); open != nil && a.cfg.Console != nil {
				go a.cfg.Console(ctx, open, a.consoleDial(cc))
			}
			if d := m.GetDesired(); d != nil {
				a.cfg.Metrics.document()
				a.lastDoc.Store(time.Now().UnixNano())
				a.received.Store(d.GetRevision())
				a.updateLag()
				// Only the newest document matters; one still waiting to be
				// applied is replaced.
				latest.Store(d)
				select {
				case wake <- struct{}{}:
				default:
				}
			}
		}
	}()

	// What was emitted while no stream was up goes first.
	if err := a.sendOutbox(stream, acks); err != nil {
		return true, streamErr(recvDone, err)
	}
	tick := time.NewTicker(hb)
	defer tick.Stop()
	refresh := a.refreshTimer()
	defer refresh.Stop()
	for {
		select {
		case <-ctx.Done():
			return true, ctx.Err()
		case <-refresh.C:
			go a.refreshSession(ctx, addr)
			refresh.Reset(jitter(a.cfg.SessionRefresh))
		case err := <-recvDone:
			return true, err
		case <-tick.C:
			if err := stream.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{AppliedRevision: a.applied.Load()}}}); err != nil {
				return true, streamErr(recvDone, err)
			}
		case <-a.outbox.wake:
			if err := a.sendOutbox(stream, acks); err != nil {
				return true, streamErr(recvDone, err)
			}
		case done := <-a.closeReq:
			done <- a.closeStream(ctx, stream, recvDone, acks)
			return true, errClosed
		case <-wake:
			d := latest.Swap(nil)
			if d == nil {
				continue
			}
			// The answer goes through the outbox: it too is kept until
			// central acknowledges it.
			a.outbox.push(a.converge(ctx, d))
			if err := a.sendOutbox(stream, acks); err != nil {
				return true, streamErr(recvDone, err)
			}
		}
	}
}

// closeStream sends what is left, half-closes the stream and waits for
// central to end it: central reads, stores and answers every message
// before it sees the end, so a clean end (io.EOF) with nothing left
// unanswered acknowledges them all.
func (a *Agent) closeStream(ctx context.Context, stream agentv1.AgentService_SyncClient, recvDone <-chan error, acks bool) error {
	if err := a.sendOutbox(stream, acks); err != nil {
		return streamErr(recvDone, err)
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	select {
	case err := <-recvDone:
		if !errors.Is(err, io.EOF) {
			return fmt.Errorf("stream ended: %w", err)
		}
		if empty, _ := a.outbox.empty(); !empty {
			return errors.New("central ended the stream before it answered every report")
		}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sendOutbox sends every report not yet sent on this stream, in order.
// They stay in the outbox until central acknowledges them; a central
// without acks stores what it reads (or ends the stream), so there a sent
// report is forgotten.
func (a *Agent) sendOutbox(stream agentv1.AgentService_SyncClient, acks bool) error {
	for {
		r := a.outbox.next(a.applied.Load())
		if r == nil {
			return nil
		}
		if err := stream.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Report{Report: r}}); err != nil {
			return err
		}
		if !acks {
			a.outbox.forget(r)
		}
	}
}

// recvErr turns a failed Send into the stream's real status: gRPC reports
// io.EOF on Send and the reason on Recv. Only for before the receiving
// goroutine runs: two concurrent Recv calls on one stream can hang.
func recvErr(stream agentv1.AgentService_SyncClient, sendErr error) error {
	if _, err := stream.Recv(); err != nil {
		return err
	}
	return sendErr
}

// streamErr is recvErr once the receiving goroutine owns Recv: it reports
// the stream's end on recvDone.
func streamErr(recvDone <-chan error, sendErr error) error {
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	select {
	case err := <-recvDone:
		return err
	case <-t.C:
		return sendErr
	}
}

// converge persists and applies d and says what happened.
func (a *Agent) converge(ctx context.Context, d *agentv1.Desired) *agentv1.Report {
	if err := a.state.saveDesired(d); err != nil {
		// Still apply: being current matters more than the offline cache.
		a.log.Error("store desired document", "err", err)
	}
	r := &agentv1.Report{}
	if err := a.apply(ctx, d); err != nil {
		r.AppliedRevision = a.applied.Load()
		r.Health = agentv1.Health_HEALTH_ERROR
		r.Message = truncate(err.Error(), 4096)
		r.Events = []*agentv1.Event{{Time: timestamppb.Now(), Type: "ApplyFailed", Message: truncate(fmt.Sprintf("revision %d: %v", d.GetRevision(), err), 4096)}}
		return r
	}
	r.AppliedRevision = d.GetRevision()
	r.Health = agentv1.Health_HEALTH_OK
	if gen := d.GetSettings().GetReportFactsGeneration(); gen > a.factsDone && a.cfg.Facts != nil {
		facts, err := a.cfg.Facts(ctx)
		if err != nil {
			r.Health, r.Message = agentv1.Health_HEALTH_DEGRADED, truncate("collect facts: "+err.Error(), 4096)
		} else {
			r.Facts = facts
			a.factsDone = gen
			if err := a.state.saveFactsDone(gen); err != nil {
				a.log.Warn("store intent generation", "err", err)
			}
		}
	}
	return r
}

// apply runs the reconciler and follows the shared settings.
func (a *Agent) apply(ctx context.Context, d *agentv1.Desired) error {
	if lv := a.cfg.LogLevel; lv != nil {
		if l, ok := parseLevel(d.GetSettings().GetLogLevel()); ok {
			lv.Set(l)
		}
	}
	if err := a.cfg.Reconciler.Apply(ctx, d); err != nil {
		a.cfg.Metrics.applyError()
		a.log.Error("apply desired document", "revision", d.GetRevision(), "err", err)
		return err
	}
	a.applied.Store(d.GetRevision())
	a.updateLag()
	a.log.Debug("applied desired document", "revision", d.GetRevision())
	return nil
}

func parseLevel(s string) (slog.Level, bool) {
	var l slog.Level
	if s == "" {
		return l, false
	}
	if err := l.UnmarshalText([]byte(strings.ToUpper(s))); err != nil {
		return l, false
	}
	return l, true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// updateLag keeps this agent's share of the process's revision lag gauge.
func (a *Agent) updateLag() {
	lag := int64(a.received.Load()) - int64(a.applied.Load())
	lag = max(lag, 0)
	a.cfg.Metrics.addLag(lag - a.lag.Swap(lag))
}

// consoleDial dials console streams on cc, the connection of the agent's
// stream: the same central replica, which holds the session.
func (a *Agent) consoleDial(cc *grpc.ClientConn) ConsoleDial {
	return func(ctx context.Context) (agentv1.AgentService_ConsoleClient, error) {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+a.Credential())
		return agentv1.NewAgentServiceClient(cc).Console(ctx)
	}
}
