package vm

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestArgs(t *testing.T) {
	dir := t.TempDir()
	code := filepath.Join(dir, "CODE.fd")
	if err := os.WriteFile(code, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	nics := []NIC{{Tap: "tap0", MAC: "52:54:00:00:00:01", Boot: true}, {Tap: "tap1", MAC: "52:54:00:00:00:02"}}
	base := Spec{Name: "m1", UUID: "11111111-2222-3333-4444-555555555555", Dir: "/s", Disk: "/s/disk.raw",
		NICs: nics, Accel: "tcg", OVMFCode: code, OVMFVars: "/v.fd"}
	with := func(f func(*Spec)) Spec { s := base; f(&s); return s }

	tests := []struct {
		name    string
		spec    Spec
		boot    BootDevice
		want    []string // consecutive runs that must appear
		notWant []string // single arguments that must not
	}{
		{name: "tcg uefi default boot", spec: base, boot: BootDefault, want: []string{
			"-nodefaults", "-no-user-config",
			"-accel tcg -cpu max", "-machine q35,graphics=off -m 1024 -smp 1 -display none",
			"-smbios type=1,uuid=11111111-2222-3333-4444-555555555555",
			"-drive if=pflash,format=raw,unit=0,readonly=on,file=" + code,
			"-drive if=pflash,format=raw,unit=1,file=/s/OVMF_VARS.fd",
			"-netdev tap,id=net0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=net0,id=nic0,mac=52:54:00:00:00:01,bootindex=1",
			"-netdev tap,id=net1,ifname=tap1,script=no,downscript=no -device virtio-net-pci,netdev=net1,id=nic1,mac=52:54:00:00:00:02",
			"-drive file=/s/disk.raw,if=none,id=disk0,format=raw,cache=unsafe -device virtio-blk-pci,drive=disk0,id=vda,bootindex=2",
			"-chardev socket,id=ser0,path=/s/serial.sock,server=on,wait=off,logfile=/s/serial.log,logappend=on -serial chardev:ser0",
			"-qmp unix:/s/qmp.sock,server=on,wait=off",
		}, notWant: []string{"-no-reboot", "-bios", "-cpu host"}},
		{name: "pxe is the default order", spec: base, boot: BootPXE, want: []string{
			"mac=52:54:00:00:00:01,bootindex=1", "id=vda,bootindex=2"}},
		{name: "disk first", spec: base, boot: BootDisk, want: []string{
			"mac=52:54:00:00:00:01,bootindex=2", "id=vda,bootindex=1"}},
		{name: "kvm", spec: with(func(s *Spec) { s.Accel = "kvm" }), want: []string{"-accel kvm -cpu host"},
			notWant: []string{"tcg", "max"}},
		{name: "bios is SeaBIOS", spec: with(func(s *Spec) { s.Firmware = "bios" }), want: []string{"-display none"},
			notWant: []string{"-bios", "if=pflash,format=raw,unit=0,readonly=on,file=" + code}},
		{name: "combined OVMF when the split files are missing", spec: with(func(s *Spec) { s.OVMFCode = filepath.Join(dir, "missing.fd") }),
			want: []string{"-bios " + DefaultOVMFCombined}},
		{name: "size", spec: with(func(s *Spec) { s.MemoryMiB, s.CPUs = 4096, 2 }), want: []string{"-m 4096 -smp 2"}},
		{name: "no disk, no nic", spec: with(func(s *Spec) { s.Disk, s.NICs = "", nil }),
			notWant: []string{"-netdev", "virtio-blk-pci,drive=disk0,id=vda,bootindex=2"}},
		{name: "name with a comma is escaped", spec: with(func(s *Spec) { s.Name = "a,b" }), want: []string{"-name a,,b"}},
		{name: "external IPMI BMC", spec: with(func(s *Spec) { s.IPMI = "127.0.0.1:9002" }), want: []string{
			"-chardev socket,id=ipmi0,host=127.0.0.1,port=9002,reconnect=10 -device ipmi-bmc-extern,chardev=ipmi0,id=bmc0 -device isa-ipmi-kcs,bmc=bmc0"}},
		{name: "no IPMI BMC by default", spec: base, notWant: []string{"isa-ipmi-kcs,bmc=bmc0"}},
		{name: "extra last", spec: with(func(s *Spec) { s.Extra = []string{"-S"} }), want: []string{"-qmp unix:/s/qmp.sock,server=on,wait=off -S"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.spec.Args(tc.boot)
			joined := " " + strings.Join(args, " ") + " "
			for _, w := range tc.want {
				if !strings.Contains(joined, w) {
					t.Errorf("missing %q in\n%s", w, joined)
				}
			}
			for _, nw := range tc.notWant {
				if slices.Contains(args, nw) || strings.Contains(joined, " "+nw+" ") {
					t.Errorf("unexpected %q in\n%s", nw, joined)
				}
			}
		})
	}
}

func TestSpecValidate(t *testing.T) {
	ok := Spec{Dir: "/s"}.withDefaults()
	tests := []struct {
		name string
		f    func(*Spec)
		err  string
	}{
		{"ok", func(*Spec) {}, ""},
		{"no dir", func(s *Spec) { s.Dir = "" }, "Dir is required"},
		{"comma dir", func(s *Spec) { s.Dir = "/a,b" }, "comma"},
		{"firmware", func(s *Spec) { s.Firmware = "coreboot" }, "firmware"},
		{"accel", func(s *Spec) { s.Accel = "hvf" }, "accel"},
		{"two boot nics", func(s *Spec) {
			s.NICs = []NIC{{Tap: "a", MAC: "m", Boot: true}, {Tap: "b", MAC: "n", Boot: true}}
		}, "boot NICs"},
		{"nic without mac", func(s *Spec) { s.NICs = []NIC{{Tap: "a"}} }, "required"},
		{"ipmi without port", func(s *Spec) { s.IPMI = "127.0.0.1" }, "want host:port"},
		{"ipmi with a comma", func(s *Spec) { s.IPMI = "127.0.0.1:9002,server=on" }, "want host:port"},
		{"ipmi", func(s *Spec) { s.IPMI = "127.0.0.1:9002" }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := ok
			tc.f(&s)
			err := s.validate()
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("validate = %v, want %q", err, tc.err)
			}
		})
	}
}

