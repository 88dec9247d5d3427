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
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

var (
	errShuttingDown   = status.Error(codes.Unavailable, "central replica is shutting down; reconnect")
	errSuperseded     = status.Error(codes.Aborted, "superseded by a newer stream of the same agent")
	errCredentialGone = status.Error(codes.Unauthenticated, "agent deleted or its credential replaced")
	errBadToken       = status.Error(codes.Unauthenticated, "invalid agent credential")
	errBadBootToken   = status.Error(codes.Unauthenticated, "boot token invalid, expired or already used")
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
	// a storm must not overrun, so only that is bounded.
	select {
	case h.handshakes <- struct{}{}:
	default:
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

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	c := &conn{kind: hello.GetKind(), identity: hello.GetIdentity(), wake: make(chan struct{}, 1), cancel: cancel}
	welcome, err := h.authenticate(ctx, hello, c)
	if err != nil {
		h.metrics.handshakes.WithLabelValues(resultOf(err)).Inc()
		if status.Code(err) == codes.Internal {
			h.log.Error("agent handshake", "kind", KindName(c.kind), "identity", c.identity, "err", err)
			return status.Error(codes.Unavailable, "central cannot serve the handshake now; retry")
		}
		h.log.Info("agent refused", "kind", KindName(c.kind), "identity", c.identity, "err", err)
		return err
	}
	// Registered before the document is read: a change committed from now
	// on finds the stream, one committed before is in what we read.
	h.conns.put(c)
	defer h.conns.remove(c)
	d, err := h.readDesired(ctx, c.id)
	if err != nil {
		h.metrics.handshakes.WithLabelValues("error").Inc()
		h.log.Error("read desired document", "agent", c.id, "err", err)
		return status.Error(codes.Unavailable, "central cannot read the desired state now; retry")
	}
	if err := stream.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Welcome{Welcome: welcome}}); err != nil {
		return err
	}
	c.offer(d)
	release()
	h.metrics.handshakes.WithLabelValues("ok").Inc()
	kind := KindName(c.kind)
	h.metrics.streams.WithLabelValues(kind).Inc()
	defer h.metrics.streams.WithLabelValues(kind).Dec()
	h.log.Debug("agent connected", "agent", c.id, "kind", kind, "identity", c.identity)

	recvErr := make(chan error, 1)
	go func() { recvErr <- h.recvLoop(ctx, c, stream) }()
	err = h.sendLoop(ctx, c, stream, recvErr)
	h.observed.touch(c.id)
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

// authenticate checks the hello's credential, records the contact and
// fills c's identity; for a boot token it issues the agent's credential.
// Nothing is written when it fails.
func (h *Hub) authenticate(ctx context.Context, hello *agentv1.Hello, c *conn) (*agentv1.Welcome, error) {
	var facts *string
	if hello.GetFacts() != nil {
		b, err := protojson.Marshal(hello.GetFacts())
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encode facts: %v", err)
		}
		s := string(b)
		facts = &s
	}
	welcome := &agentv1.Welcome{HeartbeatInterval: durationpb.New(h.cfg.Heartbeat), Replica: h.cfg.Replica}
	kind := KindName(hello.GetKind())
	if bt := hello.GetCredential().GetBootToken(); bt != "" {
		var issued Enrolment
		err := h.store.Tx(ctx, func(tx pgx.Tx) error {
			var err error
			issued, err = h.exchangeBootToken(ctx, tx, bt, hello)
			if err != nil {
				return err
			}
			return h.touch(ctx, tx, issued.ID, hello, facts)
		})
		if err != nil {
			return nil, asStatus(err)
		}
		c.id, c.tokenHash = issued.ID, auth.Hash(issued.Secret)
		welcome.AgentId, welcome.IssuedToken = issued.ID, issued.Secret
		return welcome, nil
	}
	tok := hello.GetCredential().GetToken()
	hash := auth.Hash(tok)
	err := h.store.Pool().QueryRow(ctx, `UPDATE agents SET replica = $4, last_contact = now(),
			applied_revision = LEAST($5, desired_revision), facts = COALESCE($6::JSONB, facts)
		WHERE token_hash = $1 AND kind = $2 AND identity = $3 RETURNING id`,
		hash, kind, hello.GetIdentity(), h.cfg.Replica, int64(hello.GetLastAppliedRevision()), facts).Scan(&c.id)
	if errors.Is(err, pgx.ErrNoRows) {
		var k, id string
		err := h.store.Pool().QueryRow(ctx, `SELECT kind, identity FROM agents WHERE token_hash = $1`, hash).Scan(&k, &id)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil, errBadToken
		}
		if err != nil {
			return nil, status.Errorf(codes.Internal, "look up credential: %v", err)
		}
		return nil, status.Errorf(codes.PermissionDenied, "this credential belongs to another agent, not %s/%s", kind, hello.GetIdentity())
	}
	if err != nil {
		return nil, status.Errorf(codes.Internal, "authenticate agent: %v", err)
	}
	c.tokenHash = hash
	welcome.AgentId = c.id
	return welcome, nil
}

