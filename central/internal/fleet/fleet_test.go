package fleet_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/fleet"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

func testLog(testing.TB) *slog.Logger { return slog.New(slog.DiscardHandler) }

const (
	kSwitch    = agentv1.Kind_KIND_SWITCH
	kInstaller = agentv1.Kind_KIND_INSTALLER
)

func TestChangeReachesAgentAndAppliedIsStored(t *testing.T) {
	t.Parallel()
	r := startReplica(t, newDB(t), testConfig("r1"), nil)
	id, secret := r.enroll(t, kSwitch, "leaf01", "p1")
	s, w, d := connect(t, r.addr, hello(kSwitch, "leaf01", secret, 0))
	if w.GetAgentId() != id || w.GetReplica() != "r1" || w.GetIssuedToken() != "" {
		t.Fatalf("welcome %v, want agent %s on r1 without a new token", w, id)
	}
	if d.GetRevision() != 1 {
		t.Fatalf("first document revision %d, want 1", d.GetRevision())
	}

	rev := r.label(t, id, "blue")
	got := s.until(t, rev)
	if got.GetSettings().GetLabels()["v"] != "blue" || got.GetChangedAt() == nil {
		t.Fatalf("document %v, want label v=blue with changed_at", got)
	}
	if err := s.Send(report(rev, &agentv1.Event{Time: timestamppb.Now(), Type: "Applied", Message: "ok"})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "applied revision stored", func() bool {
		row, _ := r.row(t, "switch", "leaf01")
		return row.applied == rev && row.health == "OK" && row.events == 1 && row.repl == "r1" && row.contact
	})
}

func TestCoalescesToNewestDocument(t *testing.T) {
	t.Parallel()
	r := startReplica(t, newDB(t), testConfig("r1"), nil)
	id, secret := r.enroll(t, kSwitch, "leaf01", "p1")
	s, _, _ := connect(t, r.addr, hello(kSwitch, "leaf01", secret, 0))
	var last uint64
	for i := range 50 {
		last = r.label(t, id, fmt.Sprint(i))
	}
	// Intermediate revisions may be skipped, never reordered; the last
	// one always arrives.
	var prev uint64 = 1
	for {
		d := s.next(t)
		if d.GetRevision() <= prev {
			t.Fatalf("revision %d after %d", d.GetRevision(), prev)
		}
		prev = d.GetRevision()
		if prev == last {
			if d.GetSettings().GetLabels()["v"] != "49" {
				t.Fatalf("newest document has label %q, want 49", d.GetSettings().GetLabels()["v"])
			}
			return
		}
	}
}

// dropHints loses every hint, as a broken LISTEN connection would.
type dropHints struct{}

func (dropHints) Notify(context.Context, pgx.Tx, string) error         { return nil }
func (dropHints) Listen(ctx context.Context, _ func(string), _ func()) { <-ctx.Done() }

func TestResyncHealsLostHint(t *testing.T) {
	t.Parallel()
	cfg := testConfig("r1")
	cfg.Resync = 100 * time.Millisecond
	r := startReplica(t, newDB(t), cfg, dropHints{})
	id, secret := r.enroll(t, kSwitch, "leaf01", "p1")
	s, _, _ := connect(t, r.addr, hello(kSwitch, "leaf01", secret, 0))
	rev := r.label(t, id, "healed")
	if d := s.until(t, rev); d.GetSettings().GetLabels()["v"] != "healed" {
		t.Fatalf("document %v", d)
	}
}

