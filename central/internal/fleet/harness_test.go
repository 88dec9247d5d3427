package fleet_test

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/pgtest"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m, &pg)) }

// replica is one running hub: real store, real gRPC on loopback.
type replica struct {
	hub  *fleet.Hub
	st   *store.Store
	srv  *grpc.Server
	addr string
	done bool
}

// testConfig reacts fast so tests do not wait for production intervals.
func testConfig(name string) fleet.Config {
	c := fleet.DefaultConfig()
	c.Replica = name
	c.Flush = 20 * time.Millisecond
	c.Heartbeat = time.Second
	return c
}

// newDB makes a migrated database with partitions p1 and p2.
func newDB(t *testing.T) string {
	t.Helper()
	url := pg.NewDatabase(t)
	st, err := store.Open(t.Context(), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Pool().Exec(t.Context(), `INSERT INTO partitions (id, spec) VALUES ('p1', '{"id":"p1"}'), ('p2', '{"id":"p2"}')`); err != nil {
		t.Fatal(err)
	}
	return url
}

func startReplica(t *testing.T, url string, cfg fleet.Config, hints fleet.Hints) *replica {
	t.Helper()
	st, err := store.Open(t.Context(), url, nil)
	if err != nil {
		t.Fatal(err)
	}
	hub, err := fleet.New(st, testLog(t), cfg, hints)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{hub: hub, st: st, srv: grpc.NewServer(grpc.Creds(fleet.Creds(insecure.NewCredentials(), nil))), addr: lis.Addr().String()}
	hub.Register(r.srv)
	hub.Start(t.Context())
	go func() { _ = r.srv.Serve(lis) }()
	t.Cleanup(r.stop)
	return r
}

func (r *replica) stop() {
	if r.done {
		return
	}
	r.done = true
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	r.hub.Shutdown(ctx)
	r.srv.Stop()
	r.st.Close()
}

// enroll creates an agent and returns its id and credential.
func (r *replica) enroll(t *testing.T, kind agentv1.Kind, identity, partition string) (id, secret string) {
	t.Helper()
	var e fleet.Enrolment
	err := r.st.Tx(t.Context(), func(tx pgx.Tx) error {
		var err error
		e, err = r.hub.Enroll(t.Context(), tx, kind, identity, partition, "test")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return e.ID, e.Secret
}

// label changes the agent's desired labels and returns the new revision.
func (r *replica) label(t testing.TB, id, value string) uint64 {
	t.Helper()
	var d *agentv1.Desired
	err := r.st.Tx(context.Background(), func(tx pgx.Tx) error {
		var err error
		d, err = r.hub.Change(context.Background(), tx, id, func(d *agentv1.Desired) (bool, error) {
			if d.Settings.Labels == nil {
				d.Settings.Labels = map[string]string{}
			}
			d.Settings.Labels["v"] = value
			return true, nil
		})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return d.GetRevision()
}

// bootToken stores a boot token for partition that expires after life.
func (r *replica) bootToken(t *testing.T, partition string, life time.Duration) string {
	t.Helper()
	secret, hash := auth.NewPrefixedSecret(auth.BootTokenPrefix)
	if _, err := r.st.Pool().Exec(t.Context(), `INSERT INTO boot_tokens (id, partition_id, secret_hash, expires_at, created_by)
		VALUES (gen_random_uuid()::TEXT, $1, $2, $3, 'test')`, partition, hash, time.Now().Add(life)); err != nil {
		t.Fatal(err)
	}
	return secret
}

// row is an agent's stored observed state.
type row struct {
	applied      uint64
	health, repl string
	contact      bool
	events       int
}

func (r *replica) row(t testing.TB, kind, identity string) (row, bool) {
	t.Helper()
	var out row
	var last *time.Time
	err := r.st.Pool().QueryRow(context.Background(), `SELECT applied_revision, health, replica, last_contact,
		(SELECT count(*) FROM agent_events e WHERE e.agent_id = a.id) FROM agents a WHERE kind = $1 AND identity = $2`, kind, identity).
		Scan(&out.applied, &out.health, &out.repl, &last, &out.events)
	if errors.Is(err, pgx.ErrNoRows) {
		return row{}, false
	}
	if err != nil {
		t.Fatal(err)
	}
	out.contact = last != nil
	return out, true
}

// stream is a raw agent stream, to drive the protocol message by message.
type stream struct {
	agentv1.AgentService_SyncClient
	cancel context.CancelFunc
	cc     *grpc.ClientConn
}

func dial(t testing.TB, addr string) *stream {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := agentv1.NewAgentServiceClient(cc).Sync(ctx)
	if err != nil {
		cancel()
		cc.Close()
		t.Fatal(err)
	}
	st := &stream{AgentService_SyncClient: s, cancel: cancel, cc: cc}
	t.Cleanup(st.close)
	return st
}

func (s *stream) close() {
	s.cancel()
	s.cc.Close()
}

func hello(kind agentv1.Kind, identity, token string, applied uint64) *agentv1.SyncRequest {
	return &agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Hello{Hello: &agentv1.Hello{
		Kind: kind, Identity: identity, LastAppliedRevision: applied,
		Credential: &agentv1.Credential{Secret: &agentv1.Credential_Token{Token: token}},
	}}}
}

func bootHello(identity, bootToken string) *agentv1.SyncRequest {
	return &agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Hello{Hello: &agentv1.Hello{
		Kind: agentv1.Kind_KIND_INSTALLER, Identity: identity,
		Credential: &agentv1.Credential{Secret: &agentv1.Credential_BootToken{BootToken: bootToken}},
	}}}
}

func report(applied uint64, events ...*agentv1.Event) *agentv1.SyncRequest {
	return &agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Report{Report: &agentv1.Report{
		AppliedRevision: applied, Health: agentv1.Health_HEALTH_OK, Events: events,
	}}}
}

// connect says hello and returns the welcome and the first document.
func connect(t testing.TB, addr string, h *agentv1.SyncRequest) (*stream, *agentv1.Welcome, *agentv1.Desired) {
	t.Helper()
	s := dial(t, addr)
	if err := s.Send(h); err != nil {
		t.Fatal(err)
	}
	m, err := s.Recv()
	if err != nil {
		t.Fatalf("hello refused: %v", err)
	}
	w := m.GetWelcome()
	if w == nil {
		t.Fatalf("first message %v, want welcome", m)
	}
	return s, w, s.next(t)
}

// next waits for the next document.
func (s *stream) next(t testing.TB) *agentv1.Desired {
	t.Helper()
	type res struct {
		m   *agentv1.SyncResponse
		err error
	}
	ch := make(chan res, 1)
	go func() {
		m, err := s.Recv()
		ch <- res{m, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("recv: %v", r.err)
		}
		if r.m.GetDesired() == nil {
			t.Fatalf("got %v, want a desired document", r.m)
		}
		return r.m.GetDesired()
	case <-time.After(20 * time.Second):
		t.Fatal("no document within 20s")
		return nil
	}
}

// until waits for the document of revision rev (skipping older ones).
func (s *stream) until(t testing.TB, rev uint64) *agentv1.Desired {
	t.Helper()
	for {
		d := s.next(t)
		if d.GetRevision() > rev {
			t.Fatalf("got revision %d, want %d", d.GetRevision(), rev)
		}
		if d.GetRevision() == rev {
			return d
		}
	}
}

// end waits for the stream to end and returns its status.
func (s *stream) end(t testing.TB) error {
	t.Helper()
	ch := make(chan error, 1)
	go func() {
		for {
			if _, err := s.Recv(); err != nil {
				ch <- err
				return
			}
		}
	}()
	select {
	case err := <-ch:
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("stream did not end within 20s")
		return nil
	}
}

// eventually polls cond for up to 20 s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
