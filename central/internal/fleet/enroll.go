package fleet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// ErrNoAgent is returned for an agent id that does not exist.
var ErrNoAgent = errors.New("agent not found")

// Enrolment is a new or re-enrolled agent and its credential.
type Enrolment struct {
	ID string
	// Secret is the agent's credential, shown once.
	Secret string
	// Partition the agent belongs to ("" for none).
	Partition string
}

// PartitionCheck answers an error unless partition exists, reading in q,
// the fleet's transaction. Partitions are the catalogue's: the caller
// brings the check and, with it, the error a missing one is (the
// catalogue's names the request's field).
type PartitionCheck func(ctx context.Context, q store.Querier, partition string) error

// EnrollAgent enrols the agent kind/identity of partition as an admin
// asks, or gives an existing one a new credential, with its audit row, in
// one transaction, once exists has found the partition. A PXE service
// gets its partition's document (doc) at once. It returns the agent as
// stored and its secret, shown once.
func (h *Hub) EnrollAgent(ctx context.Context, kind agentv1.Kind, identity, partition, enrolledBy string,
	exists PartitionCheck, doc PixieDocument) (*apiv1.Agent, string, error) {
	var (
		out    *apiv1.Agent
		secret string
	)
	err := h.store.Tx(ctx, func(tx pgx.Tx) error {
		if err := exists(ctx, tx, partition); err != nil {
			return err
		}
		e, err := h.Enroll(ctx, tx, kind, identity, partition, enrolledBy)
		if err != nil {
			return err
		}
		secret = e.Secret
		if kind == agentv1.Kind_KIND_PIXIE {
			if err := h.refreshPixies(ctx, tx, partition, doc); err != nil {
				return err
			}
		}
		if hook := h.enrolled[kind]; hook != nil {
			if err := hook(ctx, tx, e.ID, partition); err != nil {
				return err
			}
		}
		if out, err = h.GetAgent(ctx, tx, Ref{ID: e.ID}, false); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "agent/"+e.ID, "")
	})
	if err != nil {
		return nil, "", err
	}
	return out, secret, nil
}

// Enroll creates the agent kind/identity with a new credential inside tx,
// or gives an existing one a new credential (closing its stream).
func (h *Hub) Enroll(ctx context.Context, tx pgx.Tx, kind agentv1.Kind, identity, partition, enrolledBy string) (Enrolment, error) {
	secret, hash := auth.NewPrefixedSecret(auth.AgentTokenPrefix)
	now := time.Now()
	doc, err := protojson.Marshal(&agentv1.Desired{Revision: 1, ChangedAt: timestamppb.New(now), Settings: &agentv1.Settings{}})
	if err != nil {
		return Enrolment{}, fmt.Errorf("encode desired document: %w", err)
	}
	var p *string
	if partition != "" {
		p = &partition
	}
	var id string
	err = tx.QueryRow(ctx, `INSERT INTO agents (id, kind, identity, partition_id, token_hash, enrolled_by, desired_revision, desired, desired_at)
		VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8)
		ON CONFLICT (kind, identity) DO UPDATE SET token_hash = excluded.token_hash, partition_id = excluded.partition_id,
			enrolled_by = excluded.enrolled_by, updated_at = excluded.desired_at
		RETURNING id`, uuid.NewString(), KindName(kind), identity, p, hash, enrolledBy, doc, now).Scan(&id)
	if err != nil {
		return Enrolment{}, fmt.Errorf("enroll agent: %w", err)
	}
	if err := h.hints.Notify(ctx, tx, id); err != nil {
		return Enrolment{}, err
	}
	return Enrolment{ID: id, Secret: secret, Partition: partition}, nil
}

// Delete removes agent id inside tx; its stream is closed on commit.
func (h *Hub) Delete(ctx context.Context, tx pgx.Tx, id string) error {
	tag, err := tx.Exec(ctx, `DELETE FROM agents WHERE id = $1`, id)
	if err != nil {
		return fmt.Errorf("delete agent: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return ErrNoAgent
	}
	return h.hints.Notify(ctx, tx, id)
}

// DeleteAgent removes the agent r names, with its audit row, in one
// transaction, and returns it as it was; its stream is closed on commit.
// An agent that does not exist is ErrNoAgent.
func (h *Hub) DeleteAgent(ctx context.Context, r Ref) (*apiv1.Agent, error) {
	var out *apiv1.Agent
	err := h.store.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		if out, err = h.GetAgent(ctx, tx, r, true); err != nil {
			return err
		}
		if err := h.Delete(ctx, tx, out.GetId()); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "agent/"+out.GetId(), "")
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
