package oob

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/driver"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// The tests against a real BMC are in lab/internal/redfish (the lab's
// Redfish BMC) and ipmi_test.go (OpenIPMI's ipmi_sim). These test the
// service's own rules with a driver that counts.

const uuid1 = "11111111-2222-3333-4444-555555555555"

func TestParseDocument(t *testing.T) {
	ok := func() *agentv1.BmcDocument {
		return &agentv1.BmcDocument{
			Credentials: &agentv1.BmcCredentials{User: "admin", Password: "secret"},
			StaticBmcs:  []*agentv1.BmcEndpoint{{Address: "10.0.0.1"}},
			Machines: []*agentv1.BmcMachine{{MachineId: uuid1,
				Power:    &agentv1.BmcPowerIntent{Generation: 1, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE},
				Firmware: &agentv1.BmcFirmwareIntent{Generation: 1, Component: agentv1.BmcFirmwareComponent_BMC_FIRMWARE_COMPONENT_BMC, Url: "https://fw.example/bmc.bin"}}},
		}
	}
	if _, err := parseDocument(ok()); err != nil {
		t.Fatal(err)
	}
	if d, err := parseDocument(nil); err != nil || len(d.machines) != 0 {
		t.Errorf("nil document: %v, %v", d, err)
	}
	for _, tc := range []struct {
		name   string
		break_ func(*agentv1.BmcDocument)
		want   string
	}{
		{"password with a newline", func(d *agentv1.BmcDocument) { d.Credentials.Password = "a\nb" }, "bmc.credentials.password: contains"},
		{"long user", func(d *agentv1.BmcDocument) { d.Credentials.User = strings.Repeat("u", 300) }, "bmc.credentials.user: longer"},
		{"bad static address", func(d *agentv1.BmcDocument) { d.StaticBmcs[0].Address = "10.0.0.1:70000" }, "bmc.static_bmcs[0]"},
		{"unknown protocol", func(d *agentv1.BmcDocument) { d.StaticBmcs[0].Protocol = 9 }, "protocol 9"},
		{"machine id not a uuid", func(d *agentv1.BmcDocument) { d.Machines[0].MachineId = "m1" }, "bmc.machines[0].machine_id"},
		{"machine twice", func(d *agentv1.BmcDocument) {
			d.Machines = append(d.Machines, &agentv1.BmcMachine{MachineId: strings.ToUpper(uuid1)})
		}, "listed twice"},
		{"unknown power action", func(d *agentv1.BmcDocument) { d.Machines[0].Power.Action = 42 }, "bmc.machines[0].power.action"},
		{"unspecified power action", func(d *agentv1.BmcDocument) { d.Machines[0].Power.Action = 0 }, "bmc.machines[0].power.action"},
		{"unspecified boot device", func(d *agentv1.BmcDocument) { d.Machines[0].Boot = &agentv1.BmcBootIntent{Generation: 1} }, "bmc.machines[0].boot.device"},
		{"firmware file url", func(d *agentv1.BmcDocument) { d.Machines[0].Firmware.Url = "file:///etc/shadow" }, "bmc.machines[0].firmware.url"},
		{"firmware url with credentials", func(d *agentv1.BmcDocument) { d.Machines[0].Firmware.Url = "https://u:p@fw.example/x" }, "credentials in the URL"},
		{"firmware bad sha", func(d *agentv1.BmcDocument) { d.Machines[0].Firmware.Sha256 = "ABC" }, "firmware.sha256"},
		{"bad machine bmc", func(d *agentv1.BmcDocument) { d.Machines[0].Bmc = &agentv1.BmcEndpoint{Address: "x y"} }, "bmc.machines[0].bmc"},
		{"poll interval", func(d *agentv1.BmcDocument) { d.PollInterval = durationpb.New(time.Millisecond) }, "bmc.poll_interval"},
		{"lease cidr", func(d *agentv1.BmcDocument) { d.LeaseCidrs = []string{"10.0.0.0/33"} }, "bmc.lease_cidrs[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := ok()
			tc.break_(d)
			_, err := parseDocument(d)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("the error shows the password: %v", err)
			}
		})
	}
	// An intent with generation 0 is not an intent, whatever it holds.
	d := ok()
	d.Machines[0].Power = &agentv1.BmcPowerIntent{Action: 42}
	if _, err := parseDocument(d); err != nil {
		t.Errorf("generation 0: %v", err)
	}
}

// countingDriver answers for any number of BMCs, each address one
// machine (uuid derived from the address), and counts what it is asked.
type countingDriver struct {
	mu              sync.Mutex
	polls, inFlight int
	maxInFlight     int
	actions         []string
	hold            time.Duration
	down            map[string]bool
}