func TestTwoReplicasServeAgentsOnEither(t *testing.T) {
	t.Parallel()
	url := newDB(t)
	r1 := startReplica(t, url, testConfig("r1"), nil)
	r2 := startReplica(t, url, testConfig("r2"), nil)
	idA, secA := r1.enroll(t, kSwitch, "leaf01", "p1")
	idB, secB := r1.enroll(t, kSwitch, "leaf02", "p1")
	a, wa, _ := connect(t, r1.addr, hello(kSwitch, "leaf01", secA, 0))
	b, wb, _ := connect(t, r2.addr, hello(kSwitch, "leaf02", secB, 0))
	if wa.GetReplica() != "r1" || wb.GetReplica() != "r2" {
		t.Fatalf("replicas %q, %q", wa.GetReplica(), wb.GetReplica())
	}
	// Changes made on either replica reach agents on either.
	a.until(t, r2.label(t, idA, "from-r2"))
	b.until(t, r1.label(t, idB, "from-r1"))

	// An agent moving to the other replica gets the newest document there.
	a.close()
	rev := r2.label(t, idA, "moved")
	_, _, d := connect(t, r2.addr, hello(kSwitch, "leaf01", secA, rev-1))
	if d.GetRevision() != rev {
		t.Fatalf("after moving: revision %d, want %d", d.GetRevision(), rev)
	}
	eventually(t, "replica recorded", func() bool {
		row, _ := r2.row(t, "switch", "leaf01")
		return row.repl == "r2"
	})
}

