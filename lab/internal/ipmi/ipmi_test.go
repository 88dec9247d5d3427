package ipmi

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/metalfleet/metalfleet/agents/metalbmc/oob"
	"github.com/metalfleet/metalfleet/lab/internal/vm"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// helperEnv makes the test binary ipmi_sim's chassis_control program
// (what `metal-lab bmc-chassis` is in the lab): ipmi_sim runs it with
// "--socket <path> get power" and the like.
const helperEnv = "METAL_LAB_IPMI_TEST_CHASSIS"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		args := os.Args[1:]
		var socket string
		var words []string
		for i := 0; i < len(args); i++ {
			if args[i] == "--socket" && i+1 < len(args) {
				socket = args[i+1]
				i++
				continue
			}
			words = append(words, args[i])
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := Control(ctx, socket, words)
		cancel()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Print(out)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

const (
	machineUUID = "5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0003"
	user, pass  = "admin", "s3cret-ipmi"
)

// fakeMachine records what the BMC asks of the machine.
type fakeMachine struct {
	mu    sync.Mutex
	state vm.PowerState
	dev   vm.BootDevice
	calls []string
}

func (f *fakeMachine) PowerState(context.Context) (vm.PowerState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state, nil
}

func (f *fakeMachine) op(name string, state vm.PowerState) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, name)
	if name == "Reset" && f.state == vm.Off {
		return vm.ErrPoweredOff
	}
	if state != "" {
		f.state = state
	}
	if state == vm.On && name == "PowerOn" && f.dev != vm.BootDefault {
		// The boot override is used up by the boot, as vm.Machine does.
		f.calls = append(f.calls, "boot "+string(f.dev))
		f.dev = vm.BootDefault
	}
	return nil
}

func (f *fakeMachine) PowerOn(context.Context) error { return f.op("PowerOn", vm.On) }
func (f *fakeMachine) PowerOff(_ context.Context, graceful bool) error {
	return f.op(fmt.Sprintf("PowerOff(graceful=%v)", graceful), vm.Off)
}
func (f *fakeMachine) Reset(context.Context) error { return f.op("Reset", "") }
func (f *fakeMachine) SetBootDevice(dev vm.BootDevice, persistent bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fmt.Sprintf("SetBootDevice(%q,%v)", dev, persistent))
	f.dev = dev
	return nil
}
func (f *fakeMachine) BootDevice() (vm.BootDevice, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dev, false
}

func (f *fakeMachine) snapshot() (vm.PowerState, vm.BootDevice, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state, f.dev, slices.Clone(f.calls)
}

func needTools(t *testing.T) {
	t.Helper()
	for _, bin := range []string{"ipmi_sim", "ipmitool"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (Debian: apt-get install openipmi ipmitool, or make deps): the lab's IPMI BMC is not tested", bin)
		}
	}
}

func freeUDP(t *testing.T) string {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	return pc.LocalAddr().String()
}

// startBMC runs the IPMI BMC for f with the test binary as its chassis
// program, a serial socket when serial is set, and the FRU.
func startBMC(t *testing.T, f Machine, serial string, fru FRU) string {
	t.Helper()
	needTools(t)
	t.Setenv(helperEnv, "1")
	addr := freeUDP(t)
	ready := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Serve(ctx, Config{Machine: f, UUID: machineUUID, Listen: addr, User: user, Password: pass,
			Dir: t.TempDir(), Serial: serial, Chassis: []string{os.Args[0]}, FRU: fru,
			Log:   slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
			Ready: func() { close(ready) }})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	case <-time.After(45 * time.Second):
		t.Fatal("the BMC did not answer within 45 s")
	}
	return addr
}

// collector keeps what metal-bmc reports.
type collector struct {
	mu    sync.Mutex
	facts *agentv1.BmcFacts
}

