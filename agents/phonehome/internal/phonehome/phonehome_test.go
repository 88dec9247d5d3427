package phonehome

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

const (
	testMachineID = "4c4c4544-0042-3510-8052-b4c04f4d3232"
	testToken     = "mfa_c2VjcmV0LW1hY2hpbmUtY3JlZGVudGlhbA"
)

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fakeRebooter records reboots and whether everything emitted had gone
// out on the stream by then.
type fakeRebooter struct {
	current atomic.Pointer[Phonehome]
	calls   atomic.Int64
	mu      sync.Mutex
	flushed []bool
}

func (r *fakeRebooter) Reboot(context.Context) error {
	// Flush with a dead context only reports whether the outbox is empty.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	empty := r.current.Load().Agent().Flush(ctx) == nil
	r.mu.Lock()
	r.flushed = append(r.flushed, empty)
	r.mu.Unlock()
	r.calls.Add(1)
	return nil
}

// harness runs phone-homes against one central with one state dir, the
// way a machine restarts its service.
type harness struct {
	t        *testing.T
	c        *central
	stateDir string
	install  string
	reboot   *fakeRebooter
	logs     *syncBuffer
	centrals []string
	flush    time.Duration
	dialOpts []grpc.DialOption
}

func newHarness(t *testing.T) *harness {
	c := startCentral(t, testToken)
	return &harness{
		t: t, c: c, stateDir: t.TempDir(), reboot: &fakeRebooter{}, logs: &syncBuffer{},
		centrals: []string{c.addr},
	}
}

