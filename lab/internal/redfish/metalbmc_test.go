package redfish

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"github.com/metalfleet/metalfleet/agents/metalbmc/oob"
	"github.com/metalfleet/metalfleet/lab/internal/vm"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// These tests drive metal-bmc's library (agents/metalbmc/oob) against the
// lab's Redfish BMC over HTTPS: bmclib v2.3.5's gofish provider for power
// and boot, gofish for the facts and the LED. The machine behind the BMC
// is the fake system of this package's tests.

const machineUUID = "5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0001"

// collector keeps what metal-bmc reports.
type collector struct {
	mu     sync.Mutex
	facts  *agentv1.BmcFacts
	events []*agentv1.Event
	n      int
}

func (c *collector) report(f *agentv1.Facts, ev ...*agentv1.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f != nil {
		c.facts = proto.Clone(f.GetBmc()).(*agentv1.BmcFacts)
		c.n++
	}
	c.events = append(c.events, ev...)
}

func (c *collector) snapshot() (*agentv1.BmcFacts, []*agentv1.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return proto.Clone(c.facts).(*agentv1.BmcFacts), append([]*agentv1.Event(nil), c.events...)
}

// running is one metal-bmc run by a test.
type running struct {
	svc    *oob.Service
	col    *collector
	cancel context.CancelFunc
	done   chan struct{}
}

func startBMC(t *testing.T, dir string, doc *agentv1.BmcDocument, tweak func(*oob.Config)) *running {
	t.Helper()
	col := &collector{facts: &agentv1.BmcFacts{}}
	cfg := oob.Config{StateDir: dir, Tick: 20 * time.Millisecond, PollInterval: 100 * time.Millisecond,
		MinBackoff: 100 * time.Millisecond, MaxBackoff: time.Second, Timeout: 10 * time.Second, Report: col.report}
	if tweak != nil {
		tweak(&cfg)
	}
	svc, err := oob.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.Apply(context.Background(), &agentv1.Desired{Revision: 1, Bmc: doc}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{svc: svc, col: col, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		if err := svc.Run(ctx); err != nil {
			t.Error(err)
		}
	}()
	t.Cleanup(r.stop)
	return r
}

func (r *running) stop() {
	r.cancel()
	<-r.done
	_ = r.svc.Close()
}

// eventually polls cond for up to 20 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func labBMC(t *testing.T, sys System) (*Server, string) {
	t.Helper()
	s := newServer(t, sys, nil)
	ts := httptest.NewTLSServer(s)
	t.Cleanup(ts.Close)
	return s, strings.TrimPrefix(ts.URL, "https://")
}

func bmcDoc(addr, password string, machines ...*agentv1.BmcMachine) *agentv1.BmcDocument {
	return &agentv1.BmcDocument{
		PartitionId: "lab",
		Credentials: &agentv1.BmcCredentials{User: user, Password: password},
		StaticBmcs:  []*agentv1.BmcEndpoint{{Address: addr, Protocol: agentv1.BmcProtocol_BMC_PROTOCOL_REDFISH}},
		Machines:    machines,
	}
}

func result(f *agentv1.BmcFacts, kind agentv1.BmcIntentKind) *agentv1.BmcIntentResult {
	for _, m := range f.GetMachines() {
		for _, r := range m.GetResults() {
			if m.GetMachineId() == machineUUID && r.GetKind() == kind {
				return r
			}
		}
	}
	return nil
}

func TestMetalBMCFacts(t *testing.T) {
	f := newFake()
	_, addr := labBMC(t, f)
	r := startBMC(t, t.TempDir(), bmcDoc(addr, pass), nil)
	eventually(t, "the BMC's facts", func() bool {
		facts, _ := r.col.snapshot()
		return len(facts.GetBmcs()) == 1 && facts.GetBmcs()[0].GetReachable()
	})
	facts, _ := r.col.snapshot()
	b := facts.GetBmcs()[0]
	if b.GetMachineUuid() != machineUUID || b.GetVendor() != "Metalfleet" || b.GetModel() != "QEMU lab machine" || b.GetSerial() != "SN1" ||
		b.GetBiosVersion() != "metal-lab-bios 1.0" || b.GetBmcVersion() != "metal-lab" || b.GetPowerState() != agentv1.BmcPowerState_BMC_POWER_STATE_OFF ||
		b.GetPowerWatts() != wattsOff || len(b.GetPowerSupplies()) != 2 || b.GetPowerSupplies()[0].GetHealth() != "OK" ||
		b.GetIdentifyLed() != agentv1.BmcLed_BMC_LED_OFF || b.GetSource() != "static" || b.GetLastSeen() == nil {
		t.Errorf("fact = %v", b)
	}
	// A change on the machine is reported by the next poll.
	if err := f.PowerOn(context.Background()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "power on reported", func() bool {
		facts, _ := r.col.snapshot()
		return facts.GetBmcs()[0].GetPowerState() == agentv1.BmcPowerState_BMC_POWER_STATE_ON && facts.GetBmcs()[0].GetPowerWatts() == wattsOn
	})
}