func addrUUID(addr string) string {
	var n int
	fmt.Sscanf(strings.TrimPrefix(addr, "10.0.0."), "%d", &n)
	return fmt.Sprintf("00000000-0000-0000-0000-%012d", n)
}

func (d *countingDriver) Facts(ctx context.Context, ep driver.Endpoint, _ driver.Creds) (driver.Facts, error) {
	d.mu.Lock()
	d.polls++
	d.inFlight++
	d.maxInFlight = max(d.maxInFlight, d.inFlight)
	down := d.down[ep.Address]
	d.mu.Unlock()
	time.Sleep(d.hold)
	d.mu.Lock()
	d.inFlight--
	d.mu.Unlock()
	if down {
		return driver.Facts{}, errors.New("connection refused")
	}
	return driver.Facts{UUID: addrUUID(ep.Address), Power: agentv1.BmcPowerState_BMC_POWER_STATE_ON}, nil
}

func (d *countingDriver) act(s string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.actions = append(d.actions, s)
	return nil
}

func (d *countingDriver) Power(_ context.Context, ep driver.Endpoint, _ driver.Creds, a agentv1.BmcPowerAction) error {
	return d.act(ep.Address + " " + a.String())
}
func (d *countingDriver) Boot(_ context.Context, ep driver.Endpoint, _ driver.Creds, b agentv1.BmcBootDevice, _ bool) error {
	return d.act(ep.Address + " " + b.String())
}
func (d *countingDriver) Identify(_ context.Context, ep driver.Endpoint, _ driver.Creds, on bool) error {
	return d.act(fmt.Sprintf("%s identify %v", ep.Address, on))
}
func (d *countingDriver) Firmware(_ context.Context, ep driver.Endpoint, _ driver.Creds, c agentv1.BmcFirmwareComponent, r io.ReadSeeker) error {
	b, _ := io.ReadAll(r)
	return d.act(fmt.Sprintf("%s %s %s", ep.Address, c, b))
}

func (d *countingDriver) snapshot() (int, int, []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.polls, d.maxInFlight, append([]string(nil), d.actions...)
}

func runService(t *testing.T, dir string, drv driver.Driver, tweak func(*Config)) (*Service, func()) {
	t.Helper()
	cfg := Config{StateDir: dir, Tick: 5 * time.Millisecond, PollInterval: time.Hour, MinBackoff: time.Hour, Report: func(*agentv1.Facts, ...*agentv1.Event) {}, driver: drv}
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx) }()
	stop := func() { cancel(); <-done; _ = s.Close() }
	return s, stop
}

