package fleet_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// TestPeopleAPIWrites: what admins change of agents and boot tokens runs
// in one transaction of the fleet's with its audit row; a partition the
// caller's check refuses changes nothing; a PXE service gets its
// partition's document at enrolment and again on a refresh that changes
// it; settings that change nothing keep the revision.
func TestPeopleAPIWrites(t *testing.T) {
	t.Parallel()
	ctx := auth.WithCall(t.Context(), &auth.Call{
		Principal: &auth.Principal{TokenID: "admin", Admin: apiv1.Level_LEVEL_EDITOR},
		Method:    "/test", RequestID: "test",
	})
	r := startReplica(t, newDB(t), testConfig("r1"), nil)
	errNoPartition := errors.New("no such partition")
	exists := func(_ context.Context, _ store.Querier, partition string) error {
		if partition != "p1" && partition != "p2" {
			return errNoPartition
		}
		return nil
	}
	cmdline := "console=ttyS0"
	doc := func(_ context.Context, _ store.Querier, partition string) (*agentv1.PixieDocument, error) {
		return &agentv1.PixieDocument{Cmdline: partition + " " + cmdline}, nil
	}
	audits := func(target string) int {
		t.Helper()
		var n int
		if err := r.st.Pool().QueryRow(ctx, `SELECT count(*) FROM audit WHERE target = $1 AND subject = 'admin'`, target).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	agents := func() int {
		t.Helper()
		all, err := r.hub.ListAgents(ctx, r.st.Pool(), agentv1.Kind_KIND_UNSPECIFIED, "")
		if err != nil {
			t.Fatal(err)
		}
		return len(all)
	}

	if _, _, err := r.hub.EnrollAgent(ctx, agentv1.Kind_KIND_PIXIE, "px", "nope", "admin", exists, doc); !errors.Is(err, errNoPartition) {
		t.Fatalf("enrol in a missing partition: %v", err)
	}
	if n := agents(); n != 0 {
		t.Fatalf("%d agents after a refused enrolment", n)
	}
	px, secret, err := r.hub.EnrollAgent(ctx, agentv1.Kind_KIND_PIXIE, "px", "p1", "admin", exists, doc)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(secret, auth.AgentTokenPrefix) || px.GetEnrolledBy() != "admin" || px.GetPartitionId() != "p1" ||
		px.GetDesired().GetPixie().GetCmdline() != "p1 console=ttyS0" || px.GetDesiredRevision() != 2 {
		t.Fatalf("enrolled %v with secret %q", px, secret)
	}
	if n := audits("agent/" + px.GetId()); n != 1 {
		t.Fatalf("%d audit rows of the enrolment", n)
	}

	// A refresh changes only documents that differ.
	if err := r.hub.RefreshPixies(ctx, "", doc); err != nil {
		t.Fatal(err)
	}
	cmdline = "console=ttyS1"
	if err := r.hub.RefreshPixies(ctx, "p2", doc); err != nil {
		t.Fatal(err)
	}
	got, err := r.hub.GetAgent(ctx, r.st.Pool(), fleet.Ref{ID: px.GetId()}, false)
	if err != nil || got.GetDesiredRevision() != 2 {
		t.Fatalf("after refreshes of nothing new: %v, %v", got, err)
	}
	if err := r.hub.RefreshPixies(ctx, "p1", doc); err != nil {
		t.Fatal(err)
	}
	got, err = r.hub.GetAgent(ctx, r.st.Pool(), fleet.Ref{ID: px.GetId()}, false)
	if err != nil || got.GetDesiredRevision() != 3 || got.GetDesired().GetPixie().GetCmdline() != "p1 console=ttyS1" {
		t.Fatalf("after a refresh of p1: %v, %v", got, err)
	}

	// Settings.
	level := "debug"
	byName := fleet.Ref{Kind: agentv1.Kind_KIND_PIXIE, Identity: "px"}
	for i, want := range []uint64{4, 4} {
		ag, err := r.hub.ConfigureAgent(ctx, byName, fleet.SettingsChange{LogLevel: &level})
		if err != nil || ag.GetDesiredRevision() != want || ag.GetDesired().GetSettings().GetLogLevel() != "debug" {
			t.Fatalf("configure #%d: %v, %v; want revision %d", i+1, ag, err, want)
		}
	}
	ag, err := r.hub.ConfigureAgent(ctx, byName, fleet.SettingsChange{ReplaceLabels: true, ReportFacts: true})
	if err != nil || ag.GetDesiredRevision() != 5 || ag.GetDesired().GetSettings().GetReportFactsGeneration() != 1 {
		t.Fatalf("report facts: %v, %v", ag, err)
	}
	if _, err := r.hub.ConfigureAgent(ctx, fleet.Ref{Kind: agentv1.Kind_KIND_SWITCH, Identity: "px"}, fleet.SettingsChange{ReportFacts: true}); !errors.Is(err, fleet.ErrNoAgent) {
		t.Fatalf("configure an unknown agent: %v", err)
	}
	if n := audits("agent/" + px.GetId()); n != 4 {
		t.Fatalf("%d audit rows after three changes of settings, want 4", n)
	}

	// Boot tokens.
	if _, err := r.hub.CreateBootToken(ctx, fleet.BootToken{Partition: "nope", TTL: time.Hour, CreatedBy: "admin"}, exists); !errors.Is(err, errNoPartition) {
		t.Fatalf("boot token of a missing partition: %v", err)
	}
	bt, err := r.hub.CreateBootToken(ctx, fleet.BootToken{Partition: "p1", TTL: time.Hour, CreatedBy: "admin"}, exists)
	if err != nil || !strings.HasPrefix(bt.Secret, auth.BootTokenPrefix) {
		t.Fatalf("boot token: %v, %v", bt, err)
	}
	if n := audits("boot-token/" + bt.ID); n != 1 {
		t.Fatalf("%d audit rows of the boot token", n)
	}

	// Delete.
	gone, err := r.hub.DeleteAgent(ctx, byName)
	if err != nil || gone.GetId() != px.GetId() {
		t.Fatalf("delete: %v, %v", gone, err)
	}
	if _, err := r.hub.DeleteAgent(ctx, byName); !errors.Is(err, fleet.ErrNoAgent) {
		t.Fatalf("delete again: %v", err)
	}
	if n := agents(); n != 0 {
		t.Fatalf("%d agents after the delete", n)
	}
	if n := audits("agent/" + px.GetId()); n != 5 {
		t.Fatalf("%d audit rows after the delete, want 5", n)
	}
}