// TestMetalBMCIntents runs every intent once through bmclib and checks
// that the BMC's machine changed, that a document sent again changes
// nothing, and that a restart of metal-bmc repeats nothing.
func TestMetalBMCIntents(t *testing.T) {
	f := newFake()
	s, addr := labBMC(t, f)
	firmware := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("firmware image")) }))
	defer firmware.Close()
	dir := t.TempDir()

	m := &agentv1.BmcMachine{MachineId: machineUUID}
	r := startBMC(t, dir, bmcDoc(addr, pass, m), nil)
	apply := func(m *agentv1.BmcMachine) {
		t.Helper()
		if err := r.svc.Apply(context.Background(), &agentv1.Desired{Revision: 2, Bmc: bmcDoc(addr, pass, m)}); err != nil {
			t.Fatal(err)
		}
	}
	waitResult := func(kind agentv1.BmcIntentKind, gen uint64) *agentv1.BmcIntentResult {
		t.Helper()
		var res *agentv1.BmcIntentResult
		eventually(t, kind.String()+" generation result", func() bool {
			facts, _ := r.col.snapshot()
			res = result(facts, kind)
			return res.GetGeneration() == gen && res.GetOutcome() != agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_PENDING
		})
		return res
	}
	ok := agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED
	power := func(gen uint64, a agentv1.BmcPowerAction) {
		m.Power = &agentv1.BmcPowerIntent{Generation: gen, Action: a}
	}

	steps := []struct {
		name   string
		change func()
		kind   agentv1.BmcIntentKind
		gen    uint64
		want   agentv1.BmcIntentOutcome
		check  func() bool
		errHas string
	}{
		{"power on", func() { power(1, agentv1.BmcPowerAction_BMC_POWER_ACTION_ON) }, agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, 1, ok,
			func() bool { st, _, _, _ := f.snapshot(); return st == vm.On }, ""},
		{"boot pxe", func() {
			m.Boot = &agentv1.BmcBootIntent{Generation: 1, Device: agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE}
		}, agentv1.BmcIntentKind_BMC_INTENT_KIND_BOOT, 1, ok,
			func() bool { _, d, p, _ := f.snapshot(); return d == vm.BootPXE && !p }, ""},
		{"boot disk", func() {
			m.Boot = &agentv1.BmcBootIntent{Generation: 2, Device: agentv1.BmcBootDevice_BMC_BOOT_DEVICE_DISK}
		}, agentv1.BmcIntentKind_BMC_INTENT_KIND_BOOT, 2, ok,
			func() bool { _, d, _, _ := f.snapshot(); return d == vm.BootDisk }, ""},
		// For good, as central sets the disk after an install.
		{"boot disk persistent", func() {
			m.Boot = &agentv1.BmcBootIntent{Generation: 3, Device: agentv1.BmcBootDevice_BMC_BOOT_DEVICE_DISK, Persistent: true}
		}, agentv1.BmcIntentKind_BMC_INTENT_KIND_BOOT, 3, ok,
			func() bool { _, d, p, _ := f.snapshot(); return d == vm.BootDisk && p }, ""},
		{"identify on", func() { m.Identify = &agentv1.BmcIdentifyIntent{Generation: 1, On: true} }, agentv1.BmcIntentKind_BMC_INTENT_KIND_IDENTIFY, 1, ok,
			func() bool { return s.indicatorLED() == "Lit" }, ""},
		{"identify off", func() { m.Identify = &agentv1.BmcIdentifyIntent{Generation: 2} }, agentv1.BmcIntentKind_BMC_INTENT_KIND_IDENTIFY, 2, ok,
			func() bool { return s.indicatorLED() == "Off" }, ""},
		// Reset is ForceRestart, cycle PowerCycle (bmclib's words swapped).
		{"reset", func() { power(2, agentv1.BmcPowerAction_BMC_POWER_ACTION_RESET) }, agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, 2, ok,
			func() bool { _, _, _, c := f.snapshot(); return c[len(c)-1] == "Reset" }, ""},
		{"cycle", func() { power(3, agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE) }, agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, 3, ok,
			func() bool { _, _, _, c := f.snapshot(); return c[len(c)-1] == "PowerCycle" }, ""},
		{"power off", func() { power(4, agentv1.BmcPowerAction_BMC_POWER_ACTION_OFF) }, agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, 4, ok,
			func() bool { st, _, _, _ := f.snapshot(); return st == vm.Off }, ""},
		// A reset or cycle of a machine that is off powers it on: what a
		// free of a switched-off machine needs (the BMC refuses a reset
		// while off).
		{"reset while off", func() { power(5, agentv1.BmcPowerAction_BMC_POWER_ACTION_RESET) }, agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, 5, ok,
			func() bool { st, _, _, c := f.snapshot(); return st == vm.On && c[len(c)-1] == "PowerOn" }, ""},
		{"power off again", func() { power(6, agentv1.BmcPowerAction_BMC_POWER_ACTION_OFF) }, agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, 6, ok,
			func() bool { st, _, _, _ := f.snapshot(); return st == vm.Off }, ""},
		{"cycle while off", func() { power(7, agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE) }, agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, 7, ok,
			func() bool { st, _, _, c := f.snapshot(); return st == vm.On && c[len(c)-1] == "PowerOn" }, ""},
		// The lab's machines boot only from network or disk: the BMC
		// refuses BiosSetup, and the result says so.
		{"boot bios", func() {
			m.Boot = &agentv1.BmcBootIntent{Generation: 4, Device: agentv1.BmcBootDevice_BMC_BOOT_DEVICE_BIOS}
		}, agentv1.BmcIntentKind_BMC_INTENT_KIND_BOOT, 4,
			agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_FAILED, nil, "boot bios"},
		// bmclib v2.3.5's Redfish provider installs no firmware.
		{"firmware", func() {
			m.Firmware = &agentv1.BmcFirmwareIntent{Generation: 1, Component: agentv1.BmcFirmwareComponent_BMC_FIRMWARE_COMPONENT_BIOS, Url: firmware.URL + "/bios.bin"}
		}, agentv1.BmcIntentKind_BMC_INTENT_KIND_FIRMWARE, 1, agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_FAILED, nil, "not supported"},
	}
	for _, st := range steps {
		st.change()
		apply(m)
		res := waitResult(st.kind, st.gen)
		if res.GetOutcome() != st.want || (st.errHas != "" && !strings.Contains(res.GetMessage(), st.errHas)) {
			t.Fatalf("%s: result %v", st.name, res)
		}
		if st.check != nil && !st.check() {
			st, dev, p, calls := f.snapshot()
			t.Fatalf("%s: machine %s boot %q/%v calls %q, LED %s", st, st, dev, p, calls, s.indicatorLED())
		}
	}
	_, _, _, calls := f.snapshot()
	_, events := r.col.snapshot()
	if len(events) != len(steps) {
		t.Errorf("%d events for %d intents", len(events), len(steps))
	}
	for _, e := range events {
		if e.GetSubject() != machineUUID || !strings.HasPrefix(e.GetType(), "BMC ") {
			t.Errorf("event %v", e)
		}
	}

	// The same document again, and a restart with it: nothing repeats.
	apply(m)
	time.Sleep(300 * time.Millisecond)
	r.stop()
	r2 := startBMC(t, dir, bmcDoc(addr, pass, m), nil)
	eventually(t, "results after the restart", func() bool {
		facts, _ := r2.col.snapshot()
		return result(facts, agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER).GetGeneration() == 7 && len(facts.GetBmcs()) == 1 && facts.GetBmcs()[0].GetReachable()
	})
	time.Sleep(300 * time.Millisecond)
	if _, _, _, again := f.snapshot(); len(again) != len(calls) {
		t.Errorf("calls after a resend and a restart: %q, before %q", again[len(calls):], calls)
	}
	facts, _ := r2.col.snapshot()
	if res := result(facts, agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER); res.GetOutcome() != ok {
		t.Errorf("power result after restart: %v", res)
	}
	if _, events := r2.col.snapshot(); len(events) != 0 {
		t.Errorf("events after restart: %v", events)
	}
}

