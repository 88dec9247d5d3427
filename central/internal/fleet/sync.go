package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/field"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

var (
	errShuttingDown   = status.Error(codes.Unavailable, "central replica is shutting down; reconnect")
	errSuperseded     = status.Error(codes.Aborted, "superseded by a newer stream of the same agent")
	errCredentialGone = status.Error(codes.Unauthenticated, "agent deleted or its credential replaced")
	errBadToken       = status.Error(codes.Unauthenticated, "invalid agent credential")
	errBadBootToken   = status.Error(codes.Unauthenticated, "boot token invalid, expired or already used")
	errSlowAgent      = status.Error(codes.DeadlineExceeded, "the agent stopped reading its stream")
)

// shed refuses a handshake during overload with a randomised retry delay,
// so that a reconnect storm spreads out instead of piling up.
func shed() error {
	delay := 500*time.Millisecond + rand.N(2500*time.Millisecond)
	st := status.New(codes.Unavailable, "central is busy with other handshakes; retry later")
	if d, err := st.WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(delay)}); err == nil {
		st = d
	}
	return st.Err()
}

// Sync implements agentv1.AgentServiceServer.
func (h *Hub) Sync(stream agentv1.AgentService_SyncServer) error {
	select {
	case <-h.stopped:
		return errShuttingDown
	default:
	}
	ctx := stream.Context()
	hello, err := h.recvHello(ctx, stream)
	if err != nil {
		h.metrics.handshakes.WithLabelValues("invalid").Inc()
		return err
	}
	// Waiting for a hello costs little; the database work after it is what
	// a storm must not overrun, so only that is bounded: a short wait in
	// line, then a polite refusal.
	if !h.admit(ctx) {
		h.metrics.handshakes.WithLabelValues("shed").Inc()
		return shed()
	}
	held := true
	release := func() {
		if held {
			<-h.handshakes
			held = false
		}
	}
	defer release()

	var closable closableInfo
	ok := false
	if p, has := peer.FromContext(ctx); has {
		closable, ok = p.AuthInfo.(closableInfo)
	}
	if !ok {
		// A server set up without fleet.Creds: streams could not be ended.
		h.log.Error("agent stream without fleet.Creds transport credentials")
		return status.Error(codes.Internal, "central is misconfigured for agent streams")
	}
	c := &conn{kind: hello.GetKind(), identity: hello.GetIdentity(), stream: stream, raw: closable.raw}
	epoch := h.hintEpoch.Load()
	welcome, d, err := h.authenticate(ctx, hello, c)
	if err != nil {
		h.metrics.handshakes.WithLabelValues(resultOf(err)).Inc()
		if status.Code(err) == codes.Internal {
			h.log.Error("agent handshake", "kind", KindName(c.kind), "identity", c.identity, "err", err)
			return status.Error(codes.Unavailable, "central cannot serve the handshake now; retry")
		}
		h.log.Info("agent refused", "kind", KindName(c.kind), "identity", c.identity, "err", err)
		return err
	}
	h.conns.put(c)
	defer h.conns.remove(c)
	if h.hintEpoch.Load() != epoch {
		// A hint arrived between reading the document and registering the
		// stream; it may have been for this agent and found no stream.
		// Read again rather than wait for the resync.
		if d, err = h.readDesired(ctx, c.id); err != nil {
			h.metrics.handshakes.WithLabelValues("error").Inc()
			h.log.Error("read desired document", "agent", c.id, "err", err)
			return status.Error(codes.Unavailable, "central cannot read the desired state now; retry")
		}
	}
	welcome.ReportAcks = true // report.go
	if err := stream.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Welcome{Welcome: welcome}}); err != nil {
		return err
	}
	c.mu.Lock()
	c.ready = true
	c.mu.Unlock()
	h.offer(c, d)
	release()
	h.metrics.handshakes.WithLabelValues("ok").Inc()
	kind := KindName(c.kind)
	h.metrics.streams.WithLabelValues(kind).Inc()
	defer h.metrics.streams.WithLabelValues(kind).Dec()
	h.log.Debug("agent connected", "agent", c.id, "kind", kind, "identity", c.identity)

	err = h.recvLoop(ctx, c, stream)
	// No send may run once the handler returns; one in flight finishes
	// first (bounded by SendTimeout).
	c.mu.Lock()
	c.done = true
	c.mu.Unlock()
	h.observed.touch(c.id)
	if cause := c.closedBy(); cause != nil {
		return cause
	}
	return err
}