func (h *harness) file() *File {
	h.t.Helper()
	b, err := json.Marshal(map[string]any{
		// Upper case on purpose: the identity is the lower-case UUID.
		"machine_id": strings.ToUpper(testMachineID), "centrals": h.centrals, "ca_pem": h.c.caPEM, "token": testToken,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	f, err := ParseFile(b)
	if err != nil {
		h.t.Fatal(err)
	}
	return f
}

// start runs a phone-home until the returned stop is called.
func (h *harness) start() (*Phonehome, func()) {
	h.t.Helper()
	p, err := New(Options{
		File: h.file(), StateDir: h.stateDir, InstallFile: h.install, Version: "v0.0.0-test", Rebooter: h.reboot,
		Log:      slog.New(slog.NewJSONHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		Hostname: func() (string, error) { return "web-0", nil },
		Uptime:   func() (time.Duration, error) { return 12 * time.Second, nil },
		Facts: func(context.Context) (*agentv1.Facts, error) {
			return &agentv1.Facts{AgentVersion: "v0.0.0-test", Hostname: "web-0"}, nil
		},
		FlushTimeout: h.flush,
		DialOptions:  h.dialOpts,
		MinBackoff:   10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	h.reboot.current.Store(p)
	ctx, cancel := context.WithCancel(h.t.Context())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				h.t.Errorf("Run: %v", err)
			}
		})
	}
	h.t.Cleanup(stop)
	return p, stop
}

// settle waits until p applied revision rev and everything it emitted so
// far reached central: a marker event goes out last on the ordered stream.
func (h *harness) settle(p *Phonehome, rev uint64) {
	h.t.Helper()
	waitFor(h.t, fmt.Sprintf("revision %d applied", rev), func() bool { return p.Agent().Applied() >= rev })
	marker := fmt.Sprintf("marker-%d", time.Now().UnixNano())
	p.Agent().Emit(nil, &agentv1.Event{Type: marker})
	waitFor(h.t, "marker at central", func() bool { return h.c.count(marker) == 1 })
}

func (h *harness) remembered(id string) bool {
	st, err := loadState(h.stateDir)
	return err == nil && st.phonedHome(id)
}

func (h *harness) checkTokenNotLogged() {
	h.t.Helper()
	if strings.Contains(h.logs.String(), testToken) {
		h.t.Errorf("the token appears in the logs")
	}
	if h.logs.String() == "" {
		h.t.Errorf("nothing was logged; the check would not notice a leak")
	}
}

func TestPhonedHomeOncePerAllocation(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.c.push(t, machineDoc(1, "alloc-1", 1))

	p, stop := h.start()
	waitFor(t, "Phoned Home", func() bool { return h.c.count(EventPhonedHome) == 1 })
	if got, want := h.c.messages(EventPhonedHome)[0], "allocation alloc-1, hostname web-0, up 12s, metal-phonehome v0.0.0-test"; got != want {
		t.Errorf("message %q, want %q", got, want)
	}
	hello := h.c.firstHello()
	if hello.GetKind() != agentv1.Kind_KIND_PHONEHOME || hello.GetIdentity() != testMachineID || hello.GetCredential().GetToken() != testToken {
		t.Errorf("hello kind %s identity %q: want phonehome, %q, with the machine's token", hello.GetKind(), hello.GetIdentity(), testMachineID)
	}
	waitFor(t, "allocation remembered", func() bool { return h.remembered("alloc-1") })
	h.settle(p, 1)
	stop()

	// A restart (service restart, reboot from disk) with the same state.
	p, stop = h.start()
	h.settle(p, 1)
	if n := h.c.count(EventPhonedHome); n != 1 {
		t.Fatalf("after restart: Phoned Home sent %d times for one allocation, want 1", n)
	}

	// A new allocation id phones home again, once.
	h.c.push(t, machineDoc(2, "alloc-2", 1))
	waitFor(t, "Phoned Home for alloc-2", func() bool { return h.c.count(EventPhonedHome) == 2 })
	h.c.push(t, machineDoc(3, "alloc-2", 1))
	h.settle(p, 3)
	msgs := h.c.messages(EventPhonedHome)
	if len(msgs) != 2 || !strings.HasPrefix(msgs[1], "allocation alloc-2,") {
		t.Fatalf("Phoned Home messages %q, want one for alloc-1 and one for alloc-2", msgs)
	}
	// No allocation (freed, waiting for the reboot order): nothing to say.
	h.c.push(t, machineDoc(4, "", 1))
	h.settle(p, 4)
	if n := h.c.count(EventPhonedHome); n != 2 {
		t.Fatalf("Phoned Home sent %d times, want 2", n)
	}
	if n := h.reboot.calls.Load(); n != 0 {
		t.Fatalf("%d reboots without a reboot order", n)
	}
	stop()
	h.checkTokenNotLogged()
}

// TestPhonedHomeFromInstallRecord: a first start that gets no document
// still phones home, for the allocation the installer recorded, and the
// document that follows does not repeat it.
func TestPhonedHomeFromInstallRecord(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.install = filepath.Join(t.TempDir(), "install.json")
	b, err := protojson.Marshal(&agentv1.MachineAllocation{Id: "alloc-1", Hostname: "web-0", ProjectId: "p"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.install, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p, _ := h.start()
	waitFor(t, "Phoned Home without a document", func() bool { return h.c.count(EventPhonedHome) == 1 })
	if p.Agent().Applied() != 0 {
		t.Fatalf("a document was applied; the test needs none")
	}
	h.c.push(t, machineDoc(1, "alloc-1", 0))
	h.settle(p, 1)
	if n := h.c.count(EventPhonedHome); n != 1 {
		t.Fatalf("Phoned Home sent %d times, want 1", n)
	}
	h.checkTokenNotLogged()
}

// slowPlannedReboot delays sending the report that carries "Planned
// Reboot", the way a slow link would: a reboot that does not wait for it
// happens while it is still on its way.
func slowPlannedReboot(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	s, err := streamer(ctx, desc, cc, method, opts...)
	return slowStream{s}, err
}

type slowStream struct{ grpc.ClientStream }

func (s slowStream) SendMsg(m any) error {
	if r, ok := m.(*agentv1.SyncRequest); ok {
		for _, e := range r.GetReport().GetEvents() {
			if e.GetType() == EventPlannedReboot {
				time.Sleep(300 * time.Millisecond)
			}
		}
	}
	return s.ClientStream.SendMsg(m)
}

func TestRebootGeneration(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.dialOpts = []grpc.DialOption{grpc.WithStreamInterceptor(slowPlannedReboot)}
	// The first document's generation is the baseline, however large: a
	// freshly installed machine must not reboot for an old order.
	h.c.push(t, machineDoc(1, "alloc-1", 5))
	p, stop := h.start()
	h.settle(p, 1)
	h.c.push(t, machineDoc(2, "alloc-1", 5))
	h.settle(p, 2)
	if n := h.reboot.calls.Load(); n != 0 {
		t.Fatalf("%d reboots for the baseline generation", n)
	}

	h.c.push(t, machineDoc(3, "alloc-1", 6))
	waitFor(t, "reboot", func() bool { return h.reboot.calls.Load() == 1 })
	// The stream was closed for the reboot: Run ends, as the process would.
	stop()
	if n, pr := h.reboot.calls.Load(), h.c.count(EventPlannedReboot); n != 1 || pr != 1 {
		t.Fatalf("%d reboots and %d Planned Reboot events for one bump, want 1 and 1", n, pr)
	}
	h.reboot.mu.Lock()
	if !h.reboot.flushed[0] {
		t.Errorf("the machine rebooted before Planned Reboot went out")
	}
	h.reboot.mu.Unlock()
	h.c.push(t, machineDoc(4, "alloc-1", 6))

	// Back from disk with the same state: the generation is done.
	p, stop = h.start()
	h.settle(p, 4)
	if n := h.reboot.calls.Load(); n != 1 {
		t.Fatalf("%d reboots after restart, want still 1", n)
	}
	// Reinstall: a new allocation and a reboot order in one document. The
	// machine reboots and does not phone home for what it has not installed.
	h.c.push(t, machineDoc(5, "alloc-2", 8))
	waitFor(t, "second reboot", func() bool { return h.reboot.calls.Load() == 2 })
	stop()
	if n := h.c.count(EventPhonedHome); n != 1 {
		t.Fatalf("Phoned Home sent %d times, want 1 (only alloc-1)", n)
	}
	msgs := h.c.messages(EventPlannedReboot)
	if len(msgs) != 2 || !strings.Contains(msgs[1], "generation 8") {
		t.Fatalf("Planned Reboot messages %q", msgs)
	}
	stop()
	h.checkTokenNotLogged()
}

// TestRebootBaselineFromInstallRecord: a free ordered between install and
// the first contact still reboots when the installer recorded the
// generation it installed at.
func TestRebootBaselineFromInstallRecord(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.install = filepath.Join(t.TempDir(), "install.json")
	b, err := protojson.Marshal(&agentv1.MachineDocument{MachineId: testMachineID, RebootGeneration: 2, Allocation: &agentv1.MachineAllocation{Id: "alloc-1"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(h.install, b, 0o600); err != nil {
		t.Fatal(err)
	}
	h.c.push(t, machineDoc(1, "", 3))
	h.start()
	waitFor(t, "reboot", func() bool { return h.reboot.calls.Load() == 1 })
	if n := h.c.count(EventPlannedReboot); n != 1 {
		t.Fatalf("%d Planned Reboot events, want 1", n)
	}
}

// TestRebootWhileCentralUnreachable: a reboot order that came before a
// restart (in the runtime's document cache) but was not executed is
// executed although central cannot be reached: the flush is bounded.
func TestRebootWhileCentralUnreachable(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.c.push(t, machineDoc(1, "alloc-1", 6))
	p, stop := h.start()
	h.settle(p, 1)
	stop()
	// The process died after the document with generation 6 was cached
	// and before the reboot was recorded.
	st, err := loadState(h.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	st.RebootGeneration = proto.Uint64(5)
	if err := st.save(h.stateDir); err != nil {
		t.Fatal(err)
	}
	h.centrals = []string{"127.0.0.1:1"}
	h.flush = 100 * time.Millisecond
	h.start()
	waitFor(t, "reboot without central", func() bool { return h.reboot.calls.Load() == 1 })
	if st, err := loadState(h.stateDir); err != nil || st.RebootGeneration == nil || *st.RebootGeneration != 6 {
		t.Fatalf("state after reboot %+v, %v; want generation 6 recorded", st, err)
	}
}

func TestDamagedStateStartsOver(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	if err := os.WriteFile(filepath.Join(h.stateDir, stateFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	h.c.push(t, machineDoc(1, "alloc-1", 7))
	p, _ := h.start()
	h.settle(p, 1)
	if n := h.reboot.calls.Load(); n != 0 {
		t.Fatalf("a damaged state file made the machine reboot %d times", n)
	}
	waitFor(t, "Phoned Home", func() bool { return h.c.count(EventPhonedHome) == 1 })
	if !strings.Contains(h.logs.String(), "damaged") {
		t.Errorf("the damaged state file is not logged")
	}
}

// TestPinnedCA: the TLS configuration trusts the file's CA and nothing else.
func TestPinnedCA(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	conn, err := tls.Dial("tcp", h.c.addr, h.file().TLS())
	if err != nil {
		t.Fatalf("dial with the pinned CA: %v", err)
	}
	conn.Close()
	other := startCentral(t, testToken)
	b, _ := json.Marshal(map[string]any{"machine_id": testMachineID, "centrals": []string{other.addr}, "ca_pem": h.c.caPEM, "token": testToken})
	f, err := ParseFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if conn, err := tls.Dial("tcp", other.addr, f.TLS()); err == nil {
		conn.Close()
		t.Fatal("a server with a certificate of another CA was trusted")
	}
}
