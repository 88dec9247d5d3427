package fleet

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// ConsoleHandler serves metal-bmc's console streams (central's console
// broker); the hub only authenticates them.
type ConsoleHandler interface {
	Attach(stream ConsoleStream, agentID, partition string) error
}

// ConsoleStream is metal-bmc's side of a console session.
type ConsoleStream interface {
	Context() context.Context
	Send(*agentv1.ConsoleResponse) error
	Recv() (*agentv1.ConsoleRequest, error)
}

// AttachConsole makes h serve AgentService.Console.
func (h *Hub) AttachConsole(c ConsoleHandler) { h.console = c }

// ErrNotConnected: the agent holds no stream on this replica.
var ErrNotConnected = errors.New("agent not connected to this replica")

// OpenConsole sends open to agent agentID on its stream, if that stream is
// on this replica: a console session is joined in this replica's memory,
// and metal-bmc dials back on the connection of that stream.
func (h *Hub) OpenConsole(ctx context.Context, agentID string, open *agentv1.ConsoleOpen) error {
	c := h.conns.get(agentID)
	if c == nil || c.kind != agentv1.Kind_KIND_BMC {
		return status.Errorf(codes.Unavailable, "the machine's metal-bmc (%s) is not connected to this central replica", auth.Quote(agentID))
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.ready || c.done {
		return status.Errorf(codes.Unavailable, "the machine's metal-bmc (%s) is not connected to this central replica", auth.Quote(agentID))
	}
	// As a document's send: a peer that does not read loses its stream.
	watchdog := time.AfterFunc(h.cfg.SendTimeout, func() { c.close(errSlowAgent) })
	err := c.stream.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_ConsoleOpen{ConsoleOpen: open}})
	watchdog.Stop()
	if err != nil {
		c.close(err)
		return status.Errorf(codes.Unavailable, "ask metal-bmc to open the console: %v", err)
	}
	return nil
}

// Console authenticates a metal-bmc's console stream by its bearer
// credential and hands it to the console handler.
func (h *Hub) Console(stream agentv1.AgentService_ConsoleServer) error {
	if h.console == nil {
		return status.Error(codes.Unimplemented, "this central serves no console")
	}
	ctx := stream.Context()
	secret := ""
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for _, v := range md.Get("authorization") {
			if s, ok := strings.CutPrefix(v, "Bearer "); ok {
				secret = strings.TrimSpace(s)
			}
		}
	}
	if secret == "" {
		return status.Error(codes.Unauthenticated, "console: missing bearer credential of a metal-bmc")
	}
	var id, kind string
	var partition *string
	err := h.store.Pool().QueryRow(ctx, `SELECT id, kind, partition_id FROM agents WHERE token_hash = $1`, auth.Hash(secret)).Scan(&id, &kind, &partition)
	if errors.Is(err, pgx.ErrNoRows) {
		return errBadToken
	}
	if err != nil {
		h.log.Error("console: authenticate", "err", err)
		return status.Error(codes.Unavailable, "cannot check the credential now")
	}
	if k, _ := ParseKind(kind); k != agentv1.Kind_KIND_BMC {
		return status.Errorf(codes.PermissionDenied, "console: only a metal-bmc may serve a console, not a %s agent", kind)
	}
	if partition == nil || *partition == "" {
		return status.Error(codes.FailedPrecondition, "console: the metal-bmc is enrolled without a partition")
	}
	return h.console.Attach(stream, id, *partition)
}