func (c *collector) report(f *agentv1.Facts, _ ...*agentv1.Event) {
	if f == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.facts = proto.Clone(f.GetBmc()).(*agentv1.BmcFacts)
}

func (c *collector) snapshot() *agentv1.BmcFacts {
	c.mu.Lock()
	defer c.mu.Unlock()
	return proto.Clone(c.facts).(*agentv1.BmcFacts)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestMetalBMCOverIPMI drives the lab's IPMI BMC with metal-bmc's library
// (bmclib v2.3.5's ipmitool provider, cipher suite 3, as the lab runs
// metal-bmc): the facts name the machine by its UUID (the GUID as
// ipmitool decodes it) and its power; every power and boot intent reaches
// the machine through ipmi_sim's chassis control. The machine's vendor,
// model and serial come from the BMC's FRU.
func TestMetalBMCOverIPMI(t *testing.T) {
	f := &fakeMachine{state: vm.Off}
	fru := FRU{Manufacturer: "Metalfleet", Product: "QEMU lab machine", Serial: "machine01"}
	addr := startBMC(t, f, "", fru)
	col := &collector{facts: &agentv1.BmcFacts{}}
	svc, err := oob.New(oob.Config{StateDir: t.TempDir(), Tick: 20 * time.Millisecond, PollInterval: 200 * time.Millisecond,
		MinBackoff: 200 * time.Millisecond, MaxBackoff: time.Second, Timeout: 20 * time.Second, IpmiCipherSuite: "3", Report: col.report})
	if err != nil {
		t.Fatal(err)
	}
	m := &agentv1.BmcMachine{MachineId: machineUUID}
	doc := func() *agentv1.Desired {
		return &agentv1.Desired{Revision: 1, Bmc: &agentv1.BmcDocument{PartitionId: "lab",
			Credentials: &agentv1.BmcCredentials{User: user, Password: pass},
			StaticBmcs:  []*agentv1.BmcEndpoint{{Address: addr, Protocol: agentv1.BmcProtocol_BMC_PROTOCOL_IPMI}},
			Machines:    []*agentv1.BmcMachine{proto.Clone(m).(*agentv1.BmcMachine)}}}
	}
	if err := svc.Apply(context.Background(), doc()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = svc.Run(ctx) }()
	defer func() { cancel(); <-done; svc.Close() }()

	var facts *agentv1.BmcFact
	eventually(t, "the BMC's facts", func() bool {
		for _, b := range col.snapshot().GetBmcs() {
			if b.GetMachineUuid() == machineUUID && b.GetReachable() && b.GetPowerState() == agentv1.BmcPowerState_BMC_POWER_STATE_OFF {
				facts = b
				return true
			}
		}
		return false
	})
	if facts.GetVendor() != fru.Manufacturer || facts.GetModel() != fru.Product || facts.GetSerial() != fru.Serial {
		t.Fatalf("metal-bmc reports vendor %q, model %q, serial %q; want the FRU's %q, %q, %q",
			facts.GetVendor(), facts.GetModel(), facts.GetSerial(), fru.Manufacturer, fru.Product, fru.Serial)
	}

	result := func(kind agentv1.BmcIntentKind) *agentv1.BmcIntentResult {
		for _, mm := range col.snapshot().GetMachines() {
			for _, r := range mm.GetResults() {
				if mm.GetMachineId() == machineUUID && r.GetKind() == kind {
					return r
				}
			}
		}
		return nil
	}
	power := func(gen uint64, a agentv1.BmcPowerAction) func() {
		return func() { m.Power = &agentv1.BmcPowerIntent{Generation: gen, Action: a} }
	}
	boot := func(gen uint64, d agentv1.BmcBootDevice) func() {
		return func() { m.Boot = &agentv1.BmcBootIntent{Generation: gen, Device: d} }
	}
	last := func(want ...string) func() bool {
		return func() bool {
			_, _, calls := f.snapshot()
			return len(calls) >= len(want) && slices.Equal(calls[len(calls)-len(want):], want)
		}
	}
	pk, bk := agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, agentv1.BmcIntentKind_BMC_INTENT_KIND_BOOT
	ok, failed := agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED, agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_FAILED
	for _, st := range []struct {
		name   string
		change func()
		kind   agentv1.BmcIntentKind
		gen    uint64
		want   agentv1.BmcIntentOutcome
		check  func() bool
	}{
		{"boot disk", boot(1, agentv1.BmcBootDevice_BMC_BOOT_DEVICE_DISK), bk, 1, ok, last(`SetBootDevice("disk",false)`)},
		// The next power-on boots the disk and uses the override up.
		{"power on", power(1, agentv1.BmcPowerAction_BMC_POWER_ACTION_ON), pk, 1, ok, last("PowerOn", "boot disk")},
		{"boot pxe", boot(2, agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE), bk, 2, ok, last(`SetBootDevice("pxe",false)`)},
		{"reset", power(2, agentv1.BmcPowerAction_BMC_POWER_ACTION_RESET), pk, 2, ok, last("Reset")},
		// ipmi_sim's cycle: off, then on once the power reads off.
		{"cycle", power(3, agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE), pk, 3, ok, last("PowerOff(graceful=false)", "PowerOn", "boot pxe")},
		{"off", power(4, agentv1.BmcPowerAction_BMC_POWER_ACTION_OFF), pk, 4, ok, last("PowerOff(graceful=false)")},
		// A reset of a machine that is off: metal-bmc powers it on.
		{"reset while off", power(5, agentv1.BmcPowerAction_BMC_POWER_ACTION_RESET), pk, 5, ok, last("PowerOn")},
		// The persistent bit (ipmitool's options=persistent) is taken, but
		// ipmi_sim hands the lab only the device: the next boot.
		{"boot disk persistent", func() {
			m.Boot = &agentv1.BmcBootIntent{Generation: 3, Device: agentv1.BmcBootDevice_BMC_BOOT_DEVICE_DISK, Persistent: true}
		}, bk, 3, ok, last(`SetBootDevice("disk",false)`)},
		// The lab's machines boot the network or the disk only.
		{"boot bios", boot(4, agentv1.BmcBootDevice_BMC_BOOT_DEVICE_BIOS), bk, 4, failed, nil},
	} {
		st.change()
		if err := svc.Apply(context.Background(), doc()); err != nil {
			t.Fatal(err)
		}
		var res *agentv1.BmcIntentResult
		eventually(t, st.name+"'s result", func() bool {
			res = result(st.kind)
			return res.GetGeneration() == st.gen && res.GetOutcome() != agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_PENDING
		})
		if res.GetOutcome() != st.want {
			t.Fatalf("%s: %v", st.name, res)
		}
		if st.check != nil {
			eventually(t, st.name+" reaching the machine", st.check)
		}
		_, _, calls := f.snapshot()
		t.Logf("%s: %s; machine calls %q", st.name, res.GetOutcome(), calls)
	}
	if state, _, _ := f.snapshot(); state != vm.On {
		t.Fatalf("machine %s at the end, want on", state)
	}
}

// TestFRUOverLAN: ipmitool reads the configured FRU from ipmi_sim's FRU
// device 0 as metal-bmc asks for it (lanplus, cipher suite 3), in both the
// board and the product area.
func TestFRUOverLAN(t *testing.T) {
	fru := FRU{Manufacturer: "Metalfleet", Product: "QEMU lab machine", Serial: "machine01",
		PartNumber: "MF-QEMU-1", Version: "2", AssetTag: "rack 1 slot 3", FileID: "metal-lab"}
	addr := startBMC(t, &fakeMachine{state: vm.Off}, "", fru)
	host, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, "ipmitool", "-I", "lanplus", "-C", "3", "-H", host, "-p", port, "-U", user, "-E", "fru", "print", "0")
	c.Env = append(os.Environ(), "IPMITOOL_PASSWORD="+pass)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("ipmitool fru print 0: %v\n%s", err, out)
	}
	got := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok {
			got[strings.TrimSpace(k)] = strings.TrimSpace(v)
		}
	}
	for k, want := range map[string]string{
		"Product Manufacturer": fru.Manufacturer, "Product Name": fru.Product, "Product Serial": fru.Serial,
		"Product Part Number": fru.PartNumber, "Product Version": fru.Version, "Product Asset Tag": fru.AssetTag,
		"Board Mfg": fru.Manufacturer, "Board Product": fru.Product, "Board Serial": fru.Serial, "Board Part Number": fru.PartNumber,
	} {
		if got[k] != want {
			t.Errorf("%s: %q, want %q", k, got[k], want)
		}
	}
	if t.Failed() {
		t.Logf("ipmitool fru print 0:\n%s", out)
	}
}

