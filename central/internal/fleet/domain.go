package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Agent is an agent as the domain sees it.
type Agent struct {
	ID        string
	Kind      agentv1.Kind
	Identity  string
	Partition string
}

// Domain turns what installers, installed systems and PXE services report
// into central's domain state (machines and their lifecycle). The hub
// stays free of it: it only carries the reports.
type Domain interface {
	// Report runs in the transaction that stores the report's events, so
	// a domain change and its event commit together or not at all. An
	// InvalidArgument or PermissionDenied status ends the agent's stream
	// with that error and nothing of the report is stored.
	Report(ctx context.Context, tx pgx.Tx, a Agent, r *agentv1.Report) error
	// Boot answers a partition's PXE service.
	Boot(ctx context.Context, a Agent, req *agentv1.BootRequest) (*agentv1.BootResponse, error)
}

// Attach gives the hub its domain. Call it before Start; without a domain
// reports are stored as agent events only and Boot is unavailable.
func (h *Hub) Attach(d Domain) { h.domain = d }

// domainKind reports whether the domain wants reports of kind k.
func domainKind(k agentv1.Kind) bool {
	return k == agentv1.Kind_KIND_INSTALLER || k == agentv1.Kind_KIND_PHONEHOME || k == agentv1.Kind_KIND_PIXIE
}

// storeReport writes the report's events and lets the domain act on it,
// in one transaction.
func (h *Hub) storeReport(ctx context.Context, c *conn, r *agentv1.Report) error {
	withDomain := h.domain != nil && domainKind(c.kind) && (len(r.GetEvents()) > 0 || r.GetFacts().GetMachine() != nil)
	if !withDomain {
		if len(r.GetEvents()) == 0 {
			return nil
		}
		return writeEvents(ctx, h.store.Pool(), c.id, r.GetEvents())
	}
	a := Agent{ID: c.id, Kind: c.kind, Identity: c.identity, Partition: c.partition}
	return h.store.Tx(ctx, func(tx pgx.Tx) error {
		if len(r.GetEvents()) > 0 {
			if err := writeEvents(ctx, tx, c.id, r.GetEvents()); err != nil {
				return err
			}
		}
		return h.domain.Report(ctx, tx, a, r)
	})
}

// eventWriter is a pool or a transaction.
type eventWriter interface {
	SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
}

func writeEvents(ctx context.Context, db eventWriter, agentID string, events []*agentv1.Event) error {
	now := time.Now()
	batch := &pgx.Batch{}
	for _, e := range events {
		at := now
		if e.GetTime() != nil {
			at = e.GetTime().AsTime()
		}
		msg := e.GetMessage()
		if e.GetSubject() != "" {
			msg = e.GetSubject() + ": " + msg
		}
		batch.Queue(`INSERT INTO agent_events (id, agent_id, at, type, message) VALUES ($1, $2, $3, $4, $5)`,
			uuid.NewString(), agentID, at, e.GetType(), msg)
	}
	if err := db.SendBatch(ctx, batch).Close(); err != nil {
		return fmt.Errorf("store events: %w", err)
	}
	return nil
}

// Boot implements agentv1.AgentServiceServer: a PXE service asks what a
// MAC should boot. It authenticates with its own agent credential as a
// bearer token, since a unary call has no hello.
func (h *Hub) Boot(ctx context.Context, req *agentv1.BootRequest) (*agentv1.BootResponse, error) {
	if h.domain == nil {
		return nil, status.Error(codes.Unimplemented, "this central serves no provisioning")
	}
	secret := ""
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for _, v := range md.Get("authorization") {
			if s, ok := strings.CutPrefix(v, "Bearer "); ok {
				secret = strings.TrimSpace(s)
			}
		}
	}
	if secret == "" {
		return nil, status.Error(codes.Unauthenticated, "boot: missing bearer credential of a PXE service")
	}
	var (
		a         Agent
		kind      string
		partition *string
	)
	err := h.store.Pool().QueryRow(ctx, `SELECT id, kind, identity, partition_id FROM agents WHERE token_hash = $1`, auth.Hash(secret)).
		Scan(&a.ID, &kind, &a.Identity, &partition)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errBadToken
	}
	if err != nil {
		h.log.Error("boot: authenticate", "err", err)
		return nil, status.Error(codes.Unavailable, "cannot check the credential now")
	}
	a.Kind, _ = ParseKind(kind)
	if a.Kind != agentv1.Kind_KIND_PIXIE {
		return nil, status.Errorf(codes.PermissionDenied, "boot: only a PXE service may ask, not a %s agent", kind)
	}
	if partition == nil || *partition == "" {
		return nil, status.Error(codes.FailedPrecondition, "boot: the PXE service is enrolled without a partition")
	}
	a.Partition = *partition
	resp, err := h.domain.Boot(ctx, a, req)
	if err != nil {
		return nil, asStatus(err)
	}
	return resp, nil
}