func wait(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestParallelismBounded polls 40 BMCs with Parallel 4: all are read,
// never more than 4 at once.
func TestParallelismBounded(t *testing.T) {
	drv := &countingDriver{hold: 10 * time.Millisecond}
	doc := &agentv1.BmcDocument{}
	for i := 1; i <= 40; i++ {
		doc.StaticBmcs = append(doc.StaticBmcs, &agentv1.BmcEndpoint{Address: fmt.Sprintf("10.0.0.%d", i)})
	}
	s, stop := runService(t, t.TempDir(), drv, func(c *Config) { c.Parallel = 4 })
	defer stop()
	if err := s.Apply(context.Background(), &agentv1.Desired{Bmc: doc}); err != nil {
		t.Fatal(err)
	}
	wait(t, "40 polls", func() bool { p, _, _ := drv.snapshot(); return p >= 40 })
	if _, maxIn, _ := drv.snapshot(); maxIn > 4 || maxIn < 2 {
		t.Errorf("at most %d polls at once, want 2-4", maxIn)
	}
	wait(t, "40 reachable facts", func() bool {
		n := 0
		for _, b := range s.Facts().GetBmcs() {
			if b.GetReachable() {
				n++
			}
		}
		return n == 40
	})
}

// TestIntentsOncePerGeneration sends the same document many times while
// intents run, in parallel (-race), then restarts the service: every
// generation ran once, boot before power.
func TestIntentsOncePerGeneration(t *testing.T) {
	drv := &countingDriver{}
	dir := t.TempDir()
	doc := &agentv1.BmcDocument{}
	for i := 1; i <= 8; i++ {
		doc.StaticBmcs = append(doc.StaticBmcs, &agentv1.BmcEndpoint{Address: fmt.Sprintf("10.0.0.%d", i)})
		doc.Machines = append(doc.Machines, &agentv1.BmcMachine{MachineId: addrUUID(fmt.Sprintf("10.0.0.%d", i)),
			Power: &agentv1.BmcPowerIntent{Generation: 3, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_RESET},
			Boot:  &agentv1.BmcBootIntent{Generation: 5, Device: agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE}})
	}
	s, stop := runService(t, dir, drv, nil)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 50 {
				if err := s.Apply(context.Background(), &agentv1.Desired{Bmc: doc}); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	wait(t, "16 actions", func() bool { _, _, a := drv.snapshot(); return len(a) >= 16 })
	time.Sleep(50 * time.Millisecond)
	stop()
	s, stop = runService(t, dir, drv, nil)
	defer stop()
	if err := s.Apply(context.Background(), &agentv1.Desired{Bmc: doc}); err != nil {
		t.Fatal(err)
	}
	wait(t, "polls after the restart", func() bool { return len(s.Facts().GetBmcs()) == 8 && s.Facts().GetBmcs()[7].GetReachable() })
	time.Sleep(50 * time.Millisecond)
	_, _, actions := drv.snapshot()
	if len(actions) != 16 {
		t.Fatalf("%d actions: %q", len(actions), actions)
	}
	order := map[string]int{}
	for i, a := range actions {
		if _, dup := order[a]; dup {
			t.Errorf("%q twice", a)
		}
		order[a] = i
	}
	for i := 1; i <= 8; i++ {
		a := fmt.Sprintf("10.0.0.%d", i)
		if order[a+" BMC_BOOT_DEVICE_PXE"] > order[a+" BMC_POWER_ACTION_RESET"] {
			t.Errorf("%s: power before boot: %q", a, actions)
		}
	}
	for _, m := range s.Facts().GetMachines() {
		if len(m.GetResults()) != 2 || m.GetResults()[0].GetOutcome() != agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED {
			t.Errorf("results %v", m)
		}
	}
}

// TestIntentWaitsForUnreachableBMC: an intent for a machine whose BMC
// does not answer is pending with the reason, and runs once it answers.
func TestIntentWaitsForUnreachableBMC(t *testing.T) {
	drv := &countingDriver{down: map[string]bool{"10.0.0.1": true}}
	reg := prometheus.NewRegistry()
	s, stop := runService(t, t.TempDir(), drv, func(c *Config) {
		c.MinBackoff, c.MaxBackoff, c.Metrics = 20*time.Millisecond, 40*time.Millisecond, reg
	})
	defer stop()
	doc := &agentv1.BmcDocument{Machines: []*agentv1.BmcMachine{{MachineId: addrUUID("10.0.0.1"), Bmc: &agentv1.BmcEndpoint{Address: "10.0.0.1"},
		Identify: &agentv1.BmcIdentifyIntent{Generation: 1, On: true}}}}
	if err := s.Apply(context.Background(), &agentv1.Desired{Bmc: doc}); err != nil {
		t.Fatal(err)
	}
	wait(t, "pending", func() bool {
		m := s.Facts().GetMachines()
		return len(m) == 1 && m[0].GetResults()[0].GetOutcome() == agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_PENDING &&
			strings.Contains(m[0].GetResults()[0].GetMessage(), "connection refused")
	})
	wait(t, "the unreachable gauge", func() bool { return gauge(t, reg, "metalfleet_bmc_unreachable") == 1 })
	drv.mu.Lock()
	drv.down = nil
	drv.mu.Unlock()
	wait(t, "done", func() bool {
		m := s.Facts().GetMachines()
		return len(m) == 1 && m[0].GetResults()[0].GetOutcome() == agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED
	})
	if _, _, a := drv.snapshot(); len(a) != 1 {
		t.Errorf("actions %q", a)
	}
	wait(t, "the unreachable gauge back to 0", func() bool { return gauge(t, reg, "metalfleet_bmc_unreachable") == 0 })
	if n := gauge(t, reg, "metalfleet_bmc_targets"); n != 1 {
		t.Errorf("metalfleet_bmc_targets = %v", n)
	}
}

// gauge reads an unlabelled gauge from reg.
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

// TestLeasesDiscovered: BMCs come and go with pixie's lease file.
func TestLeasesDiscovered(t *testing.T) {
	drv := &countingDriver{}
	leases := filepath.Join(t.TempDir(), "leases.json")
	write := func(addrs ...string) {
		var ls []string
		for i, a := range addrs {
			ls = append(ls, fmt.Sprintf(`{"key":"v4:%d","mac":"aa:00:00:00:00:%02x","addr":%q,"expires":%q}`, i, i, a, time.Now().Add(time.Hour).Format(time.RFC3339)))
		}
		if err := os.WriteFile(leases, []byte(`{"version":1,"leases":[`+strings.Join(ls, ",")+`]}`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("10.0.0.1", "10.0.0.2", "192.168.1.1")
	s, stop := runService(t, t.TempDir(), drv, func(c *Config) { c.LeaseFile = leases })
	defer stop()
	if err := s.Apply(context.Background(), &agentv1.Desired{Bmc: &agentv1.BmcDocument{LeaseCidrs: []string{"10.0.0.0/24"}}}); err != nil {
		t.Fatal(err)
	}
	wait(t, "two leased BMCs", func() bool {
		b := s.Facts().GetBmcs()
		return len(b) == 2 && b[0].GetSource() == "lease" && b[0].GetMac() == "aa:00:00:00:00:00" && b[1].GetMachineUuid() == addrUUID("10.0.0.2")
	})
	write("10.0.0.2")
	wait(t, "one leased BMC", func() bool { b := s.Facts().GetBmcs(); return len(b) == 1 && b[0].GetAddress() == "10.0.0.2" })
	// A damaged file keeps what was known.
	if err := os.WriteFile(leases, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	if b := s.Facts().GetBmcs(); len(b) != 1 {
		t.Errorf("after a damaged lease file: %v", b)
	}
}

func TestBackoffGrowsAndIsBounded(t *testing.T) {
	s := &Service{cfg: Config{MinBackoff: time.Second, MaxBackoff: 8 * time.Second}}
	for n, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 10: 8 * time.Second, 1000: 8 * time.Second} {
		for range 20 {
			if d := s.backoff(n); d < want/2 || d > want {
				t.Errorf("backoff(%d) = %v, want %v-%v", n, d, want/2, want)
			}
		}
	}
}

func TestTextFromBMC(t *testing.T) {
	for in, want := range map[string]string{
		"Dell Inc.":              "Dell Inc.",
		"SN\x00123":              "SN123",
		"bad\xffutf8":            "bad\uFFFDutf8",
		"line\nbreak\x1b[31m":    "line break[31m",
		strings.Repeat("é", 200): strings.Repeat("é", 128),
	} {
		if got := text(in, maxText); got != want {
			t.Errorf("text(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestFirmwareImage: the image is downloaded, checked against its sha256
// and bounded in size before anything reaches the BMC.
func TestFirmwareImage(t *testing.T) {
	image := []byte("firmware image v2")
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write(image)
	}))
	defer srv.Close()
	sum := sha256.Sum256(image)
	good := hex.EncodeToString(sum[:])
	for _, tc := range []struct {
		name, path, sha string
		max             int64
		want            agentv1.BmcIntentOutcome
		msg             string
	}{
		{"checked", "/bmc.bin", good, 0, agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED, ""},
		{"unchecked", "/bmc.bin", "", 0, agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED, ""},
		{"wrong sha256", "/bmc.bin", strings.Repeat("0", 64), 0, agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_FAILED, "sha256 mismatch"},
		{"too large", "/bmc.bin", "", 4, agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_FAILED, "larger than 4 bytes"},
		{"not found", "/missing", "", 0, agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_FAILED, "404"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			drv := &countingDriver{}
			s, stop := runService(t, t.TempDir(), drv, func(c *Config) { c.MaxFirmware = tc.max })
			defer stop()
			doc := &agentv1.BmcDocument{Machines: []*agentv1.BmcMachine{{MachineId: addrUUID("10.0.0.1"), Bmc: &agentv1.BmcEndpoint{Address: "10.0.0.1"},
				Firmware: &agentv1.BmcFirmwareIntent{Generation: 1, Component: agentv1.BmcFirmwareComponent_BMC_FIRMWARE_COMPONENT_BMC, Url: srv.URL + tc.path, Sha256: tc.sha}}}}
			if err := s.Apply(context.Background(), &agentv1.Desired{Bmc: doc}); err != nil {
				t.Fatal(err)
			}
			var res *agentv1.BmcIntentResult
			wait(t, "the firmware result", func() bool {
				m := s.Facts().GetMachines()
				if len(m) == 1 && m[0].GetResults()[0].GetOutcome() != agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_PENDING {
					res = m[0].GetResults()[0]
				}
				return res != nil
			})
			if res.GetOutcome() != tc.want || !strings.Contains(res.GetMessage(), tc.msg) {
				t.Fatalf("result %v", res)
			}
			_, _, actions := drv.snapshot()
			sent := len(actions) == 1 && actions[0] == "10.0.0.1 BMC_FIRMWARE_COMPONENT_BMC firmware image v2"
			if sent != (tc.want == agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED) {
				t.Errorf("actions %q", actions)
			}
		})
	}
}