func asStatus(err error) error {
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Errorf(codes.Internal, "%v", err)
}

// exchangeBootToken consumes a boot token once and gives the installer
// its own credential. An installer known in another partition is refused:
// a partition's boot token proves nothing about other partitions.
func (h *Hub) exchangeBootToken(ctx context.Context, tx pgx.Tx, secret string, hello *agentv1.Hello) (Enrolment, error) {
	var tokenID, partition string
	err := tx.QueryRow(ctx, `UPDATE boot_tokens SET used_at = now()
		WHERE secret_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING id, partition_id`, auth.Hash(secret)).Scan(&tokenID, &partition)
	if errors.Is(err, pgx.ErrNoRows) {
		return Enrolment{}, errBadBootToken
	}
	if err != nil {
		return Enrolment{}, fmt.Errorf("consume boot token: %w", err)
	}
	kind := KindName(hello.GetKind())
	var known *string
	err = tx.QueryRow(ctx, `SELECT partition_id FROM agents WHERE kind = $1 AND identity = $2 FOR UPDATE`, kind, hello.GetIdentity()).Scan(&known)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return Enrolment{}, fmt.Errorf("look up installer: %w", err)
	case known == nil || *known != partition:
		return Enrolment{}, status.Errorf(codes.PermissionDenied, "%s/%s belongs to another partition than this boot token", kind, hello.GetIdentity())
	}
	e, err := h.Enroll(ctx, tx, hello.GetKind(), hello.GetIdentity(), partition, "boot-token/"+tokenID)
	if err != nil {
		return Enrolment{}, err
	}
	if _, err := tx.Exec(ctx, `UPDATE boot_tokens SET used_by = $2 WHERE id = $1`, tokenID, e.ID); err != nil {
		return Enrolment{}, fmt.Errorf("mark boot token used: %w", err)
	}
	return e, nil
}

func (h *Hub) touch(ctx context.Context, tx pgx.Tx, id string, hello *agentv1.Hello, facts *string) error {
	_, err := tx.Exec(ctx, `UPDATE agents SET replica = $2, last_contact = now(),
			applied_revision = LEAST($3, desired_revision), facts = COALESCE($4::JSONB, facts)
		WHERE id = $1`, id, h.cfg.Replica, int64(hello.GetLastAppliedRevision()), facts)
	if err != nil {
		return fmt.Errorf("record contact: %w", err)
	}
	return nil
}

func (h *Hub) readDesired(ctx context.Context, id string) (*agentv1.Desired, error) {
	var raw []byte
	if err := h.store.Pool().QueryRow(ctx, `SELECT desired FROM agents WHERE id = $1`, id).Scan(&raw); err != nil {
		return nil, fmt.Errorf("read desired document: %w", err)
	}
	return decode(raw)
}

// sendLoop sends the newest document whenever it changes.
func (h *Hub) sendLoop(ctx context.Context, c *conn, stream agentv1.AgentService_SyncServer, recvErr <-chan error) error {
	for {
		select {
		case <-ctx.Done():
			if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
				return cause
			}
			return status.FromContextError(ctx.Err()).Err()
		case err := <-recvErr:
			return err
		case <-c.wake:
		}
		d := c.latest.Load()
		if d == nil || d.GetRevision() <= c.sent.Load() {
			continue
		}
		if err := stream.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Desired{Desired: d}}); err != nil {
			return err
		}
		c.sent.Store(d.GetRevision())
		h.metrics.sent.Inc()
		if at := d.GetChangedAt(); at != nil {
			h.metrics.propagation.Observe(time.Since(at.AsTime()).Seconds())
		}
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
				return fieldErrors{{Field: "heartbeat.applied_revision", Description: "newer than the newest document sent"}}.err("heartbeat")
			}
			h.observed.contact(c.id, msg.Heartbeat.GetAppliedRevision())
		case *agentv1.SyncRequest_Report:
			r := msg.Report
			if err := validateReport(r, sent); err != nil {
				return err
			}
			if len(r.GetEvents()) > 0 {
				if err := writeEvents(ctx, h.store, c.id, r.GetEvents()); err != nil {
					h.log.Error("store agent events", "agent", c.id, "err", err)
					return status.Error(codes.Unavailable, "central cannot store events now; reconnect and report again")
				}
				h.metrics.events.Add(float64(len(r.GetEvents())))
			}
			if err := h.observed.report(c.id, r); err != nil {
				return status.Errorf(codes.Internal, "%v", err)
			}
		case *agentv1.SyncRequest_Hello:
			return status.Error(codes.InvalidArgument, "malformed stream: hello sent twice")
		default:
			return status.Error(codes.InvalidArgument, "malformed stream: empty message")
		}
	}
}