// gatedSystem holds PowerCycle until released: metal-bmc is stopped while
// the BMC is still acting, between "started" and "done" in its journal.
type gatedSystem struct {
	*fakeSystem
	entered chan struct{}
	release chan struct{}
}

func (g *gatedSystem) PowerCycle(ctx context.Context) error {
	close(g.entered)
	<-g.release
	return g.fakeSystem.PowerCycle(ctx)
}

// TestMetalBMCExactlyOnceAcrossRestart stops metal-bmc while a cycle
// (which must not run twice) is under way: the journal says "started";
// the next metal-bmc does not cycle again and reports the generation as
// interrupted. A power-on under way is repeated instead (twice is once).
func TestMetalBMCExactlyOnceAcrossRestart(t *testing.T) {
	f := newFake()
	if err := f.PowerOn(context.Background()); err != nil {
		t.Fatal(err)
	}
	g := &gatedSystem{fakeSystem: f, entered: make(chan struct{}), release: make(chan struct{})}
	_, addr := labBMC(t, g)
	dir := t.TempDir()
	m := &agentv1.BmcMachine{MachineId: machineUUID, Power: &agentv1.BmcPowerIntent{Generation: 7, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE}}
	// A short call timeout: stopping waits for the call under way, which
	// the gated BMC holds until it times out.
	r := startBMC(t, dir, bmcDoc(addr, pass, m), func(c *oob.Config) { c.Timeout = time.Second })
	<-g.entered
	j, err := os.ReadFile(filepath.Join(dir, oob.JournalFile))
	if err != nil || !strings.Contains(string(j), `"generation":7,"phase":"started"`) {
		t.Fatalf("journal while the reset is under way: %s, %v", j, err)
	}
	// The BMC still acts: the journal keeps "started". The stop takes
	// ~10 s: when its PowerCycle call fails, bmclib falls back to off,
	// waits up to 10 s (not bounded by ctx) and powers on, and Run waits
	// for calls under way.
	r.stop()
	close(g.release)
	if j, _ := os.ReadFile(filepath.Join(dir, oob.JournalFile)); strings.Contains(string(j), `"phase":"done"`) {
		t.Fatalf("journal after the stop: %s", j)
	}

	r2 := startBMC(t, dir, bmcDoc(addr, pass, m), nil)
	var res *agentv1.BmcIntentResult
	eventually(t, "interrupted result", func() bool {
		facts, _ := r2.col.snapshot()
		res = result(facts, agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER)
		return res.GetOutcome() == agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_INTERRUPTED
	})
	if res.GetGeneration() != 7 || !strings.Contains(res.GetMessage(), "not repeated") {
		t.Errorf("result %v", res)
	}
	time.Sleep(300 * time.Millisecond)
	if _, _, _, calls := f.snapshot(); strings.Count(strings.Join(calls, ","), "PowerCycle") != 1 {
		t.Errorf("calls %q: want exactly one PowerCycle", calls)
	}
	r2.stop()

	// A journal that says a power-off was started: off is a state, so
	// the next metal-bmc sends it (again); the machine ends up off once.
	jf := filepath.Join(dir, oob.JournalFile)
	if err := os.WriteFile(jf, []byte(`{"machine":"`+machineUUID+`","kind":"power","generation":8,"phase":"started","time":"2026-01-01T00:00:00Z"}`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	m.Power = &agentv1.BmcPowerIntent{Generation: 8, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_OFF}
	r3 := startBMC(t, dir, bmcDoc(addr, pass, m), nil)
	eventually(t, "off repeated", func() bool {
		facts, _ := r3.col.snapshot()
		return result(facts, agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER).GetOutcome() == agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED
	})
	if st, _, _, _ := f.snapshot(); st != vm.Off {
		t.Errorf("power %s after the repeated off", st)
	}
}

func TestMetalBMCWrongCredentials(t *testing.T) {
	f := newFake()
	_, addr := labBMC(t, f)
	m := &agentv1.BmcMachine{MachineId: machineUUID, Power: &agentv1.BmcPowerIntent{Generation: 1, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_ON}}
	r := startBMC(t, t.TempDir(), bmcDoc(addr, "not-the-password", m), nil)
	eventually(t, "an error fact", func() bool {
		facts, _ := r.col.snapshot()
		return len(facts.GetBmcs()) == 1 && facts.GetBmcs()[0].GetLastError() != ""
	})
	facts, _ := r.col.snapshot()
	if b := facts.GetBmcs()[0]; b.GetReachable() || !strings.Contains(b.GetLastError(), "refused the credentials") || strings.Contains(b.GetLastError(), "not-the-password") {
		t.Errorf("fact %v: want a clear credentials error without the password", b)
	}
	// The intent waits: its machine's BMC was never read, so it is not
	// known which BMC it is.
	if res := result(facts, agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER); res.GetOutcome() != agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_PENDING {
		t.Errorf("intent %v", res)
	}
	if st, _, _, calls := f.snapshot(); st != vm.Off || len(calls) != 0 {
		t.Errorf("machine %s calls %q", st, calls)
	}
}

// TestMetalBMCUnreachableBackoff counts the connections metal-bmc makes
// to a BMC that hangs up at once: they space out exponentially instead of
// hammering it every tick.
func TestMetalBMCUnreachableBackoff(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	var conns atomic.Int64
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			c.Close()
		}
	}()
	r := startBMC(t, t.TempDir(), bmcDoc(lis.Addr().String(), pass), func(c *oob.Config) {
		c.MinBackoff, c.MaxBackoff, c.Tick = 50*time.Millisecond, 400*time.Millisecond, 5*time.Millisecond
	})
	time.Sleep(2 * time.Second)
	facts, _ := r.col.snapshot()
	if len(facts.GetBmcs()) != 1 {
		t.Fatalf("facts %v", facts)
	}
	b := facts.GetBmcs()[0]
	if b.GetReachable() || b.GetLastError() == "" || b.GetFailures() < 3 || b.GetNextPoll() == nil {
		t.Errorf("fact %v", b)
	}
	// Without backoff a 5 ms tick would poll ~400 times in 2 s; with it
	// (25-50, 50-100, 100-200, then 200-400 ms) it is at most ~12 polls.
	// A poll may take a few connections (HTTP retries).
	polls := b.GetFailures()
	if polls > 14 || conns.Load() > int64(4*polls) {
		t.Errorf("%d polls, %d connections in 2 s", polls, conns.Load())
	}
	t.Logf("%d polls, %d connections in 2 s; last error %q", polls, conns.Load(), b.GetLastError())
}

