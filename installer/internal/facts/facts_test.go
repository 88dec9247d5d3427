package facts

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// tree builds a fixture sysfs/procfs/devfs under t.TempDir.
type tree struct {
	t    *testing.T
	root Root
}

func newTree(t *testing.T) *tree {
	d := t.TempDir()
	r := Root{Sys: filepath.Join(d, "sys"), Proc: filepath.Join(d, "proc"), Dev: filepath.Join(d, "dev")}
	for _, p := range []string{r.Sys, r.Proc, r.Dev} {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return &tree{t: t, root: r}
}

func (tr *tree) file(path, content string) {
	tr.t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		tr.t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		tr.t.Fatal(err)
	}
}

func (tr *tree) sys(p, content string) { tr.file(filepath.Join(tr.root.Sys, p), content) }

// symlink makes link point at target, both below Sys, like sysfs does for
// class/net/X/device.
func (tr *tree) symlink(target, link string) {
	tr.t.Helper()
	l := filepath.Join(tr.root.Sys, link)
	if err := os.MkdirAll(filepath.Dir(l), 0o755); err != nil {
		tr.t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(tr.root.Sys, target), 0o755); err != nil {
		tr.t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(tr.root.Sys, target), l); err != nil {
		tr.t.Fatal(err)
	}
}

func cpuinfo(packages, threads int, vendor, model string) string {
	var b strings.Builder
	n := 0
	for p := range packages {
		for c := range threads {
			fmt.Fprintf(&b, "processor\t: %d\nvendor_id\t: %s\ncpu family\t: 6\nmodel name\t: %s\nphysical id\t: %d\nsiblings\t: %d\ncore id\t\t: %d\nflags\t\t: fpu vme de\n\n",
				n, vendor, model, p, threads, c/2)
			n++
		}
	}
	return b.String()
}

const meminfo = "MemTotal:       263842312 kB\nMemFree:        261234567 kB\nMemAvailable:   262000000 kB\n"