func TestCentralRestartConverges(t *testing.T) {
	t.Parallel()
	url := newDB(t)
	cfg := testConfig("r1")
	cfg.Flush = time.Hour // only the shutdown flush writes the report
	r1 := startReplica(t, url, cfg, nil)
	id, secret := r1.enroll(t, kSwitch, "leaf01", "p1")
	s, _, _ := connect(t, r1.addr, hello(kSwitch, "leaf01", secret, 0))
	if err := s.Send(report(1)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(200 * time.Millisecond) // let the report arrive before the stop
	r1.stop()
	if err := s.end(t); status.Code(err) != codes.Unavailable {
		t.Fatalf("stream of a stopping replica ended with %v, want Unavailable", err)
	}
	// Reported state was flushed on shutdown, not lost.
	r2 := startReplica(t, url, testConfig("r2"), nil)
	if row, _ := r2.row(t, "switch", "leaf01"); row.applied != 1 {
		t.Fatalf("applied revision after shutdown %d, want 1", row.applied)
	}
	rev := r2.label(t, id, "after-restart")
	s2, _, d := connect(t, r2.addr, hello(kSwitch, "leaf01", secret, 1))
	if d.GetRevision() != rev {
		t.Fatalf("after restart: revision %d, want %d", d.GetRevision(), rev)
	}
	s2.until(t, r2.label(t, id, "again"))
}

func TestAgentCannotActForAnother(t *testing.T) {
	t.Parallel()
	r := startReplica(t, newDB(t), testConfig("r1"), nil)
	_, secA := r.enroll(t, kSwitch, "leaf01", "p1")
	r.enroll(t, kSwitch, "leaf02", "p1")
	for name, tc := range map[string]struct {
		h    *agentv1.SyncRequest
		want codes.Code
	}{
		"other identity":  {hello(kSwitch, "leaf02", secA, 0), codes.PermissionDenied},
		"other kind":      {hello(agentv1.Kind_KIND_BMC, "leaf01", secA, 0), codes.PermissionDenied},
		"unknown token":   {hello(kSwitch, "leaf01", "mfa_nope", 0), codes.Unauthenticated},
		"people token":    {hello(kSwitch, "leaf01", "mft_nope", 0), codes.Unauthenticated},
		"boot for switch": {&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Hello{Hello: &agentv1.Hello{Kind: kSwitch, Identity: "leaf01", Credential: &agentv1.Credential{Secret: &agentv1.Credential_BootToken{BootToken: "mfb_x"}}}}}, codes.InvalidArgument},
	} {
		t.Run(name, func(t *testing.T) {
			s := dial(t, r.addr)
			if err := s.Send(tc.h); err != nil {
				t.Fatal(err)
			}
			if err := s.end(t); status.Code(err) != tc.want {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
	// Nothing was recorded for either agent.
	for _, id := range []string{"leaf01", "leaf02"} {
		if row, _ := r.row(t, "switch", id); row.contact || row.repl != "" {
			t.Fatalf("%s: refused hellos changed its row: %+v", id, row)
		}
	}
}

func TestBootTokenWorksOnce(t *testing.T) {
	t.Parallel()
	r := startReplica(t, newDB(t), testConfig("r1"), nil)
	tok := r.bootToken(t, "p1", time.Hour)
	s, w, d := connect(t, r.addr, bootHello("uuid-m1", tok))
	if !strings.HasPrefix(w.GetIssuedToken(), "mfa_") || d.GetRevision() != 1 {
		t.Fatalf("welcome %v, document %v: want an issued agent token and revision 1", w, d)
	}
	s.close()

	// Replayed: refused, nothing changes.
	again := dial(t, r.addr)
	_ = again.Send(bootHello("uuid-m2", tok))
	if err := again.end(t); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("replayed boot token: %v, want Unauthenticated", err)
	}
	if _, exists := r.row(t, "installer", "uuid-m2"); exists {
		t.Fatal("replayed boot token created an agent")
	}
	// The issued credential works from now on.
	connect(t, r.addr, hello(kInstaller, "uuid-m1", w.GetIssuedToken(), 1))

	// Expired: refused.
	old := r.bootToken(t, "p1", -time.Second)
	exp := dial(t, r.addr)
	_ = exp.Send(bootHello("uuid-m3", old))
	if err := exp.end(t); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("expired boot token: %v, want Unauthenticated", err)
	}

	// A machine known in p1 cannot be claimed with p2's token, and the
	// token stays unused.
	p2 := r.bootToken(t, "p2", time.Hour)
	x := dial(t, r.addr)
	_ = x.Send(bootHello("uuid-m1", p2))
	if err := x.end(t); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("other partition: %v, want PermissionDenied", err)
	}
	connect(t, r.addr, bootHello("uuid-m4", p2))
}

func TestBootTokenRace(t *testing.T) {
	t.Parallel()
	r := startReplica(t, newDB(t), testConfig("r1"), nil)
	tok := r.bootToken(t, "p1", time.Hour)
	const n = 32
	var wg sync.WaitGroup
	var won, lost atomic.Int32
	for i := range n {
		wg.Go(func() {
			s := dial(t, r.addr)
			_ = s.Send(bootHello(fmt.Sprintf("uuid-%d", i), tok))
			m, err := s.Recv()
			switch {
			case err == nil && m.GetWelcome().GetIssuedToken() != "":
				won.Add(1)
			case status.Code(err) == codes.Unauthenticated:
				lost.Add(1)
			default:
				t.Errorf("unexpected answer %v, %v", m, err)
			}
		})
	}
	wg.Wait()
	if won.Load() != 1 || lost.Load() != n-1 {
		t.Fatalf("%d exchanges won, %d lost; want exactly one winner", won.Load(), lost.Load())
	}
	var agents int
	if err := r.st.Pool().QueryRow(t.Context(), `SELECT count(*) FROM agents WHERE kind = 'installer'`).Scan(&agents); err != nil || agents != 1 {
		t.Fatalf("%d installer agents (%v), want 1", agents, err)
	}
}

func TestMalformedMessagesChangeNothing(t *testing.T) {
	t.Parallel()
	r := startReplica(t, newDB(t), testConfig("r1"), nil)
	id, secret := r.enroll(t, kSwitch, "leaf01", "p1")
	manyEvents := make([]*agentv1.Event, 65)
	for i := range manyEvents {
		manyEvents[i] = &agentv1.Event{Type: "x"}
	}
	for name, tc := range map[string]struct {
		hello bool // send a valid hello first
		msgs  []*agentv1.SyncRequest
	}{
		"heartbeat first":   {msgs: []*agentv1.SyncRequest{{Msg: &agentv1.SyncRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{}}}}},
		"empty message":     {msgs: []*agentv1.SyncRequest{{}}},
		"unknown kind":      {msgs: []*agentv1.SyncRequest{hello(agentv1.Kind(99), "leaf01", secret, 0)}},
		"bad identity":      {msgs: []*agentv1.SyncRequest{hello(kSwitch, "leaf 01/x", secret, 0)}},
		"no credential":     {msgs: []*agentv1.SyncRequest{{Msg: &agentv1.SyncRequest_Hello{Hello: &agentv1.Hello{Kind: kSwitch, Identity: "leaf01"}}}}},
		"bad fact address":  {msgs: []*agentv1.SyncRequest{{Msg: &agentv1.SyncRequest_Hello{Hello: &agentv1.Hello{Kind: kSwitch, Identity: "leaf01", Credential: &agentv1.Credential{Secret: &agentv1.Credential_Token{Token: secret}}, Facts: &agentv1.Facts{Addresses: []string{"300.1.1.1"}}}}}}},
		"future revision":   {hello: true, msgs: []*agentv1.SyncRequest{report(7)}},
		"too many events":   {hello: true, msgs: []*agentv1.SyncRequest{report(1, manyEvents...)}},
		"untyped event":     {hello: true, msgs: []*agentv1.SyncRequest{report(1, &agentv1.Event{Message: "?"})}},
		"hello twice":       {hello: true, msgs: []*agentv1.SyncRequest{hello(kSwitch, "leaf01", secret, 0)}},
		"future heartbeat":  {hello: true, msgs: []*agentv1.SyncRequest{{Msg: &agentv1.SyncRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{AppliedRevision: 9}}}}},
		"unknown health":    {hello: true, msgs: []*agentv1.SyncRequest{{Msg: &agentv1.SyncRequest_Report{Report: &agentv1.Report{AppliedRevision: 1, Health: 42}}}}},
		"oversized message": {hello: true, msgs: []*agentv1.SyncRequest{{Msg: &agentv1.SyncRequest_Report{Report: &agentv1.Report{AppliedRevision: 1, Message: strings.Repeat("x", 5000)}}}}},
	} {
		t.Run(name, func(t *testing.T) {
			before, _ := r.row(t, "switch", "leaf01")
			var s *stream
			if tc.hello {
				s, _, _ = connect(t, r.addr, hello(kSwitch, "leaf01", secret, 0))
				// The hello itself is contact; wait until it is recorded.
				eventually(t, "hello recorded", func() bool { row, _ := r.row(t, "switch", "leaf01"); return row.contact })
				before, _ = r.row(t, "switch", "leaf01")
			} else {
				s = dial(t, r.addr)
			}
			for _, m := range tc.msgs {
				_ = s.Send(m)
			}
			if err := s.end(t); status.Code(err) != codes.InvalidArgument {
				t.Fatalf("got %v, want InvalidArgument", err)
			}
			time.Sleep(100 * time.Millisecond) // > flush interval
			after, _ := r.row(t, "switch", "leaf01")
			if after.applied != before.applied || after.events != before.events || after.health != before.health {
				t.Fatalf("malformed message changed the agent: %+v → %+v", before, after)
			}
		})
	}
	var n int
	if err := r.st.Pool().QueryRow(t.Context(), `SELECT count(*) FROM agents WHERE id <> $1`, id).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d other agents (%v), want 0", n, err)
	}
}

