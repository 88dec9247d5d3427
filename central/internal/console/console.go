// Package console is central's side of the machines' serial console
// (docs/bmc.md, "The console path"). A person's MachineService.Console
// stream and the partition's metal-bmc's AgentService.Console stream meet
// here: the broker asks metal-bmc, over its agent stream, to open a
// session; metal-bmc dials back on the same connection; the broker joins
// the two streams until one side ends, the machine's allocation changes or
// central shuts down. It owns the console_sessions table.
package console

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/field"
	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Opener sends a ConsoleOpen to an agent connected to this replica; the
// fleet's hub is one.
type Opener interface {
	OpenConsole(ctx context.Context, agentID string, open *agentv1.ConsoleOpen) error
}

// Config tunes the broker; zero fields take DefaultConfig's.
type Config struct {
	// Watch is how often a session re-reads its machine's allocation.
	Watch time.Duration
	// Join bounds the wait for metal-bmc to dial back.
	Join time.Duration
	// Buffer is how many messages may wait per direction before the
	// reading side stops reading (backpressure through HTTP/2 flow control).
	Buffer int
}

// DefaultConfig is what metal-central runs with.
func DefaultConfig() Config { return Config{Watch: time.Second, Join: 30 * time.Second, Buffer: 8} }

// Limits of what a person may send.
const (
	// MaxData bounds one message's bytes in either direction.
	MaxData = 64 << 10
	// MaxWindow bounds a window's rows and columns.
	MaxWindow = 10000
)

// Reasons a session ends with, as the user reads them.
const (
	ReasonAllocation = "the machine's allocation changed (freed, reallocated or reinstalled)"
	ReasonUser       = "ended by the user"
	ReasonShutdown   = "central is shutting down"
)

// Broker holds this replica's console sessions.
type Broker struct {
	cfg     Config
	store   *store.Store
	opener  Opener
	log     *slog.Logger
	metrics *metrics

	mu        sync.Mutex
	byMachine map[string]*session
	byID      map[string]*session
}

// New builds a broker.
func New(st *store.Store, opener Opener, log *slog.Logger, cfg Config) *Broker {
	d := DefaultConfig()
	if cfg.Watch <= 0 {
		cfg.Watch = d.Watch
	}
	if cfg.Join <= 0 {
		cfg.Join = d.Join
	}
	if cfg.Buffer <= 0 {
		cfg.Buffer = d.Buffer
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Broker{cfg: cfg, store: st, opener: opener, log: log.With("part", "console"), metrics: newMetrics(),
		byMachine: map[string]*session{}, byID: map[string]*session{}}
}

// Collector exports the broker's metrics.
func (b *Broker) Collector() prometheus.Collector { return b.metrics }

// session is one console, from the person's open to its end.
type session struct {
	id, machine, partition, agentID, project, allocation string
	protocol                                             agentv1.BmcProtocol

	// joined receives metal-bmc's stream once; toUser and toAgent are the
	// bounded queues between the two streams' goroutines.
	joined  chan struct{}
	joinMu  sync.Mutex
	agent   bool
	toUser  chan []byte
	toAgent chan *agentv1.ConsoleResponse

	once   sync.Once
	done   chan struct{}
	reason string

	bytesIn, bytesOut atomic.Int64
}

// end ends the session; the first reason wins.
func (s *session) end(reason string) {
	s.once.Do(func() {
		s.reason = reason
		close(s.done)
	})
}

// PeopleStream is the person's side (MachineService_ConsoleServer).
type PeopleStream interface {
	Context() context.Context
	Send(*apiv1.MachineServiceConsoleResponse) error
	Recv() (*apiv1.MachineServiceConsoleRequest, error)
}

// target is what a session needs to know of its machine.
type target struct {
	partition, project, allocation, agentID, address string
	protocol                                         agentv1.BmcProtocol
}

// lookup reads the machine and its BMC: the machine must exist and its
// BMC must have been reported by a metal-bmc.
func (b *Broker) lookup(ctx context.Context, id string) (target, error) {
	var t target
	err := b.store.Pool().QueryRow(ctx, `SELECT COALESCE(partition_id, ''), COALESCE(project_id, ''), COALESCE(allocation_id, '') FROM machines WHERE id = $1`, id).
		Scan(&t.partition, &t.project, &t.allocation)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, status.Errorf(codes.NotFound, "id: machine %s not found", auth.Quote(id))
	}
	if err != nil {
		b.log.Error("console: read machine", "machine", id, "err", err)
		return t, status.Error(codes.Unavailable, "cannot read the machine now")
	}
	var raw []byte
	err = b.store.Pool().QueryRow(ctx, `SELECT agent_id, fact FROM machine_bmcs WHERE machine_uuid = $1`, strings.ToLower(id)).Scan(&t.agentID, &raw)
	if errors.Is(err, pgx.ErrNoRows) {
		return t, status.Errorf(codes.FailedPrecondition, "id: machine %s has no BMC known to central (no metal-bmc has reported one for it)", auth.Quote(id))
	}
	if err != nil {
		b.log.Error("console: read machine's bmc", "machine", id, "err", err)
		return t, status.Error(codes.Unavailable, "cannot read the machine's BMC now")
	}
	var f agentv1.BmcFact
	if err := protojson.Unmarshal(raw, &f); err != nil {
		b.log.Error("console: decode machine's bmc", "machine", id, "err", err)
		return t, status.Errorf(codes.Internal, "machine %s's BMC record cannot be read", auth.Quote(id))
	}
	t.address, t.protocol = f.GetAddress(), f.GetProtocol()
	if t.address == "" {
		return t, status.Errorf(codes.FailedPrecondition, "id: machine %s's BMC has no address", auth.Quote(id))
	}
	return t, nil
}

