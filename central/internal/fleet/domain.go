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

// Reporter turns one kind's reports into domain state, in the
// transaction that stores the report (see Domain.Report).
type Reporter interface {
	Report(ctx context.Context, tx pgx.Tx, a Agent, r *agentv1.Report) error
}

// ReporterFunc adapts a function to Reporter.
type ReporterFunc func(ctx context.Context, tx pgx.Tx, a Agent, r *agentv1.Report) error

// Report implements Reporter.
func (f ReporterFunc) Report(ctx context.Context, tx pgx.Tx, a Agent, r *agentv1.Report) error {
	return f(ctx, tx, a, r)
}

// AttachKind routes the reports of kind k to r (the switch fabric takes
// the switches'). Call it before Start.
func (h *Hub) AttachKind(k agentv1.Kind, r Reporter) {
	if h.reporters == nil {
		h.reporters = map[agentv1.Kind]Reporter{}
	}
	h.reporters[k] = r
}

// EnrolHook gives an agent an admin just enrolled (or re-enrolled) its
// document, in the enrolment's transaction: metal-bmc's document holds its
// partition's BMC settings from its first connection on.
type EnrolHook func(ctx context.Context, tx pgx.Tx, agentID, partition string) error

// AttachEnrol runs hook when an agent of kind k is enrolled. Call it
// before Start.
func (h *Hub) AttachEnrol(k agentv1.Kind, hook EnrolHook) {
	if h.enrolled == nil {
		h.enrolled = map[agentv1.Kind]EnrolHook{}
	}
	h.enrolled[k] = hook
}

// reporter is who acts on reports of kind k; nil: nobody, they are
// stored as agent events only.
func (h *Hub) reporter(k agentv1.Kind) Reporter {
	if r, ok := h.reporters[k]; ok {
		return r
	}
	if h.domain != nil && (k == agentv1.Kind_KIND_INSTALLER || k == agentv1.Kind_KIND_PHONEHOME || k == agentv1.Kind_KIND_PIXIE) {
		return h.domain
	}
	return nil
}

// storeReport writes the report's events and lets the domain act on it,
// in one transaction. dup says the report was stored before: an agent
// sends a report again when its stream ended before the ack came, and the
// report's events then already exist (their ids derive from the agent,
// outbox and seq), so nothing is written and the domain does not act twice.
// Reports without events write nothing synchronously but facts (which
// replace what is stored, so storing them twice is harmless).
func (h *Hub) storeReport(ctx context.Context, c *conn, r *agentv1.Report) (dup bool, err error) {
	// A switch's every report counts: it carries the sync status of the
	// switch's document (applied revision, the apply's error), and
	// switches report on change, not on a tick. metal-bmc's facts carry
	// its BMCs and intent results.
	rep := h.reporter(c.kind)
	withDomain := rep != nil &&
		(len(r.GetEvents()) > 0 || r.GetFacts().GetMachine() != nil || r.GetFacts().GetBmc() != nil || c.kind == agentv1.Kind_KIND_SWITCH)
	if !withDomain && len(r.GetEvents()) == 0 {
		return false, nil
	}
	a := Agent{ID: c.id, Kind: c.kind, Identity: c.identity, Partition: c.partition}
	err = h.store.Tx(ctx, func(tx pgx.Tx) error {
		dup = false // a retried transaction starts over
		if len(r.GetEvents()) > 0 {
			var err error
			if dup, err = writeEvents(ctx, tx, c.id, r); err != nil || dup {
				return err
			}
		}
		if !withDomain {
			return nil
		}
		return rep.Report(ctx, tx, a, r)
	})
	return dup, err
}

// eventIDs is the UUID namespace of the ids of acknowledged reports' events.
const eventIDs = "5b0f6a57-93a4-4c5e-8f43-3d8f6a0c2e11"

// eventID names the i-th event of a report: random for a report without
// a seq, otherwise the same every time the report is sent, so that its
// second arrival finds the first.
func eventID(agentID string, r *agentv1.Report, i int) string {
	if r.GetSeq() == 0 {
		return uuid.NewString()
	}
	return uuid.NewSHA1(uuid.MustParse(eventIDs), fmt.Appendf(nil, "%s/%s/%d/%d", agentID, r.GetOutbox(), r.GetSeq(), i)).String()
}

// writeEvents inserts the report's events; dup says the first of them
// existed, so the report was stored before (a concurrent second arrival
// waits on the primary key for the first to commit, then sees it).
func writeEvents(ctx context.Context, tx pgx.Tx, agentID string, r *agentv1.Report) (dup bool, err error) {
	now := time.Now()
	batch := &pgx.Batch{}
	for i, e := range r.GetEvents() {
		at := now
		if e.GetTime() != nil {
			at = e.GetTime().AsTime()
		}
		msg := e.GetMessage()
		if e.GetSubject() != "" {
			msg = e.GetSubject() + ": " + msg
		}
		batch.Queue(`INSERT INTO agent_events (id, agent_id, at, type, message) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING`,
			eventID(agentID, r, i), agentID, at, e.GetType(), msg)
	}
	// A stored report is contact, written with it: the batched observer
	// writes contact up to a flush interval later, and a machine that just
	// reported Waiting must be alive to an allocation that reads it next.
	// (The observer never moves last_contact backwards.)
	batch.Queue(`UPDATE agents SET last_contact = $2 WHERE id = $1 AND (last_contact IS NULL OR last_contact < $2)`, agentID, now)
	br := tx.SendBatch(ctx, batch)
	for i := range r.GetEvents() {
		tag, err := br.Exec()
		if err != nil {
			_ = br.Close()
			return false, fmt.Errorf("store events: %w", err)
		}
		if i == 0 && tag.RowsAffected() == 0 {
			dup = true
		}
	}
	if _, err := br.Exec(); err != nil {
		_ = br.Close()
		return false, fmt.Errorf("store contact: %w", err)
	}
	if err := br.Close(); err != nil {
		return false, fmt.Errorf("store events: %w", err)
	}
	return dup, nil
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