// server is a two-socket machine with mixed disks and NICs.
func server(t *testing.T) *tree {
	tr := newTree(t)
	tr.sys("class/dmi/id/product_uuid", "4C4C4544-0042-3510-8052-B2C04F4E3432\n")
	tr.sys("class/dmi/id/sys_vendor", "Dell Inc.\n")
	tr.sys("class/dmi/id/product_name", "PowerEdge R650\n")
	tr.sys("class/dmi/id/product_serial", "B5RN4B2\n")
	tr.sys("class/dmi/id/bios_vendor", "Dell Inc.\n")
	tr.sys("class/dmi/id/bios_version", "1.6.5\n")
	tr.sys("class/dmi/id/bios_date", "04/19/2022\n")
	tr.file(filepath.Join(tr.root.Proc, "cpuinfo"), cpuinfo(2, 8, "GenuineIntel", "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz"))
	tr.file(filepath.Join(tr.root.Proc, "meminfo"), meminfo)

	// NVMe with its partitions, which sysfs lists in class/block too.
	tr.sys("class/block/nvme0n1/size", "7501476528\n")
	tr.sys("class/block/nvme0n1/device/model", "SAMSUNG MZQL23T8HCLS-00A07               \n")
	tr.sys("class/block/nvme0n1/device/serial", "S64HNE0T123456      \n")
	tr.sys("class/block/nvme0n1/queue/rotational", "0\n")
	tr.sys("class/block/nvme0n1p1/size", "1048576\n")
	tr.sys("class/block/nvme0n1p1/partition", "1\n")
	// SATA disk: serial in VPD page 0x80.
	tr.sys("class/block/sda/size", "3907029168\n")
	tr.sys("class/block/sda/device/model", "ST2000NM0055-1V4\n")
	tr.sys("class/block/sda/device/vpd_pg80", "\x00\x80\x00\x14        ZC20ABCD")
	tr.sys("class/block/sda/queue/rotational", "1\n")
	tr.sys("class/block/sda/sda1/size", "2048\n")
	tr.sys("class/block/sda1/size", "2048\n")
	tr.sys("class/block/sda1/partition", "1\n")
	// virtio-blk: serial at the block level, no model.
	tr.sys("class/block/vda/size", "41943040\n")
	tr.sys("class/block/vda/serial", "lab-disk-0\n")
	tr.sys("class/block/vda/queue/rotational", "1\n")
	// Not disks.
	for _, n := range []string{"loop0", "loop1", "zram0", "ram0", "sr0", "dm-0", "md127", "nbd0"} {
		tr.sys("class/block/"+n+"/size", "2097152\n")
	}
	// A card reader without a card.
	tr.sys("class/block/sdb/size", "0\n")

	tr.symlink("devices/pci0000:00/0000:18:00.0", "class/net/eno1/device")
	tr.sys("class/net/eno1/address", "B4:96:91:AA:BB:01\n")
	tr.sys("class/net/eno1/speed", "25000\n")
	tr.symlink("devices/pci0000:00/0000:18:00.1", "class/net/eno2/device")
	tr.sys("class/net/eno2/address", "b4:96:91:aa:bb:02\n")
	tr.sys("class/net/eno2/speed", "-1\n") // link down
	tr.sys("class/net/br0/address", "b4:96:91:aa:bb:01\n")
	tr.sys("class/net/veth12ab/address", "6e:1d:22:33:44:55\n")
	tr.sys("class/net/lo/address", "00:00:00:00:00:00\n")

	tr.sys("bus/pci/devices/0000:3b:00.0/class", "0x030200\n")
	tr.sys("bus/pci/devices/0000:3b:00.0/vendor", "0x10de\n")
	tr.sys("bus/pci/devices/0000:3b:00.0/device", "0x20b5\n")
	tr.sys("bus/pci/devices/0000:03:00.0/class", "0x030000\n") // the BMC's VGA
	tr.sys("bus/pci/devices/0000:03:00.0/vendor", "0x102b\n")
	tr.sys("bus/pci/devices/0000:03:00.0/device", "0x0536\n")
	tr.sys("bus/pci/devices/0000:18:00.0/class", "0x020000\n")
	tr.sys("bus/pci/devices/0000:18:00.0/vendor", "0x8086\n")
	tr.sys("bus/pci/devices/0000:00:00.0/class", "0x060000\n")
	tr.sys("bus/pci/devices/0000:00:00.0/vendor", "0x8086\n")
	return tr
}