// TestMetalBMCKilledMidIntent is the kill the issue asks for: metal-bmc
// runs in a child process (this test binary again) and is killed with
// SIGKILL while the BMC executes a cycle, between "started" and "done" in
// its journal. The next metal-bmc neither cycles again nor forgets the
// generation.
func TestMetalBMCKilledMidIntent(t *testing.T) {
	if os.Getenv("METALBMC_CHILD_DIR") != "" {
		return // the child's part is TestMetalBMCChild
	}
	f := newFake()
	if err := f.PowerOn(context.Background()); err != nil {
		t.Fatal(err)
	}
	g := &gatedSystem{fakeSystem: f, entered: make(chan struct{}), release: make(chan struct{})}
	_, addr := labBMC(t, g)
	dir := t.TempDir()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	child := exec.Command(exe, "-test.run=^TestMetalBMCChild$", "-test.count=1")
	child.Env = append(os.Environ(), "METALBMC_CHILD_DIR="+dir, "METALBMC_CHILD_ADDR="+addr)
	child.Stdout, child.Stderr = os.Stderr, os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-g.entered:
	case <-time.After(30 * time.Second):
		_ = child.Process.Kill()
		t.Fatal("the child never reached the BMC")
	}
	j, _ := os.ReadFile(filepath.Join(dir, oob.JournalFile))
	if !strings.Contains(string(j), `"generation":9,"phase":"started"`) {
		t.Errorf("journal before the kill: %s", j)
	}
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	close(g.release)

	m := &agentv1.BmcMachine{MachineId: machineUUID, Power: &agentv1.BmcPowerIntent{Generation: 9, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE}}
	r := startBMC(t, dir, bmcDoc(addr, pass, m), nil)
	var res *agentv1.BmcIntentResult
	eventually(t, "interrupted result", func() bool {
		facts, _ := r.col.snapshot()
		res = result(facts, agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER)
		return res.GetOutcome() == agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_INTERRUPTED
	})
	time.Sleep(300 * time.Millisecond)
	if _, _, _, calls := f.snapshot(); strings.Count(strings.Join(calls, ","), "PowerCycle") != 1 {
		t.Errorf("calls %q: want exactly one PowerCycle", calls)
	}
}

