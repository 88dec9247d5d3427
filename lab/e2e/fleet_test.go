package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/metalfleet/metalfleet/agents/agent"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// bearer sends the admin token with every call.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (bearer) RequireTransportSecurity() bool { return true }

func adminConn(t testing.TB, dir, addr string) *grpc.ClientConn {
	t.Helper()
	tlsCfg, err := agent.PinnedTLS(filepath.Join(dir, "ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithPerRPCCredentials(bearer(strings.TrimSpace(string(tok)))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}

// fleetCentral is a running metal-central with partition p1 and what an
// agent and an admin need to talk to it.
type fleetCentral struct {
	bin, dir, listen string
	cmd              *exec.Cmd
	cc               *grpc.ClientConn
	tls              *tls.Config
}

// startFleetCentral builds and starts central on listen ("" picks a free
// IPv4 loopback port) with the extra flags and creates partition p1.
func startFleetCentral(t testing.TB, listen string, extra ...string) *fleetCentral {
	t.Helper()
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	bin, _ := build(t, t.TempDir())
	if listen == "" {
		listen = freePort(t)
	}
	f := &fleetCentral{bin: bin, dir: dataDir(t), listen: listen}
	f.cmd = startCentral(t, bin, f.dir, listen, extra...)
	t.Cleanup(func() {
		if f.cmd != nil {
			stopCentral(t, f.cmd)
		}
	})
	f.cc = adminConn(t, f.dir, listen)
	if _, err := apiv1.NewPartitionServiceClient(f.cc).Create(t.Context(), &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "p1", AllowSingleAttach: true}}); err != nil {
		t.Fatal(err)
	}
	var err error
	if f.tls, err = agent.PinnedTLS(filepath.Join(f.dir, "ca.crt")); err != nil {
		t.Fatal(err)
	}
	return f
}

// recorder is a reconciler that remembers what it applied.
type recorder struct {
	mu   sync.Mutex
	docs []*agentv1.Desired
}

func (r *recorder) Apply(_ context.Context, d *agentv1.Desired) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.docs = append(r.docs, d)
	return nil
}

