package e2e

import (
	"context"
	"crypto/tls"
	"math"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/lab/internal/redfish"
	"github.com/metalfleet/metalfleet/lab/internal/vm"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// BenchmarkPowerIntentLatency measures an out-of-band intent end to end
// (BENCHMARKS.md, "Out-of-band control"): from the call `metalctl machine
// power` makes (MachineService.Power) until the machine behind the lab's
// Redfish BMC is told to change its power — through the real metal-central
// with its embedded PostgreSQL, the document it sends, the real metal-bmc
// binary with its defaults, and bmclib's calls to the BMC. "cycle" is one
// cycle per op, "off-on" an off and an on per op, each a sample; between
// samples the benchmark waits, untimed, for metal-bmc's result at central,
// so that every sample starts from an idle metal-bmc.
func BenchmarkPowerIntentLatency(b *testing.B) {
	f := startFleetCentral(b, "")
	ctx := b.Context()
	dir := b.TempDir()
	const user, password = "bench-admin", "bench-secret-1"
	id := uuid.NewString()
	sys := &watchedSystem{power: vm.Off, changes: make(chan powerChange, 16)}
	rf, err := redfish.New(redfish.Config{UUID: id, Name: "m1", User: user, Password: password}, sys)
	if err != nil {
		b.Fatal(err)
	}
	cert, err := redfish.LoadOrCreateCert(filepath.Join(dir, "bmc.crt"), filepath.Join(dir, "bmc.key"), []string{"127.0.0.1"})
	if err != nil {
		b.Fatal(err)
	}
	hs := httptest.NewUnstartedServer(rf)
	hs.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	hs.StartTLS()
	b.Cleanup(hs.Close)
	if _, err := apiv1.NewBMCServiceClient(f.cc).SetSettings(ctx, &apiv1.BMCServiceSetSettingsRequest{Settings: &apiv1.PartitionBMC{
		PartitionId: "p1", User: user, Password: password, StaticBmcs: []*apiv1.PartitionBMCEndpoint{{Address: hs.URL}}}}); err != nil {
		b.Fatal(err)
	}
	startMetalBMC(b, f, "bmc-p1")

	p := &powerBench{id: id, sys: sys, mc: apiv1.NewMachineServiceClient(f.cc), agents: apiv1.NewAgentServiceClient(f.cc)}
	// Central knows the machine once metal-bmc reported its BMC; the
	// first intent (on) also proves the whole path before anything is timed.
	var gen uint64
	waitFor(b, "central to accept an intent for the BMC's machine", func() bool {
		resp, err := p.mc.Power(ctx, &apiv1.MachineServicePowerRequest{Id: id, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_ON})
		if c := status.Code(err); c == codes.NotFound || c == codes.FailedPrecondition {
			return false
		} else if err != nil {
			b.Fatal(err)
		}
		gen = resp.GetGeneration()
		return true
	})
	p.await(b, "PowerOn", time.Now())
	p.result(b, gen)

	b.Run("cycle", func(b *testing.B) { p.run(b, agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE) })
	b.Run("off-on", func(b *testing.B) {
		p.run(b, agentv1.BmcPowerAction_BMC_POWER_ACTION_OFF, agentv1.BmcPowerAction_BMC_POWER_ACTION_ON)
	})
}

// powerBench is one machine whose power the benchmark changes.
type powerBench struct {
	id     string
	sys    *watchedSystem
	mc     apiv1.MachineServiceClient
	agents apiv1.AgentServiceClient
}

// run raises actions in turn b.N times and reports their latencies.
func (p *powerBench) run(b *testing.B, actions ...agentv1.BmcPowerAction) {
	var samples []time.Duration
	b.ResetTimer()
	for range b.N {
		for _, a := range actions {
			samples = append(samples, p.intent(b, a))
		}
	}
	b.StopTimer()
	slices.Sort(samples)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(percentile(samples, 0.50)), "p50-ms")
	b.ReportMetric(ms(percentile(samples, 0.99)), "p99-ms")
	b.ReportMetric(ms(samples[len(samples)-1]), "max-ms")
}