func resultOf(err error) string {
	switch status.Code(err) {
	case codes.Unauthenticated:
		return "unauthenticated"
	case codes.PermissionDenied:
		return "denied"
	case codes.InvalidArgument:
		return "invalid"
	}
	return "error"
}

func (h *Hub) recvHello(ctx context.Context, stream agentv1.AgentService_SyncServer) (*agentv1.Hello, error) {
	type result struct {
		m   *agentv1.SyncRequest
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := stream.Recv()
		ch <- result{m, err}
	}()
	t := time.NewTimer(h.cfg.HelloTimeout)
	defer t.Stop()
	var r result
	select {
	case r = <-ch:
	case <-t.C:
		return nil, status.Errorf(codes.DeadlineExceeded, "no hello within %s", h.cfg.HelloTimeout)
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if r.err != nil {
		return nil, r.err
	}
	hello := r.m.GetHello()
	if hello == nil {
		return nil, status.Error(codes.InvalidArgument, "malformed stream: the first message must be a hello")
	}
	if err := validateHello(hello); err != nil {
		return nil, err
	}
	return hello, nil
}

// authenticate checks the hello's credential and returns the welcome and
// the agent's document; for a boot token it issues the agent's credential.
// A token handshake writes nothing synchronously: contact, facts and the
// applied revision go to the batched observer, so a reconnect storm costs
// one indexed read per agent, not a commit. Nothing is recorded when it fails.
func (h *Hub) authenticate(ctx context.Context, hello *agentv1.Hello, c *conn) (*agentv1.Welcome, *agentv1.Desired, error) {
	welcome := &agentv1.Welcome{HeartbeatInterval: durationpb.New(h.cfg.Heartbeat), Replica: h.cfg.Replica}
	kind := KindName(hello.GetKind())
	var raw []byte
	if bt := hello.GetCredential().GetBootToken(); bt != "" {
		var issued Enrolment
		err := h.store.Tx(ctx, func(tx pgx.Tx) error {
			var err error
			if issued, err = h.exchangeBootToken(ctx, tx, bt, hello); err != nil {
				return err
			}
			return tx.QueryRow(ctx, `SELECT desired FROM agents WHERE id = $1`, issued.ID).Scan(&raw)
		})
		if err != nil {
			return nil, nil, asStatus(err)
		}
		c.id, c.tokenHash, c.partition = issued.ID, auth.Hash(issued.Secret), issued.Partition
		welcome.AgentId, welcome.IssuedToken = issued.ID, issued.Secret
	} else {
		hash := auth.Hash(hello.GetCredential().GetToken())
		var k, identity string
		var partition *string
		err := h.store.Pool().QueryRow(ctx, `SELECT id, kind, identity, partition_id, desired FROM agents WHERE token_hash = $1`, hash).
			Scan(&c.id, &k, &identity, &partition, &raw)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, nil, errBadToken
		}
		if err != nil {
			return nil, nil, status.Errorf(codes.Internal, "authenticate agent: %v", err)
		}
		// A machine's credential serves its installer and, once installed,
		// its phonehome: the same machine, the same document.
		machine := k == KindName(agentv1.Kind_KIND_INSTALLER) && hello.GetKind() == agentv1.Kind_KIND_PHONEHOME
		if (k != kind && !machine) || identity != hello.GetIdentity() {
			return nil, nil, status.Errorf(codes.PermissionDenied, "this credential belongs to another agent, not %s/%s", kind, hello.GetIdentity())
		}
		if partition != nil {
			c.partition = *partition
		}
		c.tokenHash = hash
		welcome.AgentId = c.id
	}
	if rep, ok := h.reporters[hello.GetKind()]; ok && hello.GetFacts() != nil {
		// A kind whose facts make domain state (a switch's ports) has them
		// acted on at once: an agent that finds nothing changed reports no
		// facts again, and its document may depend on them.
		a := Agent{ID: c.id, Kind: hello.GetKind(), Identity: hello.GetIdentity(), Partition: c.partition}
		r := &agentv1.Report{AppliedRevision: hello.GetLastAppliedRevision(), Facts: hello.GetFacts()}
		if err := h.store.Tx(ctx, func(tx pgx.Tx) error { return rep.Report(ctx, tx, a, r) }); err != nil {
			return nil, nil, asStatus(err)
		}
		// The facts may have changed the document.
		if err := h.store.Pool().QueryRow(ctx, `SELECT desired FROM agents WHERE id = $1`, c.id).Scan(&raw); err != nil {
			return nil, nil, status.Errorf(codes.Internal, "read desired document: %v", err)
		}
	}
	d, err := decode(raw)
	if err != nil {
		return nil, nil, status.Errorf(codes.Internal, "%v", err)
	}
	h.observed.hello(c.id, hello)
	return welcome, d, nil
}