// Streams ended from outside lose their connection (fleet.Creds), so the
// agent sees Unavailable and reconnects; what it then meets tells why.

func TestNewStreamSupersedesOld(t *testing.T) {
	t.Parallel()
	r := startReplica(t, newDB(t), testConfig("r1"), nil)
	id, secret := r.enroll(t, kSwitch, "leaf01", "p1")
	old, _, _ := connect(t, r.addr, hello(kSwitch, "leaf01", secret, 0))
	cur, _, _ := connect(t, r.addr, hello(kSwitch, "leaf01", secret, 1))
	if err := old.end(t); status.Code(err) != codes.Unavailable {
		t.Fatalf("old stream ended with %v, want Unavailable", err)
	}
	cur.until(t, r.label(t, id, "x"))
	if n := r.hub.Connected(); n != 1 {
		t.Fatalf("%d streams on the replica, want 1", n)
	}
}

func TestReEnrolAndDeleteCloseTheStream(t *testing.T) {
	t.Parallel()
	r := startReplica(t, newDB(t), testConfig("r1"), nil)
	_, secret := r.enroll(t, kSwitch, "leaf01", "p1")
	s, _, _ := connect(t, r.addr, hello(kSwitch, "leaf01", secret, 0))
	_, fresh := r.enroll(t, kSwitch, "leaf01", "p1")
	if err := s.end(t); status.Code(err) != codes.Unavailable {
		t.Fatalf("re-enrolment: old stream ended with %v, want Unavailable", err)
	}
	refused := func(token string) {
		t.Helper()
		x := dial(t, r.addr)
		_ = x.Send(hello(kSwitch, "leaf01", token, 0))
		if err := x.end(t); status.Code(err) != codes.Unauthenticated {
			t.Fatalf("reconnect with a replaced credential: %v, want Unauthenticated", err)
		}
	}
	refused(secret)
	s2, w, _ := connect(t, r.addr, hello(kSwitch, "leaf01", fresh, 0))
	err := r.st.Tx(t.Context(), func(tx pgx.Tx) error { return r.hub.Delete(t.Context(), tx, w.GetAgentId()) })
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.end(t); status.Code(err) != codes.Unavailable {
		t.Fatalf("delete: stream ended with %v, want Unavailable", err)
	}
	refused(fresh)
	eventually(t, "no streams left", func() bool { return r.hub.Connected() == 0 })
}

