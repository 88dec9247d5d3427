package oob

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// chassisScript is ipmi_sim's chassis_control program: it keeps the
// machine's power and next boot device in files next to itself, so the
// test sees what the BMC was asked to do, and logs every set.
const chassisScript = `#!/bin/sh
dir=$(dirname "$0")
shift
op=$1; shift
case $op in
get)
  for p in "$@"; do
    case $p in
      power) echo "power:$(cat "$dir/power" 2>/dev/null || echo 0)";;
      boot) echo "boot:$(cat "$dir/boot" 2>/dev/null || echo default)";;
    esac
  done;;
set)
  while [ $# -ge 2 ]; do
    p=$1; v=$2; shift 2
    echo "$p $v" >> "$dir/calls"
    case $p in
      power) echo "$v" > "$dir/power";;
      boot) echo "$v" > "$dir/boot";;
    esac
  done;;
esac
`

// ipmiSim runs OpenIPMI's ipmi_sim on a free UDP port of 127.0.0.1 and
// returns its address and its directory.
func ipmiSim(t *testing.T) (addr, dir string) {
	t.Helper()
	for _, bin := range []string{"ipmi_sim", "ipmitool"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (Debian: apt-get install openipmi ipmitool, or make deps): the IPMI provider is not tested", bin)
		}
	}
	dir = t.TempDir()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	files := map[string]string{
		"chassis.sh": chassisScript,
		"lan.conf": fmt.Sprintf(`name "metalbmc-test"
set_working_mc 0x20
startlan 1
  addr 127.0.0.1 %d
  priv_limit admin
  allowed_auths_admin none md2 md5 straight
  guid 5c1f7a523f9e4bb19d550d7c2c1a0002
endlan
chassis_control "%s 0x20"
user 2 true "admin" "s3cret" admin 10 none md2 md5 straight
`, port, filepath.Join(dir, "chassis.sh")),
		"sim.emu": `mc_setbmc 0x20
mc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr
sel_enable 0x20 1000 0x0a
mc_enable 0x20
`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ipmi_sim", "-c", filepath.Join(dir, "lan.conf"), "-f", filepath.Join(dir, "sim.emu"), "-s", filepath.Join(dir, "state"), "-n")
	log, err := os.Create(filepath.Join(dir, "ipmi_sim.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		log.Close()
		if t.Failed() {
			b, _ := os.ReadFile(log.Name())
			t.Logf("ipmi_sim log:\n%s", b)
		}
	})
	return fmt.Sprintf("127.0.0.1:%d", port), dir
}

func readFile(dir, name string) string {
	b, _ := os.ReadFile(filepath.Join(dir, name))
	return strings.TrimSpace(string(b))
}

