package vm

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

func starts(t *testing.T, dir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "starts"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

func wantState(t *testing.T, m *Machine, want PowerState) {
	t.Helper()
	got, err := m.PowerState(context.Background())
	if err != nil || got != want {
		t.Fatalf("PowerState = %q, %v; want %q", got, err, want)
	}
}

func TestMachineLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	spec := fakeSpec(t)
	m, err := New(spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close(ctx)

	wantState(t, m, Off)
	if err := m.Reset(ctx); !errors.Is(err, ErrPoweredOff) {
		t.Fatalf("Reset while off = %v", err)
	}
	if err := m.PowerOn(ctx); err != nil {
		t.Fatal(err)
	}
	wantState(t, m, On)
	if err := m.PowerOn(ctx); err != nil { // idempotent
		t.Fatal(err)
	}
	if s := starts(t, spec.Dir); len(s) != 1 || !strings.Contains(s[0], "mac=52:54:00:00:00:01,bootindex=1") {
		t.Fatalf("starts = %q", s)
	}
	if fi, err := os.Stat(spec.Disk); err != nil || fi.Size() != 1<<20 {
		t.Fatalf("disk: %v, %v", fi, err)
	}

	// A one-time disk boot needs a new QEMU, and is used up by it.
	if err := m.SetBootDevice("cdrom", false); err == nil {
		t.Fatal("SetBootDevice(cdrom) succeeded")
	}
	if err := m.SetBootDevice(BootDisk, false); err != nil {
		t.Fatal(err)
	}
	if d, p := m.BootDevice(); d != BootDisk || p {
		t.Fatalf("BootDevice = %q, %v", d, p)
	}
	if err := m.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	s := starts(t, spec.Dir)
	if len(s) != 2 || !strings.Contains(s[1], "id=vda,bootindex=1") {
		t.Fatalf("starts after disk reset = %q", s)
	}
	if d, _ := m.BootDevice(); d != BootDefault {
		t.Fatalf("once override not used up: %q", d)
	}
	// Later reboots of that QEMU boot the default order again: its
	// bootindex is changed at run time, disk last.
	if b, _ := os.ReadFile(filepath.Join(spec.Dir, "qom")); string(b) != "vda=3\nnic0=1\nvda=2\n" {
		t.Fatalf("qom-set calls = %q", b)
	}
	// So a plain reset stays in place.
	if err := m.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if s := starts(t, spec.Dir); len(s) != 2 {
		t.Fatalf("starts after reset = %q", s)
	}
	// A persistent disk boot needs a new QEMU again; nothing to revert.
	if err := m.SetBootDevice(BootDisk, true); err != nil {
		t.Fatal(err)
	}
	if err := m.Reset(ctx); err != nil {
		t.Fatal(err)
	}
	if s := starts(t, spec.Dir); len(s) != 3 || !strings.Contains(s[2], "id=vda,bootindex=1") {
		t.Fatalf("starts after persistent disk reset = %q", s)
	}
	if b, _ := os.ReadFile(filepath.Join(spec.Dir, "qom")); strings.Count(string(b), "\n") != 3 {
		t.Fatalf("qom-set calls = %q", b)
	}
	wantState(t, m, On)

	// Persistent overrides stay.
	if err := m.SetBootDevice(BootPXE, true); err != nil {
		t.Fatal(err)
	}
	if err := m.PowerCycle(ctx); err != nil {
		t.Fatal(err)
	}
	if d, p := m.BootDevice(); d != BootPXE || !p {
		t.Fatalf("persistent override = %q, %v", d, p)
	}

	// Graceful: the fake guest powers off on the ACPI button.
	if err := m.PowerOff(ctx, true); err != nil {
		t.Fatal(err)
	}
	wantState(t, m, Off)
	if err := m.PowerOff(ctx, true); err != nil { // idempotent
		t.Fatal(err)
	}

	// The guest powering itself off (QEMU exits) shows as Off.
	if err := m.PowerCycle(ctx); err != nil { // off: just on
		t.Fatal(err)
	}
	wantState(t, m, On)
	m.mu.Lock()
	p := m.proc
	m.mu.Unlock()
	syscall.Kill(p.pid, syscall.SIGTERM)
	<-p.done
	wantState(t, m, Off)

	// A guest ignoring ACPI is forced off after ShutdownTimeout.
	t.Setenv("VM_TEST_FAKE_IGNORE_ACPI", "1")
	if err := m.PowerOn(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := m.PowerOff(ctx, true); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < spec.ShutdownTimeout || d > spec.ShutdownTimeout+5*time.Second {
		t.Errorf("graceful fallback took %s", d)
	}
	wantState(t, m, Off)
	if _, err := os.Stat(filepath.Join(spec.Dir, "serial.log")); err != nil {
		t.Error(err)
	}

	if err := m.PowerOn(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	wantState(t, m, Off)
	if err := m.PowerOn(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("PowerOn after Close = %v", err)
	}
	if _, err := os.Stat(filepath.Join(spec.Dir, "violation")); err == nil {
		t.Fatal("two QEMUs ran at once")
	}
}

func TestMachineStartFails(t *testing.T) {
	spec := fakeSpec(t)
	spec.QEMU = "/bin/false"
	m, err := New(spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = m.PowerOn(context.Background())
	if err == nil || !strings.Contains(err.Error(), "QEMU exited") {
		t.Fatalf("PowerOn = %v", err)
	}
	wantState(t, m, Off)
	// A failed start does not use up a one-time override.
	m.SetBootDevice(BootDisk, false)
	m.PowerOn(context.Background())
	if d, _ := m.BootDevice(); d != BootDisk {
		t.Fatalf("override after failed start = %q", d)
	}
}

// TestMachineConcurrent races power operations from many goroutines: the
// fake QEMU's lock proves no two QEMUs of the machine ever run at once.
func TestMachineConcurrent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	spec := fakeSpec(t)
	m, err := New(spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for range 12 {
				var err error
				switch r.IntN(7) {
				case 0, 1:
					err = m.PowerOn(ctx)
				case 2:
					err = m.PowerOff(ctx, false)
				case 3:
					err = m.PowerOff(ctx, true)
				case 4:
					if err = m.Reset(ctx); errors.Is(err, ErrPoweredOff) {
						err = nil
					}
				case 5:
					err = m.PowerCycle(ctx)
				case 6:
					if err = m.SetBootDevice([]BootDevice{BootDefault, BootPXE, BootDisk}[r.IntN(3)], r.IntN(2) == 0); err == nil {
						_, err = m.PowerState(ctx)
					}
				}
				if err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if b, err := os.ReadFile(filepath.Join(spec.Dir, "violation")); err == nil {
		t.Fatalf("two QEMUs ran at once: %s", b)
	}
	// The state agrees with the processes: On exactly when a fake QEMU
	// holds the lock.
	st, err := m.PowerState(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if held := lockHeld(t, spec.Dir); held != (st == On) {
		t.Fatalf("PowerState %s but QEMU lock held = %v", st, held)
	}
	if err := m.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if lockHeld(t, spec.Dir) {
		t.Fatal("a QEMU outlived Close")
	}
	t.Logf("%d QEMU starts", len(starts(t, spec.Dir)))
}

func lockHeld(t *testing.T, dir string) bool {
	f, err := os.OpenFile(filepath.Join(dir, "qemu.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		return true
	}
	syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false
}

// TestMachineQEMU drives a real QEMU (TCG) with an empty disk and no NIC.
func TestMachineQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no real QEMU")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed (apt-get install -y qemu-system-x86 ovmf ipxe-qemu)")
	}
	for _, fw := range []string{"uefi", "bios"} {
		t.Run(fw, func(t *testing.T) {
			if fw == "uefi" {
				if _, err := os.Stat(DefaultOVMFCode); err != nil {
					if _, err := os.Stat(DefaultOVMFCombined); err != nil {
						t.Skip("no OVMF (apt-get install -y ovmf)")
					}
				}
			}
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			dir := t.TempDir()
			m, err := New(Spec{Name: "qemu-" + fw, UUID: "5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0001", MemoryMiB: 256,
				Firmware: fw, Disk: filepath.Join(dir, "disk.raw"), DiskSize: 64 << 20, Dir: dir, QEMU: qemu,
				ShutdownTimeout: 2 * time.Second}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close(ctx)
			if err := m.PowerOn(ctx); err != nil {
				t.Fatal(err)
			}
			wantState(t, m, On)
			if err := m.Reset(ctx); err != nil {
				t.Fatal(err)
			}
			wantState(t, m, On)
			pid := m.proc.pid
			if err := m.SetBootDevice(BootDisk, false); err != nil {
				t.Fatal(err)
			}
			if err := m.Reset(ctx); err != nil { // new order: new QEMU
				t.Fatal(err)
			}
			wantState(t, m, On)
			if m.proc.pid == pid {
				t.Fatalf("reset with a disk override kept QEMU %d", pid)
			}
			if b, _ := os.ReadFile(filepath.Join(dir, "qemu.log")); !strings.Contains(string(b), `power on, boot "disk"`) {
				t.Errorf("qemu.log has no disk boot:\n%s", b)
			}
			// Firmware without an OS ignores the ACPI button: graceful
			// falls back to force after ShutdownTimeout.
			if err := m.PowerOff(ctx, true); err != nil {
				t.Fatal(err)
			}
			wantState(t, m, Off)
			if err := m.PowerOn(ctx); err != nil {
				t.Fatal(err)
			}
			if err := m.PowerOff(ctx, false); err != nil {
				t.Fatal(err)
			}
			wantState(t, m, Off)
			for _, f := range []string{"serial.log", "qemu.log", "disk.raw"} {
				if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
					t.Error(err)
				}
			}
			if fw == "uefi" {
				if _, err := os.Stat(filepath.Join(dir, "OVMF_VARS.fd")); err != nil {
					t.Error(err)
				}
			}
		})
	}
}