// TestManyAgentsRacingChanges connects agents and changes their documents
// from many goroutines at once, on two replicas: every agent ends at its
// newest revision.
func TestManyAgentsRacingChanges(t *testing.T) {
	t.Parallel()
	url := newDB(t)
	rs := []*replica{startReplica(t, url, testConfig("r1"), nil), startReplica(t, url, testConfig("r2"), nil)}
	const agents, changes = 40, 10
	ids := make([]string, agents)
	secrets := make([]string, agents)
	for i := range agents {
		ids[i], secrets[i] = rs[0].enroll(t, kSwitch, fmt.Sprintf("sw%d", i), "p1")
	}
	var wg sync.WaitGroup
	streams := make([]*stream, agents)
	for i := range agents {
		wg.Go(func() {
			streams[i], _, _ = connect(t, rs[i%2].addr, hello(kSwitch, fmt.Sprintf("sw%d", i), secrets[i], 0))
		})
	}
	wg.Wait()
	var last [agents]atomic.Uint64
	for i := range agents {
		for j := range changes {
			wg.Go(func() {
				rev := rs[(i+j)%2].label(t, ids[i], fmt.Sprint(j))
				for {
					cur := last[i].Load()
					if rev <= cur || last[i].CompareAndSwap(cur, rev) {
						break
					}
				}
			})
		}
	}
	wg.Wait()
	for i := range agents {
		wg.Go(func() { streams[i].until(t, last[i].Load()) })
	}
	wg.Wait()
	if last[0].Load() != changes+1 {
		t.Fatalf("agent 0 at revision %d, want %d", last[0].Load(), changes+1)
	}
}

func TestLiveliness(t *testing.T) {
	now := time.Now()
	th := fleet.Thresholds{Alive: time.Minute, Dead: 5 * time.Minute}
	at := func(ago time.Duration) *time.Time { t := now.Add(-ago); return &t }
	for name, tc := range map[string]struct {
		last *time.Time
		want string
	}{
		"never":          {nil, "LIVELINESS_UNKNOWN"},
		"just now":       {at(time.Second), "LIVELINESS_ALIVE"},
		"at alive limit": {at(time.Minute), "LIVELINESS_ALIVE"},
		"lost a while":   {at(2 * time.Minute), "LIVELINESS_UNKNOWN"},
		"long gone":      {at(6 * time.Minute), "LIVELINESS_DEAD"},
	} {
		if got := th.Liveliness(tc.last, now).String(); got != tc.want {
			t.Errorf("%s: %s, want %s", name, got, tc.want)
		}
	}
}