// TestSerialBridge: ipmi_sim's SOL connection outlives the machine's
// serial socket, which goes with QEMU and comes back with the next one;
// bytes flow both ways whenever it is there.
func TestSerialBridge(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "serial.sock")
	b, err := newSerialBridge(sock, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go b.Serve(ctx)

	// ipmi_sim connects while the machine is off.
	sol, err := net.Dial("tcp", b.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer sol.Close()

	for boot := 1; boot <= 2; boot++ {
		// A QEMU: its serial socket, one client.
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(true)
		_ = ln.(*net.UnixListener).SetDeadline(time.Now().Add(10 * time.Second))
		serial, err := ln.Accept()
		if err != nil {
			t.Fatalf("boot %d: the bridge did not attach to the serial socket: %v", boot, err)
		}
		out := fmt.Sprintf("boot %d says hello\n", boot)
		if _, err := io.WriteString(serial, out); err != nil {
			t.Fatal(err)
		}
		got := make([]byte, len(out))
		_ = sol.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(sol, got); err != nil || string(got) != out {
			t.Fatalf("boot %d: SOL read %q, %v", boot, got, err)
		}
		if _, err := io.WriteString(sol, "typed\n"); err != nil {
			t.Fatal(err)
		}
		in := make([]byte, len("typed\n"))
		_ = serial.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.ReadFull(serial, in); err != nil || string(in) != "typed\n" {
			t.Fatalf("boot %d: the machine read %q, %v", boot, in, err)
		}
		// Power off: QEMU and its socket go.
		serial.Close()
		ln.Close()
		time.Sleep(100 * time.Millisecond)
	}
	if strings.Contains(b.Addr(), "0.0.0.0") {
		t.Fatalf("the bridge listens on %s, want loopback only", b.Addr())
	}
}

// TestServeRefusesWhatIPMISimWouldCut: ipmi_sim keeps 19 bytes of a
// password (15 of a user); a longer one would be another password, and
// every login would fail with an HMAC error that names nothing. A FRU
// field the image cannot hold is refused as well.
func TestServeRefusesWhatIPMISimWouldCut(t *testing.T) {
	for _, c := range []struct {
		user, pass string
		fru        FRU
		want       string
	}{
		{"admin", "01234567890123456789", FRU{}, "password must be at most 19 bytes"},
		{"administrator-1234", "pw", FRU{}, "user must be at most 15 bytes"},
		{"admin", `pa"ss`, FRU{}, "without quotes"},
		{"admin", "pw", FRU{Serial: strings.Repeat("9", 64)}, "a FRU field holds at most 63"},
	} {
		err := Serve(context.Background(), Config{Machine: &fakeMachine{}, UUID: machineUUID, Listen: "127.0.0.1:623",
			User: c.user, Password: c.pass, Dir: t.TempDir(), Chassis: []string{"true"}, FRU: c.fru})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("user %q password %q: %v, want %q", c.user, c.pass, err, c.want)
		}
	}
}