func TestParseNIC(t *testing.T) {
	tests := []struct {
		in   string
		want NIC
		err  bool
	}{
		{in: "tap=tap0,mac=52:54:00:AA:00:01,boot", want: NIC{Tap: "tap0", MAC: "52:54:00:aa:00:01", Boot: true}},
		{in: "mac=52:54:00:00:00:02,tap=t1", want: NIC{Tap: "t1", MAC: "52:54:00:00:00:02"}},
		{in: "tap=t1", err: true},
		{in: "tap=t1,mac=x,boot=yes", err: true},
		{in: "tap=t1,mac=x,speed=10", err: true},
	}
	for _, tc := range tests {
		got, err := ParseNIC(tc.in)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("ParseNIC(%q) = %+v, %v; want %+v, err %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}

// A QEMU that cannot start a KVM machine means TCG, whatever /dev/kvm
// says (a nested hypervisor's KVM may open and still abort QEMU).
func TestDefaultAccelFallsBackToTCG(t *testing.T) {
	if got := DefaultAccel("/bin/false"); got != "tcg" {
		t.Fatalf("DefaultAccel(/bin/false) = %q, want tcg", got)
	}
}

// kvmRuns counts only a guest that keeps running: one that KVM stops in
// its firmware ("internal-error", as OVMF under some nested KVMs) or a
// QEMU that ends or answers errors means TCG. The stand-in QEMU speaks
// QMP on stdio the way QEMU does: a greeting, events between answers.
func TestKVMRunsOnlyWhenTheGuestKeepsRunning(t *testing.T) {
	for _, tc := range []struct {
		name string
		// script answers each query-status after the first with this
		// status (the first is "running", as QEMU's is at start).
		later string
		exit  bool // QEMU ends right after the greeting
		want  bool
	}{
		{name: "running throughout", later: "running", want: true},
		{name: "stopped by a KVM internal error", later: "internal-error"},
		{name: "guest panicked", later: "guest-panicked"},
		{name: "QEMU ends", exit: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			qemu := filepath.Join(t.TempDir(), "qemu")
			script := `#!/bin/sh
echo '{"QMP": {"version": {}, "capabilities": ["oob"]}}'
` + map[bool]string{true: "exit 1\n", false: ""}[tc.exit] + `n=0
while read -r line; do
  case "$line" in
  *qmp_capabilities*) echo '{"return": {}}' ;;
  *query-status*)
    n=$((n+1))
    s=running; [ $n -gt 1 ] && s=` + tc.later + `
    echo '{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}'
    echo "{\"return\": {\"status\": \"$s\", \"running\": false}}" ;;
  *quit*) echo '{"return": {}}'; exit 0 ;;
  esac
done
`
			if err := os.WriteFile(qemu, []byte(script), 0o755); err != nil {
				t.Fatal(err)
			}
			if got := kvmRuns(t.Context(), qemu, nil); got != tc.want {
				t.Fatalf("kvmRuns = %v, want %v", got, tc.want)
			}
		})
	}
}