// TestReconnectStormIsShed: with one handshake slot, taken, and no wait,
// every hello gets Unavailable with a retry delay; once the slot is free
// again every agent gets in on retry.
func TestReconnectStormIsShed(t *testing.T) {
	t.Parallel()
	cfg := testConfig("r1")
	cfg.MaxHandshakes = 1
	cfg.HandshakeWait = time.Microsecond
	r := startReplica(t, newDB(t), cfg, nil)
	const n = 30
	secrets := make([]string, n)
	for i := range n {
		_, secrets[i] = r.enroll(t, kSwitch, fmt.Sprintf("sw%d", i), "p1")
	}
	release := r.hub.HoldHandshakeSlot()
	var shed, in atomic.Int32
	var firstShed sync.WaitGroup
	firstShed.Add(n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			for attempt := 0; ; attempt++ {
				s := dial(t, r.addr)
				_ = s.Send(hello(kSwitch, fmt.Sprintf("sw%d", i), secrets[i], 0))
				m, err := s.Recv()
				if err == nil && m.GetWelcome() != nil {
					if attempt == 0 {
						t.Errorf("sw%d got in while the only handshake slot was taken", i)
					}
					in.Add(1)
					return
				}
				st := status.Convert(err)
				if st.Code() != codes.Unavailable || retryDelayOf(st) <= 0 {
					t.Errorf("refused with %v, want Unavailable with a retry delay", err)
					if attempt == 0 {
						firstShed.Done()
					}
					return
				}
				shed.Add(1)
				s.close()
				if attempt == 0 {
					firstShed.Done()
				}
				time.Sleep(time.Duration(attempt+1) * 10 * time.Millisecond)
			}
		})
	}
	firstShed.Wait()
	release()
	wg.Wait()
	if in.Load() != n {
		t.Fatalf("%d of %d agents got in", in.Load(), n)
	}
	if shed.Load() < n {
		t.Fatalf("%d handshakes shed, want at least %d (every first hello, the slot being taken)", shed.Load(), n)
	}
}

func retryDelayOf(st *status.Status) time.Duration {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok {
			return ri.GetRetryDelay().AsDuration()
		}
	}
	return 0
}