// intent raises one power intent and returns how long the machine took
// to hear of it.
func (p *powerBench) intent(b *testing.B, a agentv1.BmcPowerAction) time.Duration {
	// The lab's BMC calls these for them: Redfish On, ForceOff and
	// PowerCycle (bmclib's "reset", which metal-bmc's cycle sends).
	want := map[agentv1.BmcPowerAction]string{
		agentv1.BmcPowerAction_BMC_POWER_ACTION_ON:    "PowerOn",
		agentv1.BmcPowerAction_BMC_POWER_ACTION_OFF:   "PowerOff",
		agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE: "PowerCycle",
	}[a]
	start := time.Now()
	resp, err := p.mc.Power(b.Context(), &apiv1.MachineServicePowerRequest{Id: p.id, Action: a})
	if err != nil {
		b.Fatal(err)
	}
	lat := p.await(b, want, start)
	b.StopTimer()
	p.result(b, resp.GetGeneration())
	b.StartTimer()
	return lat
}

// await waits for the machine's next power change, which must be want,
// and returns how long after start it came.
func (p *powerBench) await(b *testing.B, want string, start time.Time) time.Duration {
	select {
	case c := <-p.sys.changes:
		if c.what != want {
			b.Fatalf("the machine was told %s, want %s", c.what, want)
		}
		return c.at.Sub(start)
	case <-time.After(60 * time.Second):
		b.Fatalf("the machine was not told %s within 60 s", want)
		return 0
	}
}

// result waits until central has metal-bmc's result of the power
// intent's generation gen, which must have succeeded.
func (p *powerBench) result(b *testing.B, gen uint64) {
	var res *agentv1.BmcIntentResult
	var dropped bool
	waitFor(b, "metal-bmc's power result at central", func() bool {
		got, err := p.agents.Get(b.Context(), &apiv1.AgentServiceGetRequest{Id: "bmc/bmc-p1"})
		if err != nil {
			return false
		}
		// Central drops a finished intent from the document once it has
		// the result, and metal-bmc then drops the result from its facts:
		// a poll can miss the few milliseconds between.
		dropped = !slices.ContainsFunc(got.GetAgent().GetDesired().GetBmc().GetMachines(), func(m *agentv1.BmcMachine) bool {
			return m.GetMachineId() == p.id && m.GetPower().GetGeneration() >= gen
		})
		for _, m := range got.GetAgent().GetFacts().GetBmc().GetMachines() {
			for _, r := range m.GetResults() {
				if m.GetMachineId() == p.id && r.GetKind() == agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER && r.GetGeneration() == gen &&
					r.GetOutcome() != agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_PENDING {
					res = r
				}
			}
		}
		return res != nil || dropped
	})
	if res != nil && res.GetOutcome() != agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED {
		b.Fatalf("power generation %d: %v", gen, res)
	}
}

// percentile is the nearest-rank percentile q of sorted samples.
func percentile(sorted []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(i, 0)]
}

// powerChange is one call of the BMC to its machine, and when it came.
type powerChange struct {
	what string
	at   time.Time
}

// watchedSystem is the machine behind the benchmark's BMC: its power is
// state, and every change is sent on changes with its time.
type watchedSystem struct {
	mu      sync.Mutex
	power   vm.PowerState
	changes chan powerChange
}

func (s *watchedSystem) PowerState(context.Context) (vm.PowerState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.power, nil
}

func (s *watchedSystem) set(what string, p vm.PowerState) error {
	at := time.Now()
	s.mu.Lock()
	s.power = p
	s.mu.Unlock()
	select {
	case s.changes <- powerChange{what: what, at: at}:
	default:
		// The buffer holds more than a sample leaves unread: a change
		// nobody asked for shows at the next wait as the wrong one.
	}
	return nil
}

func (s *watchedSystem) PowerOn(context.Context) error           { return s.set("PowerOn", vm.On) }
func (s *watchedSystem) PowerOff(context.Context, bool) error    { return s.set("PowerOff", vm.Off) }
func (s *watchedSystem) PowerCycle(context.Context) error        { return s.set("PowerCycle", vm.On) }
func (s *watchedSystem) Reset(context.Context) error             { return s.set("Reset", vm.On) }
func (s *watchedSystem) SetBootDevice(vm.BootDevice, bool) error { return nil }
func (s *watchedSystem) BootDevice() (vm.BootDevice, bool)       { return vm.BootDisk, false }
