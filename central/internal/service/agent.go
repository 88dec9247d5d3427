package service

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Fleet is what the people API needs of central's agent hub.
type Fleet interface {
	Enroll(ctx context.Context, tx pgx.Tx, kind agentv1.Kind, identity, partition, enrolledBy string) (fleet.Enrolment, error)
	Change(ctx context.Context, tx pgx.Tx, id string, change func(*agentv1.Desired) (bool, error)) (*agentv1.Desired, error)
	ChangeMany(ctx context.Context, tx pgx.Tx, ids []string, change func(id string, d *agentv1.Desired) (bool, error)) error
	Delete(ctx context.Context, tx pgx.Tx, id string) error
	Liveliness(last *time.Time) apiv1.Liveliness
	MintBootToken(ctx context.Context, tx pgx.Tx, t fleet.BootToken) (fleet.MintedBootToken, error)
}

type agentService struct {
	*API
	apiv1.UnimplementedAgentServiceServer
}

type bootTokenService struct {
	*API
	apiv1.UnimplementedBootTokenServiceServer
}

const agentColumns = `id, kind, identity, partition_id, replica, desired_revision, applied_revision, last_contact,
	health, message, facts, desired, enrolled_by, created_at, updated_at`

func (a *API) scanAgent(row pgx.Row) (*apiv1.Agent, error) {
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
	ag.Kind, _ = fleet.ParseKind(kind)
	if partition != nil {
		ag.PartitionId = *partition
	}
	ag.DesiredRevision, ag.AppliedRevision = uint64(desiredR), uint64(appliedR)
	if last != nil {
		ag.LastContact = timestamppb.New(*last)
	}
	ag.Liveliness = a.fleet.Liveliness(last)
	ag.Health = agentv1.Health(agentv1.Health_value["HEALTH_"+health])
	dec := protojson.UnmarshalOptions{DiscardUnknown: true}
	if facts != nil {
		ag.Facts = &agentv1.Facts{}
		if err := dec.Unmarshal(facts, ag.Facts); err != nil {
			return nil, fmt.Errorf("decode facts: %w", err)
		}
	}
	ag.Desired = &agentv1.Desired{}
	if err := dec.Unmarshal(desired, ag.Desired); err != nil {
		return nil, fmt.Errorf("decode desired document: %w", err)
	}
	ag.Meta = &apiv1.Meta{CreatedAt: timestamppb.New(created), UpdatedAt: timestamppb.New(updated), Generation: uint64(desiredR)}
	return &ag, nil
}

func (a *API) needFleet() error {
	if a.fleet == nil {
		return status.Error(codes.Unavailable, "this server runs without the agent fleet")
	}
	return nil
}

// agentWhere turns "<uuid>" or "<kind>/<identity>" into a WHERE clause.
func agentWhere(field, ref string) (string, []any, error) {
	var v violations
	if kind, identity, ok := strings.Cut(ref, "/"); ok {
		k, known := fleet.ParseKind(kind)
		if !known || !fleet.ValidIdentity(identity) {
			v.add(field, "must be an agent id or <kind>/<identity>, e.g. switch/leaf01")
			return "", nil, v.err()
		}
		return `kind = $1 AND identity = $2`, []any{fleet.KindName(k), identity}, nil
	}
	if _, err := uuid.Parse(ref); err != nil {
		v.add(field, "must be an agent id or <kind>/<identity>, e.g. switch/leaf01")
		return "", nil, v.err()
	}
	return `id = $1`, []any{ref}, nil
}

func (a *API) getAgent(ctx context.Context, db store.Querier, field, ref string, lock bool) (*apiv1.Agent, error) {
	where, args, err := agentWhere(field, ref)
	if err != nil {
		return nil, err
	}
	q := `SELECT ` + agentColumns + ` FROM agents WHERE ` + where
	if lock {
		q += ` FOR UPDATE`
	}
	ag, err := a.scanAgent(db.QueryRow(ctx, q, args...))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "agent %s not found", quote(ref))
	}
	if err != nil {
		return nil, toStatus(err, "agent")
	}
	return ag, nil
}