// CheckWindow validates a window size; nil is no size.
func CheckWindow(field string, w *agentv1.ConsoleWindow) error {
	if w == nil {
		return nil
	}
	if w.GetRows() == 0 || w.GetRows() > MaxWindow {
		return invalid(field+".rows", fmt.Sprintf("must be 1-%d, not %d", MaxWindow, w.GetRows()))
	}
	if w.GetCols() == 0 || w.GetCols() > MaxWindow {
		return invalid(field+".cols", fmt.Sprintf("must be 1-%d, not %d", MaxWindow, w.GetCols()))
	}
	return nil
}

// Serve runs a person's console stream whose first message, first, the
// caller has received (and the interceptor authorised). It returns when
// the session is over; the last message sent is its end and reason.
func (b *Broker) Serve(stream PeopleStream, first *apiv1.MachineServiceConsoleRequest) error {
	ctx := stream.Context()
	id := first.GetId()
	if err := CheckWindow("window", first.GetWindow()); err != nil {
		return err
	}
	if len(first.GetData()) > MaxData {
		return invalid("data", fmt.Sprintf("at most %d bytes per message", MaxData))
	}
	t, err := b.lookup(ctx, id)
	if err != nil {
		return err
	}
	call := auth.CallFrom(ctx)
	if call == nil {
		return status.Error(codes.Unauthenticated, "console: no authenticated caller")
	}
	s := &session{id: uuid.NewString(), machine: id, partition: t.partition, agentID: t.agentID, project: t.project,
		allocation: t.allocation, protocol: t.protocol, joined: make(chan struct{}),
		toUser: make(chan []byte, b.cfg.Buffer), toAgent: make(chan *agentv1.ConsoleResponse, b.cfg.Buffer), done: make(chan struct{})}
	if err := b.claim(s); err != nil {
		b.metrics.sessions.WithLabelValues("busy").Inc()
		return err
	}
	defer b.release(s)
	if err := b.store.Tx(ctx, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO console_sessions (id, machine_id, project_id, subject, request_id, agent_id) VALUES ($1, $2, NULLIF($3, ''), $4, $5, $6)`,
			s.id, id, t.project, call.Principal.TokenID, call.RequestID, t.agentID); err != nil {
			return fmt.Errorf("record console session: %w", err)
		}
		return store.Audit(ctx, tx, "machine/"+id, t.project)
	}); err != nil {
		// The database's words stay in the log.
		b.log.Error("console: record session", "machine", id, "request_id", call.RequestID, "err", err)
		return status.Errorf(codes.Unavailable, "cannot record the console session now (request id %s)", call.RequestID)
	}
	log := b.log.With("session", s.id, "machine", id, "subject", call.Principal.TokenID)
	start := time.Now()
	b.metrics.active.Inc()
	defer b.metrics.active.Dec()
	defer func() {
		b.metrics.sessions.WithLabelValues("ended").Inc()
		b.metrics.bytes.WithLabelValues("in").Add(float64(s.bytesIn.Load()))
		b.metrics.bytes.WithLabelValues("out").Add(float64(s.bytesOut.Load()))
		b.metrics.duration.Observe(time.Since(start).Seconds())
		// The record is written also when the person's stream is gone.
		wctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		if _, err := b.store.Pool().Exec(wctx, `UPDATE console_sessions SET ended_at = now(), reason = $2, bytes_in = $3, bytes_out = $4 WHERE id = $1`,
			s.id, s.reason, s.bytesIn.Load(), s.bytesOut.Load()); err != nil {
			log.Error("record console session end", "err", err)
		}
		log.Info("console session ended", "reason", s.reason, "bytes_in", s.bytesIn.Load(), "bytes_out", s.bytesOut.Load())
	}()

	if len(first.GetData()) > 0 {
		s.toAgent <- &agentv1.ConsoleResponse{Data: first.GetData()}
	}
	if err := b.opener.OpenConsole(ctx, t.agentID, &agentv1.ConsoleOpen{SessionId: s.id, MachineId: id, Address: t.address,
		Protocol: t.protocol, Window: first.GetWindow()}); err != nil {
		s.end("metal-bmc could not be asked to open the console")
		return err
	}
	log.Info("console session opened", "agent", t.agentID, "protocol", t.protocol.String())

	join := time.NewTimer(b.cfg.Join)
	defer join.Stop()
	select {
	case <-s.joined:
	case <-join.C:
		s.end("metal-bmc did not open the console within " + b.cfg.Join.String())
		return status.Errorf(codes.Unavailable, "metal-bmc did not open the console of machine %s within %s", auth.Quote(id), b.cfg.Join)
	case <-s.done:
		return status.Errorf(codes.Unavailable, "console of machine %s: %s", auth.Quote(id), s.reason)
	case <-ctx.Done():
		s.end(ReasonUser)
		return ctx.Err()
	}
	if err := stream.Send(&apiv1.MachineServiceConsoleResponse{Msg: &apiv1.MachineServiceConsoleResponse_Started{
		Started: &apiv1.ConsoleStarted{SessionId: s.id, Protocol: t.protocol}}}); err != nil {
		s.end(ReasonUser)
		return err
	}

	go b.readPerson(stream, s)
	go b.watch(ctx, s)
	for {
		select {
		case data := <-s.toUser:
			if err := stream.Send(&apiv1.MachineServiceConsoleResponse{Msg: &apiv1.MachineServiceConsoleResponse_Data{Data: data}}); err != nil {
				s.end(ReasonUser)
				return nil
			}
		case <-s.done:
			_ = stream.Send(&apiv1.MachineServiceConsoleResponse{Msg: &apiv1.MachineServiceConsoleResponse_End{End: &apiv1.ConsoleEnd{Reason: s.reason}}})
			return nil
		case <-ctx.Done():
			s.end(ReasonUser)
		}
	}
}

// readPerson forwards the person's keystrokes and window changes.
func (b *Broker) readPerson(stream PeopleStream, s *session) {
	for {
		req, err := stream.Recv()
		if err != nil {
			s.end(ReasonUser)
			return
		}
		if err := CheckWindow("window", req.GetWindow()); err != nil {
			// A bad size is dropped, not fatal: the terminal sends the next.
			b.log.Debug("console: window refused", "session", s.id, "err", err)
			req.Window = nil
		}
		if len(req.GetData()) > MaxData {
			s.end(fmt.Sprintf("the user sent more than %d bytes in one message", MaxData))
			return
		}
		if len(req.GetData()) == 0 && req.GetWindow() == nil {
			continue
		}
		s.bytesIn.Add(int64(len(req.GetData())))
		select {
		case s.toAgent <- &agentv1.ConsoleResponse{Data: req.GetData(), Window: req.GetWindow()}:
		case <-s.done:
			return
		}
	}
}

// watch ends the session when the machine's allocation changes.
func (b *Broker) watch(ctx context.Context, s *session) {
	t := time.NewTicker(b.cfg.Watch)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var alloc string
		err := b.store.Pool().QueryRow(ctx, `SELECT COALESCE(allocation_id, '') FROM machines WHERE id = $1`, s.machine).Scan(&alloc)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			s.end("the machine was deleted")
			return
		case err != nil:
			// A database hiccup does not end a console; the next tick reads again.
			b.log.Warn("console: read allocation", "session", s.id, "err", err)
		case alloc != s.allocation:
			s.end(ReasonAllocation)
			return
		}
	}
}

// claim registers s; one console per machine at a time.
func (b *Broker) claim(s *session) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, busy := b.byMachine[s.machine]; busy {
		return status.Errorf(codes.FailedPrecondition, "id: machine %s already has a console session; only one at a time (end it first)", auth.Quote(s.machine))
	}
	b.byMachine[s.machine] = s
	b.byID[s.id] = s
	return nil
}

func (b *Broker) release(s *session) {
	s.end(ReasonUser)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.byMachine[s.machine] == s {
		delete(b.byMachine, s.machine)
	}
	delete(b.byID, s.id)
}

// EndAll ends every session (central shutting down).
func (b *Broker) EndAll(reason string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.byID {
		s.end(reason)
	}
}

// Attach runs metal-bmc's console stream of agent agentID (authenticated
// by the caller, kind bmc) of partition. Its first frame names the
// session, which must be one this broker opened for this agent.
func (b *Broker) Attach(stream fleet.ConsoleStream, agentID, partition string) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	b.mu.Lock()
	s := b.byID[first.GetSessionId()]
	b.mu.Unlock()
	if s == nil || s.agentID != agentID || s.partition != partition {
		b.metrics.agentRefused.Inc()
		return status.Errorf(codes.PermissionDenied, "session_id: no console session %s is open for this agent", auth.Quote(first.GetSessionId()))
	}
	s.joinMu.Lock()
	taken := s.agent
	s.agent = true
	s.joinMu.Unlock()
	if taken {
		b.metrics.agentRefused.Inc()
		return status.Errorf(codes.FailedPrecondition, "session_id: console session %s is already joined", auth.Quote(s.id))
	}
	if e := first.GetEnd(); e != "" {
		s.end("metal-bmc: " + e)
		close(s.joined)
		return nil
	}
	close(s.joined)
	ctx := stream.Context()
	go func() {
		for {
			f, err := stream.Recv()
			if err != nil {
				s.end("metal-bmc's console stream ended")
				return
			}
			if e := f.GetEnd(); e != "" {
				s.end("metal-bmc: " + e)
				return
			}
			if len(f.GetData()) == 0 {
				continue
			}
			s.bytesOut.Add(int64(len(f.GetData())))
			select {
			case s.toUser <- f.GetData():
			case <-s.done:
				return
			}
		}
	}()
	for {
		select {
		case f := <-s.toAgent:
			if err := stream.Send(f); err != nil {
				s.end("metal-bmc's console stream ended")
				return nil
			}
		case <-s.done:
			_ = stream.Send(&agentv1.ConsoleResponse{End: s.reason})
			return nil
		case <-ctx.Done():
			s.end("metal-bmc's console stream ended")
		}
	}
}

func invalid(path, desc string) error {
	return field.InvalidArgument("", []*errdetails.BadRequest_FieldViolation{{Field: path, Description: desc}})
}