// TestMetalBMCChild is the child of TestMetalBMCKilledMidIntent: a
// metal-bmc that cycles the machine until it is killed.
func TestMetalBMCChild(t *testing.T) {
	dir, addr := os.Getenv("METALBMC_CHILD_DIR"), os.Getenv("METALBMC_CHILD_ADDR")
	if dir == "" {
		t.Skip("run by TestMetalBMCKilledMidIntent")
	}
	m := &agentv1.BmcMachine{MachineId: machineUUID, Power: &agentv1.BmcPowerIntent{Generation: 9, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE}}
	startBMC(t, dir, bmcDoc(addr, pass, m), nil)
	time.Sleep(time.Minute) // killed long before
}

// TestMetalBMCSessions: with --redfish-sessions metal-bmc logs in with a
// session per call and logs out again: the BMC holds no session after
// polls and an intent (a BMC holds only a few).
func TestMetalBMCSessions(t *testing.T) {
	f := newFake()
	reg := prometheus.NewRegistry()
	s := newServer(t, f, reg)
	ts := httptest.NewTLSServer(s)
	defer ts.Close()
	addr := strings.TrimPrefix(ts.URL, "https://")
	m := &agentv1.BmcMachine{MachineId: machineUUID, Power: &agentv1.BmcPowerIntent{Generation: 1, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_ON}}
	r := startBMC(t, t.TempDir(), bmcDoc(addr, pass, m), func(c *oob.Config) { c.RedfishSessions = true })
	eventually(t, "power on through a session", func() bool {
		facts, _ := r.col.snapshot()
		return result(facts, agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER).GetOutcome() == agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED
	})
	if st, _, _, _ := f.snapshot(); st != vm.On {
		t.Errorf("power %s", st)
	}
	r.stop()
	s.mu.Lock()
	n := len(s.sessions)
	s.mu.Unlock()
	if n != 0 {
		t.Errorf("%d sessions left on the BMC", n)
	}
	logins, logouts := 0.0, 0.0
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "metalfleet_lab_bmc_requests_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range m.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			switch {
			case l["method"] == "POST" && l["resource"] == "sessions" && l["code"] == "201":
				logins += m.GetCounter().GetValue()
			case l["method"] == "DELETE" && l["resource"] == "session":
				logouts += m.GetCounter().GetValue()
			}
		}
	}
	if logins == 0 || logins != logouts {
		t.Errorf("%v logins, %v logouts", logins, logouts)
	}
}