func TestCollectServer(t *testing.T) {
	tr := server(t)
	got, err := Collect(context.Background(), tr.root, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	want := &agentv1.MachineFacts{
		Cores:       16,
		MemoryBytes: 263842312 * 1024,
		Uuid:        "4c4c4544-0042-3510-8052-b2c04f4e3432",
		Vendor:      "Dell Inc.",
		Product:     "PowerEdge R650",
		Serial:      "B5RN4B2",
		Bios:        &agentv1.BIOSFact{Vendor: "Dell Inc.", Version: "1.6.5", Date: "04/19/2022"},
		Cpus: []*agentv1.CPUFact{
			{Vendor: "GenuineIntel", Model: "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", Threads: 8},
			{Vendor: "GenuineIntel", Model: "Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz", Threads: 8},
		},
		Disks: []*agentv1.DiskFact{
			{Name: "nvme0n1", SizeBytes: 7501476528 * 512, Model: "SAMSUNG MZQL23T8HCLS-00A07", Serial: "S64HNE0T123456"},
			{Name: "sda", SizeBytes: 3907029168 * 512, Model: "ST2000NM0055-1V4", Serial: "ZC20ABCD", Rotational: true},
			{Name: "vda", SizeBytes: 41943040 * 512, Serial: "lab-disk-0", Rotational: true},
		},
		Nics: []*agentv1.NICFact{
			{Name: "eno1", Mac: "b4:96:91:aa:bb:01", SpeedMbps: 25000},
			{Name: "eno2", Mac: "b4:96:91:aa:bb:02"},
		},
		Gpus: []*agentv1.GPUFact{
			{Vendor: "102b", Model: "0536", PciAddress: "0000:03:00.0"},
			{Vendor: "NVIDIA", Model: "20b5", PciAddress: "0000:3b:00.0"},
		},
	}
	if !proto.Equal(want, got) {
		t.Errorf("facts differ:\ngot:  %s\nwant: %s", prototext.Format(got), prototext.Format(want))
	}
	if got.Bmc != nil {
		t.Errorf("BMC %v without an IPMI device", got.Bmc)
	}
}

// A bare VM: no DMI, no PCI bus directory, one vCPU without physical id.
func TestCollectMinimal(t *testing.T) {
	tr := newTree(t)
	tr.file(filepath.Join(tr.root.Proc, "cpuinfo"), "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\n")
	tr.file(filepath.Join(tr.root.Proc, "meminfo"), "MemTotal: 1024 kB\n")
	got, err := Collect(context.Background(), tr.root, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := &agentv1.MachineFacts{Cores: 1, MemoryBytes: 1 << 20, Cpus: []*agentv1.CPUFact{{Vendor: "AuthenticAMD", Model: "AMD EPYC", Threads: 1}}}
	if !proto.Equal(want, got) {
		t.Errorf("got %v, want %v", got, want)
	}
}

func TestCollectErrors(t *testing.T) {
	for _, tc := range []struct {
		name, cpuinfo, meminfo string
		wantErr                string
	}{
		{"garbage meminfo", cpuinfo(1, 1, "x", "y"), "this is not meminfo\n", "no MemTotal"},
		{"meminfo NaN", cpuinfo(1, 1, "x", "y"), "MemTotal: lots kB\n", "malformed MemTotal"},
		{"meminfo unit", cpuinfo(1, 1, "x", "y"), "MemTotal: 12 parsecs\n", "unknown MemTotal unit"},
		{"meminfo zero", cpuinfo(1, 1, "x", "y"), "MemTotal: 0 kB\n", "MemTotal is 0"},
		{"meminfo overflow", cpuinfo(1, 1, "x", "y"), "MemTotal: 18446744073709551615 kB\n", "overflows"},
		{"meminfo missing", cpuinfo(1, 1, "x", "y"), "", "meminfo"},
		{"empty cpuinfo", "", meminfo, "no processors"},
		{"garbage cpuinfo", "processor : 0\nno colon here\n", meminfo, "malformed line"},
		{"bad physical id", "processor : 0\nphysical id : x\n", meminfo, "bad physical id"},
		{"cpuinfo missing", "", meminfo, "cpuinfo"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTree(t)
			if tc.name != "cpuinfo missing" {
				tr.file(filepath.Join(tr.root.Proc, "cpuinfo"), tc.cpuinfo)
			}
			if tc.name != "meminfo missing" {
				tr.file(filepath.Join(tr.root.Proc, "meminfo"), tc.meminfo)
			}
			f, err := Collect(context.Background(), tr.root, nil)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Collect = %v, %v; want error containing %q", f, err, tc.wantErr)
			}
		})
	}
}

