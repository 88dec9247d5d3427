package service

import (
	"context"
	"errors"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/machine"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Fleet is what the people API needs of central's agent hub. The hub is
// also what the machine aggregate reaches agents' documents through
// (machine.Docs); the PXE boot decision mints its boot tokens in its own
// transaction (MintBootToken).
type Fleet interface {
	machine.Docs
	EnrollAgent(ctx context.Context, kind agentv1.Kind, identity, partition, enrolledBy string,
		exists fleet.PartitionCheck, doc fleet.PixieDocument) (*apiv1.Agent, string, error)
	ConfigureAgent(ctx context.Context, r fleet.Ref, c fleet.SettingsChange) (*apiv1.Agent, error)
	DeleteAgent(ctx context.Context, r fleet.Ref) (*apiv1.Agent, error)
	CreateBootToken(ctx context.Context, t fleet.BootToken, exists fleet.PartitionCheck) (fleet.MintedBootToken, error)
	machine.BootTokens
	GetAgent(ctx context.Context, db store.Querier, r fleet.Ref, lock bool) (*apiv1.Agent, error)
	ListAgents(ctx context.Context, db store.Querier, kind agentv1.Kind, partition string) ([]*apiv1.Agent, error)
	RefreshPixies(ctx context.Context, partition string, doc fleet.PixieDocument) error
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

// agentRef reads the agent ref names: "<uuid>" or "<kind>/<identity>".
func agentRef(field, ref string) (fleet.Ref, error) {
	r, ok := fleet.ParseRef(ref)
	if !ok {
		var v violations
		v.add(field, "must be an agent id or <kind>/<identity>, e.g. switch/leaf01")
		return fleet.Ref{}, v.err()
	}
	return r, nil
}

// agentError maps the fleet's errors of a call on the agent ref names.
func agentError(err error, ref string) error {
	if errors.Is(err, fleet.ErrNoAgent) {
		return status.Errorf(codes.NotFound, "agent %s not found", quote(ref))
	}
	return toStatus(err, "agent")
}

// partitionExists is the fleet's check of a request's partition_id.
func partitionExists(ctx context.Context, q store.Querier, id string) error {
	return catalog.PartitionExists(ctx, q, "partition_id", id)
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
	r, err := agentRef("id", req.GetId())
	if err != nil {
		return nil, err
	}
	ag, err := s.fleet.GetAgent(ctx, s.store.Pool(), r, false)
	if err != nil {
		return nil, agentError(err, req.GetId())
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
	out, secret, err := s.fleet.EnrollAgent(ctx, req.GetKind(), req.GetIdentity(), req.GetPartitionId(), auth.PrincipalFrom(ctx).TokenID,
		partitionExists, s.pixieDocument)
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
	r, err := agentRef("id", req.GetId())
	if err != nil {
		return nil, err
	}
	out, err := s.fleet.ConfigureAgent(ctx, r, fleet.SettingsChange{LogLevel: req.LogLevel,
		Labels: req.GetLabels(), ReplaceLabels: req.GetReplaceLabels(), ReportFacts: req.GetReportFacts()})
	if err != nil {
		return nil, agentError(err, req.GetId())
	}
	return &apiv1.AgentServiceConfigureResponse{Agent: out}, nil
}

func (s *agentService) Delete(ctx context.Context, req *apiv1.AgentServiceDeleteRequest) (*apiv1.AgentServiceDeleteResponse, error) {
	if err := s.needFleet(); err != nil {
		return nil, err
	}
	r, err := agentRef("id", req.GetId())
	if err != nil {
		return nil, err
	}
	out, err := s.fleet.DeleteAgent(ctx, r)
	if err != nil {
		return nil, agentError(err, req.GetId())
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
	// Not bound to a MAC: an admin's token may enrol any installer of the
	// partition, but never claim an installed machine.
	minted, err := s.fleet.CreateBootToken(ctx, fleet.BootToken{Partition: req.GetPartitionId(), TTL: life,
		CreatedBy: auth.PrincipalFrom(ctx).TokenID}, partitionExists)
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
