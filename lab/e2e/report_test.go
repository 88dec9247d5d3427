package e2e

import (
	"bufio"
	"context"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/metalfleet/metalfleet/agents/agent"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// TestReportStoredOnceAfterFailure runs the real metal-central on a
// PostgreSQL of the test's own and the real agent runtime, and breaks
// storing from outside central: first central's role loses INSERT on
// agent_events (central and its database up, storing refused), then the
// database goes away altogether. Each time the report that could not be
// stored stays in the agent's outbox, is sent again after a reconnect and
// is stored exactly once when storing works again, with the reports
// emitted behind it, in order. A report central can never store (a NUL
// byte) is rejected once and does not hold up the one behind it.
func TestReportStoredOnceAfterFailure(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	pg := startPG(t)
	// A role of its own, not a superuser: privileges bind it.
	pg.exec(t, "postgres", "CREATE ROLE central LOGIN", "CREATE DATABASE metalfleet OWNER central")
	metrics := freePort(t)
	f := startFleetCentral(t, "", "--db-url", pg.url("central", "metalfleet"), "--metrics-listen", metrics)
	ctx := t.Context()
	agents := apiv1.NewAgentServiceClient(f.cc)
	enr, err := agents.Enroll(ctx, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf01", PartitionId: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	a, err := agent.New(agent.Config{
		Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf01", Centrals: []string{f.listen}, TLS: f.tls,
		Token: enr.GetSecret(), StateDir: t.TempDir(), Reconciler: &recorder{}, Metrics: agent.NewMetrics(reg),
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	actx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- a.Run(actx) }()
	defer func() { stop(); <-done }()
	waitFor(t, "agent connects", a.Connected)
	flush(t, a, "the first document's report")

	emit := func(msg string) { a.Emit(nil, &agentv1.Event{Type: "Test", Message: msg}) }
	reconnects := func() float64 { return agentMetric(t, reg, "metalfleet_agent_reconnects_total") }
	// framed waits until a session began after the last Emit: a session
	// frames everything emitted into reports first, so the next Emit
	// becomes a report of its own, queued behind.
	framed := func() {
		t.Helper()
		r := reconnects()
		waitFor(t, "agent reconnects", func() bool { return reconnects() > r })
	}
	held := func(what string) {
		t.Helper()
		fctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		if err := a.Flush(fctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("%s: Flush = %v, want it to wait (the outbox holds the report)", what, err)
		}
	}

	// Storing refused while everything else works: the hello and the
	// observed state write other tables, only the event INSERT fails.
	pg.exec(t, "metalfleet", "REVOKE INSERT ON agent_events FROM central")
	failed := centralMetric(t, metrics, `metalfleet_fleet_reports_total{result="failed"}`)
	emit("one")
	// Failed twice: central did not store it, ended the stream, and the
	// agent sent it again on the next one.
	waitFor(t, "report sent again and failing again", func() bool {
		return centralMetric(t, metrics, `metalfleet_fleet_reports_total{result="failed"}`) >= failed+2
	})
	if got := events(t, agents); len(got) != 0 {
		t.Fatalf("stored although storing fails: %q", got)
	}
	held("storing refused")
	framed()
	emit("bad\x00byte") // valid UTF-8, but PostgreSQL stores no NUL
	framed()
	emit("two")
	framed()
	emit("three")
	held("storing refused")
	if got := events(t, agents); len(got) != 0 {
		t.Fatalf("stored although storing fails: %q", got)
	}
	pg.exec(t, "metalfleet", "GRANT INSERT ON agent_events TO central")
	flush(t, a, "storing works again")
	if got, want := events(t, agents), []string{"one", "two", "three"}; !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q: each once, in order, without the rejected one", got, want)
	}
	if got := centralMetric(t, metrics, `metalfleet_fleet_reports_total{result="rejected"}`); got != 1 {
		t.Errorf("central rejected %v reports, want 1", got)
	}
	if got := agentMetric(t, reg, "metalfleet_agent_reports_rejected_total"); got != 1 {
		t.Errorf("agent dropped %v rejected reports, want 1", got)
	}

	// The database goes away: central keeps running and serving, the
	// report waits in the agent until the database is back.
	pg.stop(t)
	emit("four")
	framed()
	held("database away")
	pg.start(t)
	flush(t, a, "database back")
	if got, want := events(t, agents), []string{"one", "two", "three", "four"}; !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	emit("five")
	flush(t, a, "after the outage")
	if got, want := events(t, agents), []string{"one", "two", "three", "four", "five"}; !slices.Equal(got, want) {
		t.Fatalf("events %q, want %q", got, want)
	}
	if err := f.cmd.Process.Signal(syscall.Signal(0)); err != nil {
		t.Fatalf("central did not survive its database going away: %v", err)
	}
}

// flush waits until central answered everything the agent emitted.
func flush(t *testing.T, a *agent.Agent, what string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := a.Flush(ctx); err != nil {
		t.Fatalf("%s: Flush: %v", what, err)
	}
}

// events returns the messages of the agent's stored events, oldest first,
// as the admin API shows them.
func events(t *testing.T, agents apiv1.AgentServiceClient) []string {
	t.Helper()
	got, err := agents.Get(t.Context(), &apiv1.AgentServiceGetRequest{Id: "switch/leaf01", Events: 1000})
	if err != nil {
		t.Fatal(err)
	}
	var msgs []string
	for _, e := range got.GetEvents() {
		if e.GetType() == "Test" {
			msgs = append(msgs, e.GetMessage())
		}
	}
	return msgs
}

// agentMetric reads a counter of the agent's registry.
func agentMetric(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// centralMetric reads one sample, given as it appears in the exposition
// format, from central's /metrics; absent counts as 0.
func centralMetric(t *testing.T, addr, sample string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), sample+" "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %v", sample, err)
			}
			return n
		}
	}
	return 0
}
