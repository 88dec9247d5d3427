package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// The people API's reads of agents and their events. They take a
// store.Querier, so that a caller inside a transaction reads what it
// wrote and the others read from the pool.

const agentColumns = `id, kind, identity, partition_id, replica, desired_revision, applied_revision, last_contact,
	health, message, facts, desired, enrolled_by, created_at, updated_at`

// Ref names an agent: by its id, or by kind and identity.
type Ref struct {
	ID       string
	Kind     agentv1.Kind
	Identity string
}

// ParseRef reads "<uuid>" or "<kind>/<identity>" ("switch/leaf01");
// false when s is neither.
func ParseRef(s string) (Ref, bool) {
	if kind, identity, ok := strings.Cut(s, "/"); ok {
		k, known := ParseKind(kind)
		if !known || !ValidIdentity(identity) {
			return Ref{}, false
		}
		return Ref{Kind: k, Identity: identity}, true
	}
	if _, err := uuid.Parse(s); err != nil {
		return Ref{}, false
	}
	return Ref{ID: s}, true
}

// where is the WHERE clause that selects the agent r names.
func (r Ref) where() (string, []any) {
	if r.ID == "" {
		return `kind = $1 AND identity = $2`, []any{KindName(r.Kind), r.Identity}
	}
	return `id = $1`, []any{r.ID}
}

// scanAgent reads a row of agentColumns; liveliness is derived from the
// last contact by the hub's thresholds.
func (h *Hub) scanAgent(row pgx.Row) (*apiv1.Agent, error) {
	var (
		ag                 apiv1.Agent
		kind, health       string
		partition          *string
		last               *time.Time
		facts, desired     []byte
		created, updated   time.Time
		desiredR, appliedR int64
	)
	if err := row.Scan(&ag.Id, &kind, &ag.Identity, &partition, &ag.Replica, &desiredR, &appliedR, &last,
		&health, &ag.Message, &facts, &desired, &ag.EnrolledBy, &created, &updated); err != nil {
		return nil, err
	}
	ag.Kind, _ = ParseKind(kind)
	if partition != nil {
		ag.PartitionId = *partition
	}
	ag.DesiredRevision, ag.AppliedRevision = uint64(desiredR), uint64(appliedR)
	if last != nil {
		ag.LastContact = timestamppb.New(*last)
	}
	ag.Liveliness = h.Liveliness(last)
	ag.Health = agentv1.Health(agentv1.Health_value["HEALTH_"+health])
	if facts != nil {
		ag.Facts = &agentv1.Facts{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(facts, ag.Facts); err != nil {
			return nil, fmt.Errorf("decode facts: %w", err)
		}
	}
	var err error
	if ag.Desired, err = decode(desired); err != nil {
		return nil, err
	}
	// metal-bmc's document carries its partition's BMC password: it goes
	// to the agent only, never to a person reading the agent.
	if c := ag.GetDesired().GetBmc().GetCredentials(); c.GetPassword() != "" {
		c.Password = Redacted
	}
	ag.Meta = &apiv1.Meta{CreatedAt: timestamppb.New(created), UpdatedAt: timestamppb.New(updated), Generation: uint64(desiredR)}
	return &ag, nil
}

// Redacted stands for a secret a read does not return.
const Redacted = "<redacted>"

// GetAgent reads the agent r names; lock holds its row for the rest of
// the transaction db is. An agent that does not exist is ErrNoAgent.
func (h *Hub) GetAgent(ctx context.Context, db store.Querier, r Ref, lock bool) (*apiv1.Agent, error) {
	where, args := r.where()
	q := `SELECT ` + agentColumns + ` FROM agents WHERE ` + where
	if lock {
		q += ` FOR UPDATE`
	}
	ag, err := h.scanAgent(db.QueryRow(ctx, q, args...))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNoAgent
	}
	if err != nil {
		return nil, fmt.Errorf("read agent: %w", err)
	}
	return ag, nil
}

// ListAgents reads the agents of kind (all kinds when unspecified) in
// partition (all when ""), ordered by kind and identity.
func (h *Hub) ListAgents(ctx context.Context, db store.Querier, kind agentv1.Kind, partition string) ([]*apiv1.Agent, error) {
	k := ""
	if kind != agentv1.Kind_KIND_UNSPECIFIED {
		k = KindName(kind)
	}
	rows, err := db.Query(ctx, `SELECT `+agentColumns+` FROM agents
		WHERE ($1 = '' OR kind = $1) AND ($2 = '' OR partition_id = $2) ORDER BY kind, identity`, k, partition)
	if err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	defer rows.Close()
	var out []*apiv1.Agent
	for rows.Next() {
		ag, err := h.scanAgent(rows)
		if err != nil {
			return nil, fmt.Errorf("list agents: %w", err)
		}
		out = append(out, ag)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list agents: %w", err)
	}
	return out, nil
}

// AgentEvents reads the newest n events of agent id, oldest first.
func AgentEvents(ctx context.Context, db store.Querier, id string, n uint32) ([]*apiv1.AgentEvent, error) {
	rows, err := db.Query(ctx, `SELECT at, type, message FROM
		(SELECT at, type, message, received_at FROM agent_events WHERE agent_id = $1 ORDER BY at DESC, received_at DESC LIMIT $2) e
		ORDER BY at, received_at`, id, int64(n))
	if err != nil {
		return nil, fmt.Errorf("read agent events: %w", err)
	}
	defer rows.Close()
	var out []*apiv1.AgentEvent
	for rows.Next() {
		var at time.Time
		e := &apiv1.AgentEvent{}
		if err := rows.Scan(&at, &e.Type, &e.Message); err != nil {
			return nil, fmt.Errorf("read agent events: %w", err)
		}
		e.Time = timestamppb.New(at)
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read agent events: %w", err)
	}
	return out, nil
}