func (r *recorder) label() (uint64, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.docs) == 0 {
		return 0, ""
	}
	d := r.docs[len(r.docs)-1]
	return d.GetRevision(), d.GetSettings().GetLabels()["v"]
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAgentRuntimeAgainstCentral runs the shared agent runtime against the
// real metal-central binary: enrolment, changes through the public API,
// central restarts, agent restarts, offline start and boot tokens.
func TestAgentRuntimeAgainstCentral(t *testing.T) {
	f := startFleetCentral(t, "")
	central, dir, listen, tlsCfg := f.bin, f.dir, f.listen, f.tls
	ctx := t.Context()
	agents := apiv1.NewAgentServiceClient(f.cc)
	enr, err := agents.Enroll(ctx, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf01", PartitionId: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	rec := &recorder{}
	// The first address is dead: the agent must move on to the next.
	start := func(token, boot, stateDir string, r agent.Reconciler) (context.CancelFunc, chan error, *agent.Agent) {
		t.Helper()
		a, err := agent.New(agent.Config{
			Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf01", Centrals: []string{freePort(t), listen}, TLS: tlsCfg,
			Token: token, BootToken: boot, StateDir: stateDir, Reconciler: r, Facts: agent.HostFacts("e2e"),
			MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		actx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- a.Run(actx) }()
		return cancel, done, a
	}
	configure := func(v string) uint64 {
		t.Helper()
		out, err := agents.Configure(ctx, &apiv1.AgentServiceConfigureRequest{Id: "switch/leaf01", Labels: map[string]string{"v": v}, ReplaceLabels: true})
		if err != nil {
			t.Fatal(err)
		}
		return out.GetAgent().GetDesiredRevision()
	}
	converged := func(rev uint64, v string) {
		t.Helper()
		waitFor(t, "agent applies "+v, func() bool { r, l := rec.label(); return r == rev && l == v })
		waitFor(t, "central sees applied revision", func() bool {
			got, err := agents.Get(ctx, &apiv1.AgentServiceGetRequest{Id: "switch/leaf01"})
			return err == nil && got.GetAgent().GetAppliedRevision() == rev &&
				got.GetAgent().GetLiveliness() == apiv1.Liveliness_LIVELINESS_ALIVE && got.GetAgent().GetFacts().GetAgentVersion() == "e2e"
		})
	}

	stop, done, _ := start(enr.GetSecret(), "", state, rec)
	converged(configure("one"), "one")

	// Central restarts; the agent reconnects and follows a change made after.
	stopCentral(t, f.cmd)
	f.cmd = startCentral(t, central, dir, listen)
	converged(configure("two"), "two")

	// The agent restarts from its state dir alone (credential and cache).
	stop()
	<-done
	stop, done, _ = start("", "", state, rec)
	converged(configure("three"), "three")
	stop()
	<-done

	// Offline from the start: central is down, the cached document applies.
	stopCentral(t, f.cmd)
	f.cmd = nil
	offline := &recorder{}
	stop, done, a := start("", "", state, offline)
	waitFor(t, "cached document applied offline", func() bool { _, l := offline.label(); return l == "three" })
	if a.Connected() {
		t.Fatal("connected although central is down")
	}
	stop()
	<-done

	// A wrong credential is final, not retried forever.
	f.cmd = startCentral(t, central, dir, listen)
	_, done, _ = start("mfa_wrong", "", t.TempDir(), rec)
	wantRefused(t, done, "wrong credential")
}

// wantRefused waits for an agent's Run to end with ErrRefused.
func wantRefused(t *testing.T, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if !errors.Is(err, agent.ErrRefused) {
			t.Fatalf("%s: %v, want ErrRefused", what, err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("%s: the agent kept retrying", what)
	}
}

// TestBootTokenExchange: an installer joins with a boot token, stores the
// credential it is issued, and comes back with it; the token works once.
func TestBootTokenExchange(t *testing.T) {
	f := startFleetCentral(t, "")
	ctx := t.Context()
	bt, err := apiv1.NewBootTokenServiceClient(f.cc).Create(ctx, &apiv1.BootTokenServiceCreateRequest{PartitionId: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	listen, tlsCfg := f.listen, f.tls
	run := func(identity, stateDir string) (*agent.Agent, context.CancelFunc, chan error) {
		a, err := agent.New(agent.Config{
			Kind: agentv1.Kind_KIND_INSTALLER, Identity: identity, Centrals: []string{listen}, TLS: tlsCfg,
			BootToken: bt.GetSecret(), StateDir: stateDir, Reconciler: &recorder{},
			MinBackoff: 50 * time.Millisecond, MaxBackoff: time.Second,
		})
		if err != nil {
			t.Fatal(err)
		}
		actx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- a.Run(actx) }()
		return a, cancel, done
	}
	state := t.TempDir()
	a, stop, done := run("00000000-0000-0000-0000-0000000000a1", state)
	waitFor(t, "installer applied its first document", func() bool { return a.Applied() == 1 })
	stop()
	<-done
	cred, err := os.ReadFile(filepath.Join(state, "credential"))
	if err != nil || !strings.HasPrefix(string(cred), "mfa_") {
		t.Fatalf("issued credential not stored: %q, %v", cred, err)
	}
	// Same state dir: the stored credential is used, not the spent token.
	a, stop, done = run("00000000-0000-0000-0000-0000000000a1", state)
	waitFor(t, "installer reconnected with its credential", a.Connected)
	stop()
	<-done
	// Another machine with the spent token is refused.
	_, stop, done = run("00000000-0000-0000-0000-0000000000a2", t.TempDir())
	defer stop()
	wantRefused(t, done, "replayed boot token")
}

// TestAgentOverIPv6: central listens on IPv6 loopback only and the agent,
// given an unreachable IPv4 address first, reaches it there.
func TestAgentOverIPv6(t *testing.T) {
	_, port, _ := strings.Cut(freePort(t), ":")
	listen := "[::1]:" + port
	f := startFleetCentral(t, listen)
	ctx := t.Context()
	enr, err := apiv1.NewAgentServiceClient(f.cc).Enroll(ctx, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_PIXIE, Identity: "pixie1", PartitionId: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	tlsCfg := f.tls
	a, err := agent.New(agent.Config{
		Kind: agentv1.Kind_KIND_PIXIE, Identity: "pixie1", Centrals: []string{freePort(t), listen}, TLS: tlsCfg,
		Token: enr.GetSecret(), Reconciler: &recorder{}, MinBackoff: 50 * time.Millisecond, MaxBackoff: 500 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { _ = a.Run(actx) }()
	// A PXE service's first document already carries its partition's boot
	// configuration: the revision the enrolment answered with.
	want := enr.GetAgent().GetDesiredRevision()
	waitFor(t, "agent over IPv6 applies its document", func() bool { return want > 0 && a.Applied() == want })
}