// TestIPMIProvider drives OpenIPMI's ipmi_sim through bmclib's ipmitool
// provider (power, boot) and ipmitool (facts): every intent reaches the
// simulated chassis; a wrong password is a clear error.
func TestIPMIProvider(t *testing.T) {
	addr, sim := ipmiSim(t)
	var mu sync.Mutex
	var events []*agentv1.Event
	dir := t.TempDir()
	cfg := Config{StateDir: dir, Tick: 20 * time.Millisecond, PollInterval: 200 * time.Millisecond, MinBackoff: 200 * time.Millisecond, MaxBackoff: time.Second,
		Timeout: 20 * time.Second, IpmiCipherSuite: "3",
		Report: func(_ *agentv1.Facts, ev ...*agentv1.Event) { mu.Lock(); events = append(events, ev...); mu.Unlock() }}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Run(ctx) }()
	defer func() { cancel(); <-done; s.Close() }()

	doc := func(password string, m ...*agentv1.BmcMachine) *agentv1.Desired {
		return &agentv1.Desired{Bmc: &agentv1.BmcDocument{Credentials: &agentv1.BmcCredentials{User: "admin", Password: password},
			StaticBmcs: []*agentv1.BmcEndpoint{{Address: addr, Protocol: agentv1.BmcProtocol_BMC_PROTOCOL_IPMI}}, Machines: m}}
	}

	// Wrong password first: a clear error, never the password.
	if err := s.Apply(ctx, doc("not-the-password")); err != nil {
		t.Fatal(err)
	}
	wait(t, "a credentials error", func() bool {
		b := s.Facts().GetBmcs()
		return len(b) == 1 && strings.Contains(b[0].GetLastError(), "refused the credentials")
	})
	if e := s.Facts().GetBmcs()[0].GetLastError(); strings.Contains(e, "not-the-password") {
		t.Errorf("error shows the password: %s", e)
	}

	if err := s.Apply(ctx, doc("s3cret")); err != nil {
		t.Fatal(err)
	}
	var fact *agentv1.BmcFact
	wait(t, "facts over IPMI", func() bool {
		b := s.Facts().GetBmcs()
		if len(b) == 1 && b[0].GetReachable() {
			fact = b[0]
		}
		return fact != nil
	})
	if len(fact.GetMachineUuid()) != 36 || fact.GetPowerState() != agentv1.BmcPowerState_BMC_POWER_STATE_OFF || fact.GetBmcVersion() == "" || fact.GetProtocol() != agentv1.BmcProtocol_BMC_PROTOCOL_IPMI {
		t.Errorf("fact %v", fact)
	}
	// ipmi_sim sends its GUID as configured; ipmitool's default decoding
	// (IPMI's, the only one with a valid version here) comes first, the
	// SMBIOS and RFC 4122 decodings follow.
	if fact.GetMachineUuid() != "02001a2c-7c0d-559d-b14b-9e3f527a1f5c" ||
		!slices.Equal(fact.GetMachineUuidAliases(), []string{"527a1f5c-9e3f-b14b-9d55-0d7c2c1a0002", "5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0002"}) {
		t.Errorf("machine UUID %s, aliases %v", fact.GetMachineUuid(), fact.GetMachineUuidAliases())
	}
	// Intents for the machine under an alias (the name central gives it
	// when its SMBIOS UUID is in that byte order) reach the BMC.
	id := "5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0002"

	m := &agentv1.BmcMachine{MachineId: id}
	for _, st := range []struct {
		name   string
		change func()
		kind   agentv1.BmcIntentKind
		gen    uint64
		check  func() bool
	}{
		{"boot pxe", func() {
			m.Boot = &agentv1.BmcBootIntent{Generation: 1, Device: agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE}
		},
			agentv1.BmcIntentKind_BMC_INTENT_KIND_BOOT, 1, func() bool { return readFile(sim, "boot") == "pxe" }},
		{"power on", func() {
			m.Power = &agentv1.BmcPowerIntent{Generation: 1, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_ON}
		},
			agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, 1, func() bool { return readFile(sim, "power") == "1" }},
		{"boot disk", func() {
			m.Boot = &agentv1.BmcBootIntent{Generation: 2, Device: agentv1.BmcBootDevice_BMC_BOOT_DEVICE_DISK}
		},
			agentv1.BmcIntentKind_BMC_INTENT_KIND_BOOT, 2, func() bool { return readFile(sim, "boot") == "default" || readFile(sim, "boot") == "disk" }},
		{"cycle", func() {
			m.Power = &agentv1.BmcPowerIntent{Generation: 2, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE}
		},
			agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, 2, func() bool { return strings.HasSuffix(readFile(sim, "calls"), "power 0\npower 1") }},
		{"power off", func() {
			m.Power = &agentv1.BmcPowerIntent{Generation: 3, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_OFF}
		},
			agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, 3, func() bool { return readFile(sim, "power") == "0" }},
		// IPMI's chassis reset does nothing to a machine that is off:
		// metal-bmc powers it on instead.
		{"reset while off", func() {
			m.Power = &agentv1.BmcPowerIntent{Generation: 4, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_RESET}
		},
			agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, 4, func() bool { return readFile(sim, "power") == "1" }},
		{"power off again", func() {
			m.Power = &agentv1.BmcPowerIntent{Generation: 5, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_OFF}
		},
			agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, 5, func() bool { return readFile(sim, "power") == "0" }},
	} {
		st.change()
		if err := s.Apply(ctx, doc("s3cret", m)); err != nil {
			t.Fatal(err)
		}
		var res *agentv1.BmcIntentResult
		wait(t, st.name, func() bool {
			for _, mr := range s.Facts().GetMachines() {
				for _, r := range mr.GetResults() {
					if r.GetKind() == st.kind && r.GetGeneration() == st.gen && r.GetOutcome() != agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_PENDING {
						res = r
					}
				}
			}
			return res != nil
		})
		if res.GetOutcome() != agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED {
			t.Fatalf("%s: result %v", st.name, res)
		}
		// ipmi_sim powers on again a moment after a cycle's off.
		wait(t, st.name+" on the chassis", st.check)
	}
	wait(t, "power off reported", func() bool {
		return s.Facts().GetBmcs()[0].GetPowerState() == agentv1.BmcPowerState_BMC_POWER_STATE_OFF
	})
}
