// Package vm runs one lab machine as a QEMU process and drives its power
// and boot order the way a BMC would: QEMU running is "powered on", a
// guest power-off ends QEMU, and the boot order is fixed per QEMU start.
package vm

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Default firmware files (Debian's ovmf package). OVMF.fd is the
// combined image used when the split CODE/VARS pair is missing.
const (
	DefaultOVMFCode     = "/usr/share/OVMF/OVMF_CODE.fd"
	DefaultOVMFVars     = "/usr/share/OVMF/OVMF_VARS.fd"
	DefaultOVMFCombined = "/usr/share/ovmf/OVMF.fd"
)

// DefaultAccel is "kvm" when qemu can run a machine with KVM here, else
// "tcg". A /dev/kvm that opens is not enough: a nested hypervisor may
// offer one whose vCPUs QEMU cannot set up ("failed to set MSR", an abort
// at the first CPU reset), or one that starts and then stops the guest in
// its firmware's first instructions ("KVM internal error ... emulation
// failure": OVMF under some nested KVMs, seen here). So the probe runs the
// firmware the lab's machines run (OVMF when its files exist, else
// SeaBIOS) for kvmProbeRun and counts only a guest still running then
// (about 1 s; once per machine, when its BMC starts).
func DefaultAccel(qemu string) string {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return "tcg"
	}
	f.Close()
	if qemu == "" {
		qemu = "qemu-system-x86_64"
	}
	var firmware []string
	if _, err := os.Stat(DefaultOVMFCode); err == nil {
		if _, err := os.Stat(DefaultOVMFVars); err == nil {
			// snapshot=on: the guest's writes to its variables go to a
			// temporary overlay, not to Debian's template.
			firmware = []string{"-drive", "if=pflash,format=raw,unit=0,readonly=on,file=" + qemuEscape(DefaultOVMFCode),
				"-drive", "if=pflash,format=raw,unit=1,snapshot=on,file=" + qemuEscape(DefaultOVMFVars)}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if !kvmRuns(ctx, qemu, firmware) {
		return "tcg"
	}
	return "kvm"
}

// kvmProbeRun is how long the probe's guest must keep running: the
// failures seen stop it within 200 ms.
const kvmProbeRun = time.Second

// kvmRuns starts a small KVM guest with firmware (QEMU's arguments; none:
// SeaBIOS) and asks QEMU over QMP (stdio) for its status until
// kvmProbeRun has passed: true when it was "running" every time.
func kvmRuns(ctx context.Context, qemu string, firmware []string) bool {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	args := append([]string{"-nodefaults", "-no-user-config", "-accel", "kvm", "-cpu", "host",
		"-machine", "q35", "-m", "64", "-display", "none", "-qmp", "stdio"}, firmware...)
	cmd := exec.CommandContext(ctx, qemu, args...)
	in, err := cmd.StdinPipe()
	if err != nil {
		return false
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return false
	}
	if err := cmd.Start(); err != nil {
		return false
	}
	defer func() {
		_, _ = io.WriteString(in, `{"execute":"quit"}`+"\n")
		in.Close()
		// A QEMU that does not take quit is killed (CommandContext).
		kill := time.AfterFunc(2*time.Second, cancel)
		_ = cmd.Wait()
		kill.Stop()
	}()
	sc := bufio.NewScanner(out)
	// ask sends a command and returns its answer, skipping QMP's events;
	// ok is false when QEMU ended or answered an error.
	ask := func(command string) (json.RawMessage, bool) {
		if _, err := io.WriteString(in, `{"execute":"`+command+`"}`+"\n"); err != nil {
			return nil, false
		}
		for sc.Scan() {
			var m struct {
				Return json.RawMessage `json:"return"`
				Error  json.RawMessage `json:"error"`
			}
			if json.Unmarshal(sc.Bytes(), &m) != nil {
				continue
			}
			switch {
			case m.Error != nil:
				return nil, false
			case m.Return != nil:
				return m.Return, true
			}
		}
		return nil, false
	}
	if _, ok := ask("qmp_capabilities"); !ok {
		return false
	}
	deadline := time.Now().Add(kvmProbeRun)
	for {
		r, ok := ask("query-status")
		var st struct {
			Status string `json:"status"`
		}
		if !ok || json.Unmarshal(r, &st) != nil || st.Status != "running" {
			return false
		}
		if time.Now().After(deadline) {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Spec describes one machine.
type Spec struct {
	Name      string // for logs and QEMU's -name
	UUID      string // SMBIOS type 1 uuid (stable)
	MemoryMiB int    // default 1024
	CPUs      int    // default 1
	Firmware  string // "uefi" (OVMF, default) or "bios" (SeaBIOS)
	Disk      string // raw disk image; created sparse with DiskSize when missing; "" for none
	DiskSize  int64  // bytes, default 4 GiB
	NICs      []NIC
	Dir       string // state: qmp.sock, serial.sock, serial.log, qemu.log, OVMF_VARS.fd
	QEMU      string // binary, default "qemu-system-x86_64" from PATH
	Accel     string // "" = DefaultAccel: "kvm" when KVM works here, else "tcg"
	Extra     []string
	// IPMI is host:port of an external BMC's VM interface (ipmi_sim's
	// `serial kcs … codec VM`): QEMU connects to it with an
	// ipmi-bmc-extern device behind an ISA KCS interface, so the guest
	// has a BMC in band as a server does. Empty: none.
	IPMI string

	// OVMFCode and OVMFVars are the UEFI firmware and its variable
	// store template (copied to Dir once); defaults DefaultOVMFCode and
	// DefaultOVMFVars, with DefaultOVMFCombined as -bios when the code
	// file is missing.
	OVMFCode, OVMFVars string
	// ShutdownTimeout bounds a graceful power-off before it is forced;
	// default 2 minutes.
	ShutdownTimeout time.Duration
}

// NIC is one virtio network card on an existing tap device.
type NIC struct {
	Tap  string // a persistent tap device the lab created
	MAC  string
	Boot bool // PXE boots from this NIC
}

// BootDevice is what the machine boots first.
type BootDevice string

// Boot devices. BootDefault is the machine's own order: the boot NIC,
// then the disk (metal-stack machines always PXE first).
const (
	BootDefault BootDevice = ""
	BootPXE     BootDevice = "pxe"
	BootDisk    BootDevice = "disk"
)

// Valid reports whether b is a known boot device.
func (b BootDevice) Valid() bool { return b == BootDefault || b == BootPXE || b == BootDisk }

// pxeFirst reports whether b puts the network before the disk.
func (b BootDevice) pxeFirst() bool { return b != BootDisk }

// ParseNIC parses "tap=<tap>,mac=<mac>[,boot]".
func ParseNIC(s string) (NIC, error) {
	var n NIC
	for _, f := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(f), "=")
		switch k {
		case "tap":
			n.Tap = v
		case "mac":
			n.MAC = strings.ToLower(v)
		case "boot":
			if v != "" {
				return NIC{}, fmt.Errorf("nic %q: boot takes no value", s)
			}
			n.Boot = true
		default:
			return NIC{}, fmt.Errorf("nic %q: unknown key %q (want tap=,mac=[,boot])", s, k)
		}
	}
	if n.Tap == "" || n.MAC == "" {
		return NIC{}, fmt.Errorf("nic %q: tap= and mac= are required", s)
	}
	return n, nil
}

func (s Spec) withDefaults() Spec {
	if s.MemoryMiB == 0 {
		s.MemoryMiB = 1024
	}
	if s.CPUs == 0 {
		s.CPUs = 1
	}
	if s.Firmware == "" {
		s.Firmware = "uefi"
	}
	if s.DiskSize == 0 {
		s.DiskSize = 4 << 30
	}
	if s.QEMU == "" {
		s.QEMU = "qemu-system-x86_64"
	}
	if s.Accel == "" {
		s.Accel = DefaultAccel(s.QEMU)
	}
	if s.OVMFCode == "" {
		s.OVMFCode = DefaultOVMFCode
	}
	if s.OVMFVars == "" {
		s.OVMFVars = DefaultOVMFVars
	}
	if s.ShutdownTimeout == 0 {
		s.ShutdownTimeout = 2 * time.Minute
	}
	return s
}

func (s Spec) validate() error {
	switch {
	case s.Dir == "":
		return fmt.Errorf("vm %s: Dir is required", s.Name)
	case s.Firmware != "uefi" && s.Firmware != "bios":
		return fmt.Errorf("vm %s: firmware %q: want uefi or bios", s.Name, s.Firmware)
	case s.Accel != "kvm" && s.Accel != "tcg":
		return fmt.Errorf("vm %s: accel %q: want kvm or tcg", s.Name, s.Accel)
	case s.IPMI != "" && !hostPort(s.IPMI):
		return fmt.Errorf("vm %s: IPMI %q: want host:port", s.Name, s.IPMI)
	case strings.Contains(s.Dir, ","):
		// QEMU's -qmp and -chardev take the path inside a comma list.
		return fmt.Errorf("vm %s: Dir %q must not hold a comma", s.Name, s.Dir)
	case s.MemoryMiB < 0 || s.CPUs < 0 || s.DiskSize < 0:
		return fmt.Errorf("vm %s: memory, cpus and disk size must be positive", s.Name)
	}
	boot := 0
	for i, n := range s.NICs {
		if n.Tap == "" || n.MAC == "" {
			return fmt.Errorf("vm %s: nic %d: tap and mac are required", s.Name, i)
		}
		if strings.ContainsAny(n.Tap+n.MAC, ", ") {
			return fmt.Errorf("vm %s: nic %d: tap and mac must not hold commas or spaces", s.Name, i)
		}
		if n.Boot {
			boot++
		}
	}
	if boot > 1 {
		return fmt.Errorf("vm %s: %d boot NICs, want at most one", s.Name, boot)
	}
	return nil
}

// Paths in Dir.
func (s Spec) qmpPath() string    { return filepath.Join(s.Dir, "qmp.sock") }
func (s Spec) serialSock() string { return filepath.Join(s.Dir, "serial.sock") }
func (s Spec) serialLog() string  { return filepath.Join(s.Dir, "serial.log") }
func (s Spec) qemuLog() string    { return filepath.Join(s.Dir, "qemu.log") }
func (s Spec) varsPath() string   { return filepath.Join(s.Dir, "OVMF_VARS.fd") }

// splitOVMF reports whether the split CODE/VARS firmware is used.
func (s Spec) splitOVMF() bool {
	_, err := os.Stat(s.OVMFCode)
	return err == nil
}

// Args returns QEMU's arguments (without the binary) for a start that
// boots boot first. Unset fields take their defaults; with Accel unset
// the result depends on DefaultAccel, and with UEFI on which OVMF files exist.
func (s Spec) Args(boot BootDevice) []string {
	s = s.withDefaults()
	a := []string{"-nodefaults", "-no-user-config"}
	if s.Name != "" {
		a = append(a, "-name", qemuEscape(s.Name))
	}
	if s.Accel == "kvm" {
		a = append(a, "-accel", "kvm", "-cpu", "host")
	} else {
		// Without -cpu max (RDRAND) the guest kernel's CRNG is not
		// seeded early under TCG and DHCP clients stall for minutes.
		a = append(a, "-accel", "tcg", "-cpu", "max")
	}
	// graphics=off: with no display SeaBIOS (and the iPXE it runs)
	// writes to the serial console, like OVMF does anyway.
	a = append(a, "-machine", "q35,graphics=off",
		"-m", strconv.Itoa(s.MemoryMiB),
		"-smp", strconv.Itoa(s.CPUs),
		"-display", "none")
	if s.UUID != "" {
		a = append(a, "-smbios", "type=1,uuid="+qemuEscape(s.UUID))
	}
	if s.Firmware == "uefi" {
		if s.splitOVMF() {
			a = append(a,
				"-drive", "if=pflash,format=raw,unit=0,readonly=on,file="+qemuEscape(s.OVMFCode),
				"-drive", "if=pflash,format=raw,unit=1,file="+qemuEscape(s.varsPath()))
		} else {
			a = append(a, "-bios", DefaultOVMFCombined)
		}
		// The NIC's iPXE ROM does the network boot with its own stack.
		// OVMF's IP stacks would add PXE and HTTP boot options for the same
		// NIC, which share its bootindex and so come before the disk: each
		// runs pixie's iPXE again (~18 s under TCG) before the disk boots.
		a = append(a, "-fw_cfg", "name=opt/org.tianocore/IPv4Support,string=n",
			"-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=n")
	} // else: SeaBIOS is QEMU's default

	// bootindex is the only order both SeaBIOS and OVMF honour; QEMU
	// reads it at start, so a new order needs a new QEMU.
	nicIdx, diskIdx := 1, 2
	if !boot.pxeFirst() {
		nicIdx, diskIdx = 2, 1
	}
	for i, n := range s.NICs {
		id := "net" + strconv.Itoa(i)
		a = append(a, "-netdev", "tap,id="+id+",ifname="+n.Tap+",script=no,downscript=no")
		dev := "virtio-net-pci,netdev=" + id + ",id=nic" + strconv.Itoa(i) + ",mac=" + n.MAC
		if n.Boot {
			dev += ",bootindex=" + strconv.Itoa(nicIdx)
		}
		a = append(a, "-device", dev)
	}
	if s.Disk != "" {
		a = append(a,
			"-drive", "file="+qemuEscape(s.Disk)+",if=none,id=disk0,format=raw,cache=unsafe",
			"-device", "virtio-blk-pci,drive=disk0,id=vda,bootindex="+strconv.Itoa(diskIdx))
	}
	a = append(a,
		"-chardev", "socket,id=ser0,path="+s.serialSock()+",server=on,wait=off,logfile="+s.serialLog()+",logappend=on",
		"-serial", "chardev:ser0",
		"-qmp", "unix:"+s.qmpPath()+",server=on,wait=off")
	if s.IPMI != "" {
		host, port, _ := net.SplitHostPort(s.IPMI)
		// reconnect: QEMU keeps trying while the BMC is not listening
		// (yet, or again after a BMC restart), as mini-lab's machines do.
		a = append(a,
			"-chardev", "socket,id=ipmi0,host="+host+",port="+port+",reconnect=10",
			"-device", "ipmi-bmc-extern,chardev=ipmi0,id=bmc0",
			"-device", "isa-ipmi-kcs,bmc=bmc0")
	}
	return append(a, s.Extra...)
}

// hostPort reports whether s is a plain host:port, fit for a comma list.
func hostPort(s string) bool {
	h, p, err := net.SplitHostPort(s)
	return err == nil && h != "" && p != "" && !strings.ContainsAny(s, ", ")
}

// qemuEscape doubles commas, QEMU's escape inside option values.
func qemuEscape(s string) string { return strings.ReplaceAll(s, ",", ",,") }
