package disk

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// TestReinstallKeepsData installs on two disks, writes to both, then
// reinstalls: the root disk (wipe_on_reinstall) starts empty, the data
// disk keeps its files and its filesystem UUID. Before the reinstall the
// data disk's partitions are removed from the kernel, as after booting a
// kernel that cannot parse GPTs, so Apply has to bring them back itself.
func TestReinstallKeepsData(t *testing.T) {
	needTools(t, "mkfs.ext4")
	sys, _ := loopDisk(t, 128<<20)
	data, _ := loopDisk(t, 128<<20)
	l := &agentv1.Layout{
		Disks: []*agentv1.Disk{
			{Device: sys, WipeOnReinstall: true, Partitions: []*agentv1.DiskPartition{{Number: 1}}},
			{Device: data, Partitions: []*agentv1.DiskPartition{{Number: 1, SizeBytes: 16 << 20}, {Number: 2}}},
		},
		Filesystems: []*agentv1.Filesystem{
			{Path: "/", Device: sys + "p1", Format: "ext4"},
			{Path: "/var/lib/data", Device: data + "p2", Format: "ext4"},
		},
	}
	target := t.TempDir()
	first, err := Apply(context.Background(), l, Options{Target: target})
	if err != nil {
		t.Fatal(err)
	}
	applied(t, first)
	if !slices.Equal(first.Wiped, []string{sys, data}) {
		t.Errorf("first install wiped %v", first.Wiped)
	}
	for _, f := range []string{"old-install", "var/lib/data/precious"} {
		if err := os.WriteFile(filepath.Join(target, f), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := first.Unmount(context.Background()); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"1", "2"} {
		if out, err := exec.Command("delpart", data, n).CombinedOutput(); err != nil {
			t.Fatalf("delpart: %v: %s", err, out)
		}
	}
	if _, err := os.Stat(data + "p2"); err == nil {
		t.Fatal("partition node still there after delpart")
	}

	second, err := Apply(context.Background(), l, Options{Target: target, Reinstall: true})
	if err != nil {
		t.Fatal(err)
	}
	applied(t, second)
	if !slices.Equal(second.Wiped, []string{sys}) {
		t.Errorf("reinstall wiped %v, want only %s", second.Wiped, sys)
	}
	if _, err := os.Stat(filepath.Join(target, "old-install")); !os.IsNotExist(err) {
		t.Errorf("the root disk kept the old install: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(target, "var/lib/data/precious")); err != nil || string(b) != "x" {
		t.Errorf("data disk lost its file: %q %v", b, err)
	}
	if second.Root().UUID == first.Root().UUID {
		t.Error("root filesystem was not recreated")
	}
	if second.Mounts[1].UUID != first.Mounts[1].UUID {
		t.Errorf("data filesystem UUID changed %s → %s", first.Mounts[1].UUID, second.Mounts[1].UUID)
	}
	if !strings.Contains(second.Fstab(), "UUID="+first.Mounts[1].UUID+" /var/lib/data ext4 defaults 0 2") {
		t.Errorf("fstab:\n%s", second.Fstab())
	}
}

// recorder is a Runner that records the commands and pretends they work;
// blkid answers with a made-up UUID.
type recorder struct {
	mu   sync.Mutex
	cmds []string
}

func (r *recorder) run(_ context.Context, name string, args ...string) ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cmds = append(r.cmds, name+" "+strings.Join(args, " "))
	if name == "blkid" {
		return []byte(fmt.Sprintf("0000000%d-0000-4000-8000-000000000000\n", len(r.cmds))), nil
	}
	return nil, nil
}

// TestApplyRaidLVMCommands checks the mdadm and lvm commands of a RAID1 +
// LVM layout (and the reinstall's assemble/activate) with a recording
// runner: the host kernel of the lab has no md or device-mapper.
func TestApplyRaidLVMCommands(t *testing.T) {
	a, _ := loopDisk(t, 64<<20)
	b, _ := loopDisk(t, 64<<20)
	disk := func(dev string, wipe bool) *agentv1.Disk {
		return &agentv1.Disk{Device: dev, WipeOnReinstall: wipe, Partitions: []*agentv1.DiskPartition{{Number: 1, GptType: "fd00"}}}
	}
	l := &agentv1.Layout{
		Disks:          []*agentv1.Disk{disk(a, false), disk(b, false)},
		Raids:          []*agentv1.Raid{{Name: "md0", Level: "1", Devices: []string{a + "p1", b + "p1"}}},
		VolumeGroups:   []*agentv1.VolumeGroup{{Name: "vg0", Devices: []string{"/dev/md/md0"}}},
		LogicalVolumes: []*agentv1.LogicalVolume{{Name: "data", VolumeGroup: "vg0"}, {Name: "swap", VolumeGroup: "vg0", SizeBytes: 8 << 20}},
		Filesystems: []*agentv1.Filesystem{
			{Device: "/dev/vg0/data", Format: "xfs", Label: "data", CreateOptions: []string{"-m", "reflink=1"}},
			{Device: "/dev/vg0/swap", Format: "swap"},
		},
	}
	cfg := "--config=activation { udev_sync = 0 udev_rules = 0 } devices { obtain_device_list_from_udev = 0 }"
	for _, tc := range []struct {
		name      string
		reinstall bool
		want      []string
	}{
		{"install", false, []string{
			"mdadm --create /dev/md/md0 --run --metadata=1.2 --homehost=any --name=md0 --level=1 --raid-devices=2 " + a + "p1 " + b + "p1",
			"lvm pvcreate " + cfg + " --yes --force --force /dev/md/md0",
			"lvm vgcreate " + cfg + " --yes vg0 /dev/md/md0",
			"lvm lvcreate " + cfg + " --yes --wipesignatures y --zero y --name swap --size 8388608b vg0",
			"lvm lvcreate " + cfg + " --yes --wipesignatures y --zero y --name data --extents 100%FREE vg0",
			"mkfs.xfs -f -q -L data -m reflink=1 /dev/vg0/data",
			"mkswap -f /dev/vg0/swap",
			"blkid -o value -s UUID /dev/vg0/swap",
		}},
		{"reinstall", true, []string{
			"mdadm --assemble /dev/md/md0 --run " + a + "p1 " + b + "p1",
			"lvm vgchange " + cfg + " --activate y vg0",
			"blkid -o value -s UUID /dev/vg0/swap",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{}
			ap, err := Apply(context.Background(), l, Options{Target: t.TempDir(), Reinstall: tc.reinstall, Exec: r.run})
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(r.cmds, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("commands:\n%s\nwant:\n%s", strings.Join(r.cmds, "\n"), strings.Join(tc.want, "\n"))
			}
			if len(ap.Swaps) != 1 || ap.Swaps[0].UUID == "" || !slices.Equal(ap.Raids, []string{"/dev/md/md0"}) {
				t.Errorf("swaps %v raids %v", ap.Swaps, ap.Raids)
			}
		})
	}
}

// TestApplyRaidReal builds a RAID1 with a filesystem for real where the
// kernel has md.
func TestApplyRaidReal(t *testing.T) {
	if _, err := os.Stat("/proc/mdstat"); err != nil {
		t.Skip("the kernel has no md driver (no /proc/mdstat); RAID commands are covered by TestApplyRaidLVMCommands")
	}
	needTools(t, "mdadm", "mkfs.ext4")
	a, _ := loopDisk(t, 64<<20)
	b, _ := loopDisk(t, 64<<20)
	l := &agentv1.Layout{
		Disks: []*agentv1.Disk{
			{Device: a, Partitions: []*agentv1.DiskPartition{{Number: 1, GptType: "fd00"}}},
			{Device: b, Partitions: []*agentv1.DiskPartition{{Number: 1, GptType: "fd00"}}},
		},
		Raids:       []*agentv1.Raid{{Name: "mftest", Level: "1", Devices: []string{a + "p1", b + "p1"}}},
		Filesystems: []*agentv1.Filesystem{{Path: "/", Device: "/dev/md/mftest", Format: "ext4"}},
	}
	target := t.TempDir()
	ap, err := Apply(context.Background(), l, Options{Target: target})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { exec.Command("mdadm", "--stop", "/dev/md/mftest").Run() })
	applied(t, ap)
	if typ, _, ok := mountedAt(t, target); !ok || typ != "ext4" {
		t.Errorf("RAID root not mounted: %v %s", ok, typ)
	}
}