func (s *agentService) List(ctx context.Context, req *apiv1.AgentServiceListRequest) (*apiv1.AgentServiceListResponse, error) {
	if err := s.needFleet(); err != nil {
		return nil, err
	}
	var v violations
	if req.GetKind() != agentv1.Kind_KIND_UNSPECIFIED && !fleet.KnownKind(req.GetKind()) {
		v.add("kind", "unknown agent kind %d", req.GetKind())
	}
	v.optionalID("partition_id", req.GetPartitionId())
	if err := v.err(); err != nil {
		return nil, err
	}
	kind := ""
	if req.GetKind() != agentv1.Kind_KIND_UNSPECIFIED {
		kind = fleet.KindName(req.GetKind())
	}
	rows, err := s.store.Pool().Query(ctx, `SELECT `+agentColumns+` FROM agents
		WHERE ($1 = '' OR kind = $1) AND ($2 = '' OR partition_id = $2) ORDER BY kind, identity`, kind, req.GetPartitionId())
	if err != nil {
		return nil, toStatus(err, "agents")
	}
	defer rows.Close()
	var out []*apiv1.Agent
	for rows.Next() {
		ag, err := s.scanAgent(rows)
		if err != nil {
			return nil, toStatus(err, "agents")
		}
		out = append(out, ag)
	}
	if err := rows.Err(); err != nil {
		return nil, toStatus(err, "agents")
	}
	return &apiv1.AgentServiceListResponse{Agents: out}, nil
}

func (s *agentService) Get(ctx context.Context, req *apiv1.AgentServiceGetRequest) (*apiv1.AgentServiceGetResponse, error) {
	if err := s.needFleet(); err != nil {
		return nil, err
	}
	n := req.GetEvents()
	switch {
	case n == 0:
		n = 20
	case n > 1000:
		var v violations
		v.add("events", "at most 1000")
		return nil, v.err()
	}
	ag, err := s.getAgent(ctx, s.store.Pool(), "id", req.GetId(), false)
	if err != nil {
		return nil, err
	}
	rows, err := s.store.Pool().Query(ctx, `SELECT at, type, message FROM
		(SELECT at, type, message, received_at FROM agent_events WHERE agent_id = $1 ORDER BY at DESC, received_at DESC LIMIT $2) e
		ORDER BY at, received_at`, ag.GetId(), int64(n))
	if err != nil {
		return nil, toStatus(err, "agent events")
	}
	defer rows.Close()
	var events []*apiv1.AgentEvent
	for rows.Next() {
		var at time.Time
		e := &apiv1.AgentEvent{}
		if err := rows.Scan(&at, &e.Type, &e.Message); err != nil {
			return nil, toStatus(err, "agent events")
		}
		e.Time = timestamppb.New(at)
		events = append(events, e)
	}
	if err := rows.Err(); err != nil {
		return nil, toStatus(err, "agent events")
	}
	return &apiv1.AgentServiceGetResponse{Agent: ag, Events: events}, nil
}

// enrollable kinds are long-lived agents an admin sets up by hand.
var enrollable = map[agentv1.Kind]bool{agentv1.Kind_KIND_SWITCH: true, agentv1.Kind_KIND_BMC: true, agentv1.Kind_KIND_PIXIE: true}

func (s *agentService) Enroll(ctx context.Context, req *apiv1.AgentServiceEnrollRequest) (*apiv1.AgentServiceEnrollResponse, error) {
	if err := s.needFleet(); err != nil {
		return nil, err
	}
	var v violations
	if !enrollable[req.GetKind()] {
		v.add("kind", "must be KIND_SWITCH, KIND_BMC or KIND_PIXIE (installers join with boot tokens)")
	}
	if !fleet.ValidIdentity(req.GetIdentity()) {
		v.add("identity", "must be 1-128 characters of [A-Za-z0-9._:-]")
	}
	v.id("partition_id", req.GetPartitionId())
	if err := v.err(); err != nil {
		return nil, err
	}
	var (
		out    *apiv1.Agent
		secret string
	)
	err := s.store.Tx(ctx, func(tx pgx.Tx) error {
		if err := catalog.PartitionExists(ctx, tx, "partition_id", req.GetPartitionId()); err != nil {
			return err
		}
		e, err := s.fleet.Enroll(ctx, tx, req.GetKind(), req.GetIdentity(), req.GetPartitionId(), auth.PrincipalFrom(ctx).TokenID)
		if err != nil {
			return err
		}
		secret = e.Secret
		if req.GetKind() == agentv1.Kind_KIND_PIXIE {
			if err := s.refreshPixies(ctx, tx, req.GetPartitionId()); err != nil {
				return err
			}
		}
		if out, err = s.getAgent(ctx, tx, "id", e.ID, false); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "agent/"+e.ID, "")
	})
	if err != nil {
		return nil, toStatus(err, "agent")
	}
	return &apiv1.AgentServiceEnrollResponse{Agent: out, Secret: secret}, nil
}

