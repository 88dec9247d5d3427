package server_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// TestAgentAPI covers the agent and boot token services' happy paths and
// errors; the protocol itself is tested in central/internal/fleet.
func TestAgentAPI(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	admin := e.as(t, e.admin)
	agents, boot := e.api.Agent, e.api.BootToken
	ok(e.api.Partition.Create(admin, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "fra1"}}))(t)

	enr := ok(agents.Enroll(admin, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf01", PartitionId: "fra1"}))(t)
	ag := enr.GetAgent()
	if !strings.HasPrefix(enr.GetSecret(), "mfa_") || ag.GetDesiredRevision() != 1 || ag.GetAppliedRevision() != 0 ||
		ag.GetLiveliness() != apiv1.Liveliness_LIVELINESS_UNKNOWN || ag.GetEnrolledBy() != e.admin.tokenID || ag.GetPartitionId() != "fra1" {
		t.Fatalf("enrolled %v with secret %q", ag, enr.GetSecret())
	}
	var hashes int
	if err := e.db.QueryRow(t.Context(), `SELECT count(*) FROM agents WHERE token_hash IS NOT NULL AND position($1::BYTEA IN token_hash) = 0`, []byte(enr.GetSecret())).Scan(&hashes); err != nil || hashes != 1 {
		t.Fatalf("stored credential: %d rows (%v), want the hash only", hashes, err)
	}

	// Enroll errors change nothing.
	for _, tc := range map[string]struct {
		req   *apiv1.AgentServiceEnrollRequest
		code  codes.Code
		field string
	}{
		"installer":         {&apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_INSTALLER, Identity: "m1", PartitionId: "fra1"}, codes.InvalidArgument, "kind"},
		"no kind":           {&apiv1.AgentServiceEnrollRequest{Identity: "x", PartitionId: "fra1"}, codes.InvalidArgument, "kind"},
		"bad identity":      {&apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_BMC, Identity: "a b", PartitionId: "fra1"}, codes.InvalidArgument, "identity"},
		"no partition":      {&apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc1"}, codes.InvalidArgument, "partition_id"},
		"unknown partition": {&apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc1", PartitionId: "nope"}, codes.NotFound, ""},
	} {
		_, err := agents.Enroll(admin, tc.req)
		if tc.field != "" {
			wantField(t, err, tc.field)
		} else {
			wantCode(t, err, tc.code)
		}
	}
	if n := len(ok(agents.List(admin, &apiv1.AgentServiceListRequest{}))(t).GetAgents()); n != 1 {
		t.Fatalf("%d agents after refused enrolments, want 1", n)
	}

	// Get by id and by kind/identity; errors.
	byID := ok(agents.Get(admin, &apiv1.AgentServiceGetRequest{Id: ag.GetId()}))(t).GetAgent()
	byName := ok(agents.Get(admin, &apiv1.AgentServiceGetRequest{Id: "switch/leaf01"}))(t).GetAgent()
	if byID.GetId() != ag.GetId() || byName.GetId() != ag.GetId() {
		t.Fatalf("get: %v / %v", byID, byName)
	}
	_, err := agents.Get(admin, &apiv1.AgentServiceGetRequest{Id: "switch/leaf99"})
	wantCode(t, err, codes.NotFound)
	_, err = agents.Get(admin, &apiv1.AgentServiceGetRequest{Id: "toaster/x"})
	wantField(t, err, "id")
	_, err = agents.Get(admin, &apiv1.AgentServiceGetRequest{Id: "not-a-uuid"})
	wantField(t, err, "id")
	_, err = agents.Get(admin, &apiv1.AgentServiceGetRequest{Id: ag.GetId(), Events: 5000})
	wantField(t, err, "events")

	// List filters.
	ok(agents.Enroll(admin, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_PIXIE, Identity: "pixie", PartitionId: "fra1"}))(t)
	if got := ok(agents.List(admin, &apiv1.AgentServiceListRequest{Kind: agentv1.Kind_KIND_PIXIE}))(t).GetAgents(); len(got) != 1 || got[0].GetIdentity() != "pixie" {
		t.Fatalf("list kind=pixie: %v", got)
	}
	if got := ok(agents.List(admin, &apiv1.AgentServiceListRequest{PartitionId: "other"}))(t).GetAgents(); len(got) != 0 {
		t.Fatalf("list partition=other: %v", got)
	}
	_, err = agents.List(admin, &apiv1.AgentServiceListRequest{Kind: 77})
	wantField(t, err, "kind")

	// Configure: a change is a new revision, no change is none.
	level := "debug"
	c1 := ok(agents.Configure(admin, &apiv1.AgentServiceConfigureRequest{Id: "switch/leaf01", LogLevel: &level, Labels: map[string]string{"rack": "r1"}, ReplaceLabels: true}))(t).GetAgent()
	if c1.GetDesiredRevision() != 2 || c1.GetDesired().GetSettings().GetLogLevel() != "debug" || c1.GetDesired().GetSettings().GetLabels()["rack"] != "r1" {
		t.Fatalf("configure: %v", c1)
	}
	c2 := ok(agents.Configure(admin, &apiv1.AgentServiceConfigureRequest{Id: "switch/leaf01", LogLevel: &level}))(t).GetAgent()
	if c2.GetDesiredRevision() != 2 {
		t.Fatalf("unchanged settings made revision %d, want 2", c2.GetDesiredRevision())
	}
	c3 := ok(agents.Configure(admin, &apiv1.AgentServiceConfigureRequest{Id: "switch/leaf01", ReportFacts: true}))(t).GetAgent()
	if c3.GetDesiredRevision() != 3 || c3.GetDesired().GetSettings().GetReportFactsGeneration() != 1 {
		t.Fatalf("report facts intent: %v", c3)
	}
	bad := "loud"
	_, err = agents.Configure(admin, &apiv1.AgentServiceConfigureRequest{Id: "switch/leaf01", LogLevel: &bad})
	wantField(t, err, "log_level")
	_, err = agents.Configure(admin, &apiv1.AgentServiceConfigureRequest{Id: "switch/nope", ReportFacts: true})
	wantCode(t, err, codes.NotFound)

	// Re-enrolment keeps the agent and its document, replaces the credential.
	again := ok(agents.Enroll(admin, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf01", PartitionId: "fra1"}))(t)
	if again.GetAgent().GetId() != ag.GetId() || again.GetSecret() == enr.GetSecret() || again.GetAgent().GetDesiredRevision() != 3 {
		t.Fatalf("re-enrolment: %v", again)
	}

	// Boot tokens.
	bt := ok(boot.Create(admin, &apiv1.BootTokenServiceCreateRequest{PartitionId: "fra1"}))(t)
	if !strings.HasPrefix(bt.GetSecret(), "mfb_") || bt.GetBootToken().GetPartitionId() != "fra1" {
		t.Fatalf("boot token: %v", bt)
	}
	if left := time.Until(bt.GetBootToken().GetExpiresAt().AsTime()); left < 29*time.Minute || left > 31*time.Minute {
		t.Fatalf("default boot token lifetime %v, want 30m", left)
	}
	_, err = boot.Create(admin, &apiv1.BootTokenServiceCreateRequest{PartitionId: "fra1", ExpiresIn: durationpb.New(48 * time.Hour)})
	wantField(t, err, "expires_in")
	_, err = boot.Create(admin, &apiv1.BootTokenServiceCreateRequest{PartitionId: "nope"})
	wantCode(t, err, codes.NotFound)
	_, err = boot.Create(admin, &apiv1.BootTokenServiceCreateRequest{})
	wantField(t, err, "partition_id")

	// A partition with agents cannot be deleted from under them.
	_, err = e.api.Partition.Delete(admin, &apiv1.PartitionServiceDeleteRequest{Id: "fra1"})
	wantCode(t, err, codes.FailedPrecondition)

	// Delete.
	ok(agents.Delete(admin, &apiv1.AgentServiceDeleteRequest{Id: "switch/leaf01"}))(t)
	_, err = agents.Delete(admin, &apiv1.AgentServiceDeleteRequest{Id: "switch/leaf01"})
	wantCode(t, err, codes.NotFound)
}