func asStatus(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Errorf(codes.Internal, "%v", err)
}

func (h *Hub) readDesired(ctx context.Context, id string) (*agentv1.Desired, error) {
	var raw []byte
	if err := h.store.Pool().QueryRow(ctx, `SELECT desired FROM agents WHERE id = $1`, id).Scan(&raw); err != nil {
		return nil, fmt.Errorf("read desired document: %w", err)
	}
	return decode(raw)
}

// offer makes d the document to send to c unless a newer one is there,
// and schedules c with a sender.
func (h *Hub) offer(c *conn, d *agentv1.Desired) {
	for {
		cur := c.latest.Load()
		if cur != nil && cur.GetRevision() >= d.GetRevision() {
			return
		}
		if c.latest.CompareAndSwap(cur, d) {
			break
		}
	}
	if c.queued.CompareAndSwap(false, true) {
		select {
		case h.sendq <- c:
		case <-h.stopped:
		}
	}
}

// sendLoop is one of the hub's senders.
func (h *Hub) sendLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case c := <-h.sendq:
			c.queued.Store(false)
			h.push(c)
		}
	}
}

// push sends c's newest document if it has not been sent.
func (h *Hub) push(c *conn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.ready || c.done {
		return
	}
	d := c.latest.Load()
	if d == nil || d.GetRevision() <= c.sent.Load() {
		return
	}
	watchdog := time.AfterFunc(h.cfg.SendTimeout, func() { c.close(errSlowAgent) })
	err := c.stream.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Desired{Desired: d}})
	watchdog.Stop()
	if err != nil {
		c.close(err)
		return
	}
	first := c.sent.Swap(d.GetRevision()) == 0
	h.metrics.sent.Inc()
	if at := d.GetChangedAt(); at != nil && !first {
		// The first document of a stream may be old; only changes
		// pushed to a connected agent measure propagation.
		h.metrics.propagation.Observe(time.Since(at.AsTime()).Seconds())
	}
}

// recvLoop handles reports and heartbeats. A malformed message ends the
// stream before anything of it is stored.
func (h *Hub) recvLoop(ctx context.Context, c *conn, stream agentv1.AgentService_SyncServer) error {
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		sent := max(c.sent.Load(), c.latestRevision())
		switch msg := m.GetMsg().(type) {
		case *agentv1.SyncRequest_Heartbeat:
			if msg.Heartbeat.GetAppliedRevision() > sent {
				return field.InvalidArgument("malformed heartbeat", []*errdetails.BadRequest_FieldViolation{{Field: "heartbeat.applied_revision", Description: "newer than the newest document sent"}})
			}
			h.observed.contact(c.id, msg.Heartbeat.GetAppliedRevision())
		case *agentv1.SyncRequest_Report:
			if err := h.report(ctx, c, msg.Report, sent); err != nil {
				return err
			}
		case *agentv1.SyncRequest_Hello:
			return status.Error(codes.InvalidArgument, "malformed stream: hello sent twice")
		default:
			return status.Error(codes.InvalidArgument, "malformed stream: empty message")
		}
	}
}