func TestParseCPUInfo(t *testing.T) {
	arm := "processor\t: 0\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n\n" +
		"processor\t: 1\nBogoMIPS\t: 50.00\nCPU implementer\t: 0x41\nCPU part\t: 0xd0c\n\n" +
		"Hardware\t: Ampere\nSerial\t\t: 0000\n"
	for _, tc := range []struct {
		name string
		in   string
		want []*agentv1.CPUFact
	}{
		{"two sockets", cpuinfo(2, 8, "GenuineIntel", "Xeon"), []*agentv1.CPUFact{{Vendor: "GenuineIntel", Model: "Xeon", Threads: 8}, {Vendor: "GenuineIntel", Model: "Xeon", Threads: 8}}},
		{"four sockets", cpuinfo(4, 2, "AuthenticAMD", "EPYC"), []*agentv1.CPUFact{{Vendor: "AuthenticAMD", Model: "EPYC", Threads: 2}, {Vendor: "AuthenticAMD", Model: "EPYC", Threads: 2}, {Vendor: "AuthenticAMD", Model: "EPYC", Threads: 2}, {Vendor: "AuthenticAMD", Model: "EPYC", Threads: 2}}},
		{"no trailing blank line", "processor : 0\nvendor_id : V\nmodel name : M", []*agentv1.CPUFact{{Vendor: "V", Model: "M", Threads: 1}}},
		{"arm", arm, []*agentv1.CPUFact{{Vendor: "0x41", Threads: 2}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseCPUInfo([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d packages %v, want %v", len(got), got, tc.want)
			}
			for i := range got {
				if !proto.Equal(got[i], tc.want[i]) {
					t.Errorf("package %d: got %v, want %v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

// fakeBMC answers IPMI requests from a table keyed by netfn/cmd/data.
type fakeBMC map[string][]byte

func (f fakeBMC) request(_ context.Context, netfn, cmd byte, data []byte) ([]byte, error) {
	if r, ok := f[fmt.Sprintf("%02x/%02x/% x", netfn, cmd, data)]; ok {
		return r, nil
	}
	return nil, fmt.Errorf("no answer to %02x/%02x/% x", netfn, cmd, data)
}

func TestBMCFrom(t *testing.T) {
	devID := []byte{0, 0x20, 0x01, 0x03, 0x45, 0x02, 0xbf}
	ip := []byte{0, 0x11, 10, 1, 2, 3}
	mac := []byte{0, 0x11, 0x0c, 0xc4, 0x7a, 0x01, 0x02, 0x03}
	invalid := []byte{0x80}
	for _, tc := range []struct {
		name    string
		bmc     fakeBMC
		want    *agentv1.BMCFact
		wantErr bool
	}{
		{"channel 1", fakeBMC{"06/01/": devID, "0c/02/01 03 00 00": ip, "0c/02/01 05 00 00": mac},
			&agentv1.BMCFact{Address: "10.1.2.3", Mac: "0c:c4:7a:01:02:03", FirmwareVersion: "3.45"}, false},
		{"LAN on channel 8", fakeBMC{"06/01/": devID, "0c/02/01 03 00 00": invalid, "0c/02/08 03 00 00": ip, "0c/02/08 05 00 00": mac},
			&agentv1.BMCFact{Address: "10.1.2.3", Mac: "0c:c4:7a:01:02:03", FirmwareVersion: "3.45"}, false},
		{"unconfigured address", fakeBMC{"06/01/": devID, "0c/02/01 03 00 00": {0, 0x11, 0, 0, 0, 0}, "0c/02/01 05 00 00": mac},
			&agentv1.BMCFact{Mac: "0c:c4:7a:01:02:03", FirmwareVersion: "3.45"}, false},
		{"no LAN channel", fakeBMC{"06/01/": devID}, &agentv1.BMCFact{FirmwareVersion: "3.45"}, false},
		{"short LAN answer", fakeBMC{"06/01/": devID, "0c/02/01 03 00 00": {0, 0x11, 10}}, &agentv1.BMCFact{FirmwareVersion: "3.45"}, false},
		{"device id fails", fakeBMC{"06/01/": {0xc1}}, nil, true},
		{"silent", fakeBMC{}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := bmcFrom(context.Background(), tc.bmc)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if !proto.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}
}

// The ioctl numbers depend on the struct sizes matching the kernel's.
func TestIPMIIoctlNumbers(t *testing.T) {
	if ipmictlSendCommand != 0x8028690d {
		t.Errorf("IPMICTL_SEND_COMMAND = %#x, want 0x8028690d", ipmictlSendCommand)
	}
	if ipmictlReceiveMsgTrun != 0xc030690b {
		t.Errorf("IPMICTL_RECEIVE_MSG_TRUNC = %#x, want 0xc030690b", ipmictlReceiveMsgTrun)
	}
}

func TestReadBMCNoDevice(t *testing.T) {
	b, err := readBMC(context.Background(), filepath.Join(t.TempDir(), "ipmi0"))
	if b != nil || err != nil {
		t.Errorf("readBMC without a device = %v, %v; want nil, nil", b, err)
	}
}