var logLevels = map[string]bool{"": true, "debug": true, "info": true, "warn": true, "error": true}

func (s *agentService) Configure(ctx context.Context, req *apiv1.AgentServiceConfigureRequest) (*apiv1.AgentServiceConfigureResponse, error) {
	if err := s.needFleet(); err != nil {
		return nil, err
	}
	var v violations
	if req.LogLevel != nil && !logLevels[req.GetLogLevel()] {
		v.add("log_level", "must be one of debug, info, warn, error or empty")
	}
	v.labels("labels", req.GetLabels())
	if err := v.err(); err != nil {
		return nil, err
	}
	var out *apiv1.Agent
	err := s.store.Tx(ctx, func(tx pgx.Tx) error {
		ag, err := s.getAgent(ctx, tx, "id", req.GetId(), true)
		if err != nil {
			return err
		}
		_, err = s.fleet.Change(ctx, tx, ag.GetId(), func(d *agentv1.Desired) (bool, error) {
			changed := false
			st := d.GetSettings()
			if req.LogLevel != nil && st.GetLogLevel() != req.GetLogLevel() {
				st.LogLevel, changed = req.GetLogLevel(), true
			}
			if req.GetReplaceLabels() && !equalLabels(st.GetLabels(), req.GetLabels()) {
				st.Labels, changed = req.GetLabels(), true
			}
			if req.GetReportFacts() {
				st.ReportFactsGeneration++
				changed = true
			}
			return changed, nil
		})
		if err != nil {
			return err
		}
		if out, err = s.getAgent(ctx, tx, "id", ag.GetId(), false); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "agent/"+ag.GetId(), "")
	})
	if err != nil {
		return nil, toStatus(err, "agent")
	}
	return &apiv1.AgentServiceConfigureResponse{Agent: out}, nil
}

func equalLabels(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func (s *agentService) Delete(ctx context.Context, req *apiv1.AgentServiceDeleteRequest) (*apiv1.AgentServiceDeleteResponse, error) {
	if err := s.needFleet(); err != nil {
		return nil, err
	}
	var out *apiv1.Agent
	err := s.store.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		if out, err = s.getAgent(ctx, tx, "id", req.GetId(), true); err != nil {
			return err
		}
		if err := s.fleet.Delete(ctx, tx, out.GetId()); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "agent/"+out.GetId(), "")
	})
	if err != nil {
		return nil, toStatus(err, "agent")
	}
	return &apiv1.AgentServiceDeleteResponse{Agent: out}, nil
}

const (
	defaultBootTokenLifetime = 30 * time.Minute
	maxBootTokenLifetime     = 24 * time.Hour
)

func (s *bootTokenService) Create(ctx context.Context, req *apiv1.BootTokenServiceCreateRequest) (*apiv1.BootTokenServiceCreateResponse, error) {
	var v violations
	v.id("partition_id", req.GetPartitionId())
	life := req.GetExpiresIn().AsDuration()
	switch {
	case req.GetExpiresIn() == nil || life == 0:
		life = defaultBootTokenLifetime
	case life < time.Minute || life > maxBootTokenLifetime:
		v.add("expires_in", "must be between 1m and %s", maxBootTokenLifetime)
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	if s.fleet == nil {
		return nil, status.Error(codes.Unimplemented, "this central serves no agent fleet")
	}
	var minted fleet.MintedBootToken
	err := s.store.Tx(ctx, func(tx pgx.Tx) error {
		if err := catalog.PartitionExists(ctx, tx, "partition_id", req.GetPartitionId()); err != nil {
			return err
		}
		// Not bound to a MAC: an admin's token may enrol any installer of
		// the partition, but never claim an installed machine.
		var err error
		if minted, err = s.fleet.MintBootToken(ctx, tx, fleet.BootToken{Partition: req.GetPartitionId(), TTL: life,
			CreatedBy: auth.PrincipalFrom(ctx).TokenID}); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "boot-token/"+minted.ID, "")
	})
	if err != nil {
		return nil, toStatus(err, "boot token")
	}
	now := timestamppb.New(minted.ExpiresAt.Add(-life))
	bt := &apiv1.BootToken{
		Id:          minted.ID,
		PartitionId: req.GetPartitionId(),
		ExpiresAt:   timestamppb.New(minted.ExpiresAt),
		Meta:        &apiv1.Meta{CreatedAt: now, UpdatedAt: now, Generation: 1},
	}
	return &apiv1.BootTokenServiceCreateResponse{BootToken: bt, Secret: minted.Secret}, nil
}
