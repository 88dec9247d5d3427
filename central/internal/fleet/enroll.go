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
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
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