// TestAgentThatStopsReadingIsDropped: an agent that stops reading its
// stream cannot hold a sender: its send times out, its stream is closed,
// and another agent keeps getting its documents meanwhile.
func TestAgentThatStopsReadingIsDropped(t *testing.T) {
	t.Parallel()
	cfg := testConfig("r1")
	cfg.Senders = 1 // the one sender must not stay stuck
	cfg.SendTimeout = 300 * time.Millisecond
	r := startReplica(t, newDB(t), cfg, nil)
	slowID, slowSecret := r.enroll(t, kSwitch, "slow", "p1")
	fastID, fastSecret := r.enroll(t, kSwitch, "fast", "p1")
	connect(t, r.addr, hello(kSwitch, "slow", slowSecret, 0)) // never read again
	fast, _, _ := connect(t, r.addr, hello(kSwitch, "fast", fastSecret, 0))

	big := map[string]string{}
	for i := range 60 {
		big[fmt.Sprintf("k%02d", i)] = strings.Repeat("x", 250)
	}
	setLabels := func(id string, labels map[string]string) uint64 {
		var d *agentv1.Desired
		err := r.st.Tx(t.Context(), func(tx pgx.Tx) error {
			var err error
			d, err = r.hub.Change(t.Context(), tx, id, func(d *agentv1.Desired) (bool, error) {
				d.Settings.Labels = labels
				return true, nil
			})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return d.GetRevision()
	}
	// ~16 KiB per document: a few fill the stream's flow-control window.
	for i := range 40 {
		big["n"] = fmt.Sprint(i)
		setLabels(slowID, big)
		fast.until(t, setLabels(fastID, map[string]string{"n": fmt.Sprint(i)}))
	}
	eventually(t, "the slow agent's stream closed", func() bool { return r.hub.Connected() == 1 })
	fast.until(t, r.label(t, fastID, "still served"))
}

// TestServerWithoutFleetCredsRefusesStreams: a server set up without
// fleet.Creds could not end streams, so it refuses them clearly.
func TestServerWithoutFleetCredsRefusesStreams(t *testing.T) {
	t.Parallel()
	url := newDB(t)
	r := startReplica(t, url, testConfig("r1"), nil)
	_, secret := r.enroll(t, kSwitch, "leaf01", "p1")
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	plain := grpc.NewServer()
	r.hub.Register(plain)
	go func() { _ = plain.Serve(lis) }()
	defer plain.Stop()
	s := dial(t, lis.Addr().String())
	_ = s.Send(hello(kSwitch, "leaf01", secret, 0))
	if err := s.end(t); status.Code(err) != codes.Internal {
		t.Fatalf("got %v, want Internal", err)
	}
}

// TestBootTokenBindingSupersedeAndCap: a token minted for a MAC works only
// for a hello listing that MAC and naming its machine, and a refused
// hello leaves it unused; a new boot of the MAC supersedes its unused
// token; the partition's unused tokens are capped.
func TestBootTokenBindingSupersedeAndCap(t *testing.T) {
	t.Parallel()
	cfg := testConfig("r1")
	cfg.MaxUnusedBootTokens = 3
	r := startReplica(t, newDB(t), cfg, nil)
	mint := func(tok fleet.BootToken) (fleet.MintedBootToken, error) {
		tok.Partition, tok.TTL, tok.CreatedBy = "p1", time.Hour, "test"
		var m fleet.MintedBootToken
		err := r.st.Tx(t.Context(), func(tx pgx.Tx) (err error) {
			m, err = r.hub.MintBootToken(t.Context(), tx, tok)
			return err
		})
		return m, err
	}
	withNICs := func(identity, secret string, macs ...string) *agentv1.SyncRequest {
		m := bootHello(identity, secret)
		m.GetHello().Facts = &agentv1.Facts{Machine: &agentv1.MachineFacts{Uuid: identity}}
		for _, mac := range macs {
			m.GetHello().Facts.Machine.Nics = append(m.GetHello().Facts.Machine.Nics, &agentv1.NICFact{Mac: mac})
		}
		return m
	}
	refused := func(what string, m *agentv1.SyncRequest, want codes.Code) {
		t.Helper()
		s := dial(t, r.addr)
		_ = s.Send(m)
		if err := s.end(t); status.Code(err) != want {
			t.Fatalf("%s: %v, want %v", what, err, want)
		}
	}

	tok, err := mint(fleet.BootToken{MAC: "52:54:00:00:00:01", Machine: "uuid-m1"})
	if err != nil {
		t.Fatal(err)
	}
	refused("no NICs in the hello", bootHello("uuid-m1", tok.Secret), codes.PermissionDenied)
	refused("another MAC", withNICs("uuid-m1", tok.Secret, "52:54:00:00:00:02"), codes.PermissionDenied)
	refused("another machine", withNICs("uuid-m2", tok.Secret, "52:54:00:00:00:01"), codes.PermissionDenied)
	// Unused after all refusals: the right hello (MAC in another spelling) is welcome.
	connect(t, r.addr, withNICs("uuid-m1", tok.Secret, "52:54:00:00:00:02", "52-54-00-00-00-01"))

	// A second boot of a MAC supersedes the first boot's unused token.
	first, err := mint(fleet.BootToken{MAC: "52:54:00:00:00:03"})
	if err != nil {
		t.Fatal(err)
	}
	second, err := mint(fleet.BootToken{MAC: "52:54:00:00:00:03"})
	if err != nil {
		t.Fatal(err)
	}
	refused("superseded token", withNICs("uuid-m3", first.Secret, "52:54:00:00:00:03"), codes.Unauthenticated)

	// The cap: second + two more unused tokens; the fourth is refused.
	for i := range 2 {
		if _, err := mint(fleet.BootToken{MAC: fmt.Sprintf("52:54:00:00:01:%02x", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := mint(fleet.BootToken{MAC: "52:54:00:00:02:00"}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("beyond the cap: %v, want ResourceExhausted", err)
	}
	// Using one makes room again.
	connect(t, r.addr, withNICs("uuid-m3", second.Secret, "52:54:00:00:00:03"))
	if _, err := mint(fleet.BootToken{MAC: "52:54:00:00:02:00"}); err != nil {
		t.Fatalf("after one was used: %v", err)
	}
}