// TestMetalBMCSSHPort: metal-bmc reads the port of a Redfish BMC's SSH
// serial console from the BMC's NetworkProtocol, as real BMCs name it;
// a BMC without SSH says nothing, and metal-bmc's default holds; a BMC
// that cannot be reached is an error.
func TestMetalBMCSSHPort(t *testing.T) {
	for _, tc := range []struct {
		name string
		port int
	}{{"an SSH console on 2222", 2222}, {"no SSH console", 0}} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(Config{ID: "1", UUID: machineUUID, Name: "m1", User: user, Password: pass, SSHPort: tc.port}, newFake())
			if err != nil {
				t.Fatal(err)
			}
			ts := httptest.NewTLSServer(s)
			t.Cleanup(ts.Close)
			addr := strings.TrimPrefix(ts.URL, "https://")
			r := startBMC(t, t.TempDir(), bmcDoc(addr, pass), nil)
			got, err := r.svc.SSHPort(context.Background(), addr)
			if err != nil || got != tc.port {
				t.Fatalf("SSHPort = %d, %v; want %d", got, err, tc.port)
			}
		})
	}
	r := startBMC(t, t.TempDir(), bmcDoc("127.0.0.1:1", pass), func(c *oob.Config) { c.Timeout = 2 * time.Second })
	if _, err := r.svc.SSHPort(context.Background(), "127.0.0.1:1"); err == nil {
		t.Fatal("SSHPort of a BMC nobody serves: no error")
	}
}
