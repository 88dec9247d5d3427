package service

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
	GetAgent(ctx context.Context, db store.Querier, r fleet.Ref, lock bool) (*apiv1.Agent, error)
	ListAgents(ctx context.Context, db store.Querier, kind agentv1.Kind, partition string) ([]*apiv1.Agent, error)
	RefreshPixies(ctx context.Context, tx pgx.Tx, partition string, doc fleet.PixieDocument) error
}

type agentService struct {
	*API
	apiv1.UnimplementedAgentServiceServer
}

type bootTokenService struct {
	*API
	apiv1.UnimplementedBootTokenServiceServer
}

func (a *API) needFleet() error {
	if a.fleet == nil {
		return status.Error(codes.Unavailable, "this server runs without the agent fleet")
	}
	return nil
}

// getAgent reads the agent ref names: "<uuid>" or "<kind>/<identity>".
func (a *API) getAgent(ctx context.Context, db store.Querier, field, ref string, lock bool) (*apiv1.Agent, error) {
	r, ok := fleet.ParseRef(ref)
	if !ok {
		var v violations
		v.add(field, "must be an agent id or <kind>/<identity>, e.g. switch/leaf01")
		return nil, v.err()
	}
	ag, err := a.fleet.GetAgent(ctx, db, r, lock)
	if errors.Is(err, fleet.ErrNoAgent) {
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
	out, err := s.fleet.ListAgents(ctx, s.store.Pool(), req.GetKind(), req.GetPartitionId())
	if err != nil {
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
	events, err := fleet.AgentEvents(ctx, s.store.Pool(), ag.GetId(), n)
	if err != nil {
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
