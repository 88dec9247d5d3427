package disk

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// TestApplyESPAndRoot applies the usual server layout, an EFI system
// partition and an ext4 root, to a 256 MiB loop disk.
func TestApplyESPAndRoot(t *testing.T) {
	needTools(t, "mkfs.ext4", "mkfs.vfat", "blkid", "partx", "tune2fs")
	dev, _ := loopDisk(t, 256<<20)
	target := t.TempDir()
	espPath := "/boot/efi"
	if !kernelSupports("vfat") {
		// The ESP is still formatted, only not mounted.
		t.Logf("kernel has no vfat: the ESP is formatted but not mounted")
		espPath = ""
	}
	l := &agentv1.Layout{
		Disks: []*agentv1.Disk{{Device: dev, WipeOnReinstall: true, Partitions: []*agentv1.DiskPartition{
			{Number: 1, Label: "efi", SizeBytes: 64 << 20, GptType: "ef00"},
			{Number: 2, Label: "root", GptType: "8300"},
		}}},
		Filesystems: []*agentv1.Filesystem{
			{Path: espPath, Device: dev + "p1", Format: "vfat", Label: "EFI", MountOptions: []string{"umask=0077"}},
			{Path: "/", Device: dev + "p2", Format: "ext4", Label: "root", MountOptions: []string{"noatime"}, CreateOptions: []string{"-m", "0"}},
		},
	}
	a, err := Apply(context.Background(), l, Options{Target: target, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	applied(t, a)

	// An independent reader of the table: util-linux's partx.
	out, err := exec.Command("partx", "--show", "--noheadings", "--output", "NR,START,SECTORS,TYPE,NAME", dev).CombinedOutput()
	if err != nil {
		t.Fatalf("partx: %v: %s", err, out)
	}
	rows := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(rows) != 2 ||
		strings.Join(strings.Fields(rows[0]), " ") != "1 2048 131072 c12a7328-f81f-11d2-ba4b-00a0c93ec93b efi" ||
		!strings.HasPrefix(strings.Join(strings.Fields(rows[1]), " "), "2 133120 ") ||
		!strings.HasSuffix(rows[1], "0fc63daf-8483-4772-8e79-3d69d8477de4 root") {
		t.Errorf("partx reads:\n%s", out)
	}
	for _, p := range []string{dev + "p1", dev + "p2"} {
		if fi, err := os.Stat(p); err != nil || fi.Mode()&os.ModeDevice == 0 {
			t.Errorf("partition node %s: %v %v", p, fi, err)
		}
	}
	if got := blkid(t, dev+"p1", "TYPE"); got != "vfat" {
		t.Errorf("p1 is %q, want vfat", got)
	}
	if got := blkid(t, dev+"p2", "LABEL"); got != "root" {
		t.Errorf("p2 label %q, want root", got)
	}
	// create_options reached mkfs: no reserved blocks.
	out, err = exec.Command("tune2fs", "-l", dev+"p2").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "Reserved block count:     0\n") {
		t.Errorf("tune2fs -l: %v\n%s", err, out)
	}

	root := a.Root()
	if root == nil || root.Device != dev+"p2" || root.UUID != blkid(t, dev+"p2", "UUID") {
		t.Fatalf("Root() = %+v, blkid UUID %s", root, blkid(t, dev+"p2", "UUID"))
	}
	if typ, opts, ok := mountedAt(t, target); !ok || typ != "ext4" || !strings.Contains(opts, "noatime") {
		t.Errorf("target mounted: %v %s %s", ok, typ, opts)
	}
	if err := os.WriteFile(filepath.Join(target, "hello"), []byte("world"), 0o644); err != nil {
		t.Fatal(err)
	}
	fstab := a.Fstab()
	if !strings.Contains(fstab, "UUID="+root.UUID+" / ext4 noatime 0 1\n") {
		t.Errorf("fstab lacks the root line:\n%s", fstab)
	}
	espUUID := blkid(t, dev+"p1", "UUID")
	if espPath != "" {
		esp := a.ESP()
		if esp == nil || esp.UUID != espUUID {
			t.Fatalf("ESP() = %+v, want UUID %s", esp, espUUID)
		}
		if typ, _, ok := mountedAt(t, filepath.Join(target, "boot/efi")); !ok || typ != "vfat" {
			t.Errorf("ESP not mounted: %v %s", ok, typ)
		}
		if !strings.Contains(fstab, "UUID="+espUUID+" /boot/efi vfat umask=0077 0 2\n") {
			t.Errorf("fstab lacks the ESP line:\n%s", fstab)
		}
	} else if a.ESP() != nil || strings.Contains(fstab, espUUID) {
		t.Errorf("an unmounted ESP is in ESP() %v or fstab:\n%s", a.ESP(), fstab)
	}

	if err := a.Unmount(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, _, ok := mountedAt(t, target); ok {
		t.Error("target still mounted after Unmount")
	}
	if err := a.Unmount(context.Background()); err != nil {
		t.Errorf("second Unmount: %v", err)
	}
}

// A mount that fails (vfat on a kernel without it) unmounts what Apply
// had mounted before.
func TestApplyMountFailureUnmounts(t *testing.T) {
	needTools(t, "mkfs.ext4", "mkfs.vfat")
	if kernelSupports("vfat") {
		t.Skip("the kernel mounts vfat; this test needs a mount that fails")
	}
	dev, _ := loopDisk(t, 128<<20)
	target := t.TempDir()
	l := &agentv1.Layout{
		Disks: []*agentv1.Disk{{Device: dev, Partitions: []*agentv1.DiskPartition{
			{Number: 1, SizeBytes: 32 << 20, GptType: "ef00"}, {Number: 2},
		}}},
		Filesystems: []*agentv1.Filesystem{
			{Path: "/boot/efi", Device: dev + "p1", Format: "vfat"},
			{Path: "/", Device: dev + "p2", Format: "ext4"},
		},
	}
	_, err := Apply(context.Background(), l, Options{Target: target})
	if err == nil || !strings.Contains(err.Error(), "does not support vfat") {
		t.Fatalf("Apply = %v, want the vfat mount failure", err)
	}
	if _, _, ok := mountedAt(t, target); ok {
		t.Error("root left mounted after the failed Apply")
	}
}

// Invalid layouts are refused naming the field, and the disk is not
// touched: its image's bytes stay the same.
func TestApplyInvalid(t *testing.T) {
	dev, img := loopDisk(t, 64<<20)
	// Give the disk something to lose.
	seed := &agentv1.Layout{
		Disks:       []*agentv1.Disk{{Device: dev, Partitions: []*agentv1.DiskPartition{{Number: 1}}}},
		Filesystems: []*agentv1.Filesystem{{Device: dev + "p1", Format: "none"}},
	}
	if _, err := Apply(context.Background(), seed, Options{Target: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	before := fileHash(t, img)
	p := func(n uint32, size uint64, typ string) *agentv1.DiskPartition {
		return &agentv1.DiskPartition{Number: n, SizeBytes: size, GptType: typ}
	}
	disk := func(parts ...*agentv1.DiskPartition) []*agentv1.Disk {
		return []*agentv1.Disk{{Device: dev, Partitions: parts}}
	}
	root := &agentv1.Filesystem{Path: "/", Device: dev + "p1", Format: "ext4"}
	for _, tc := range []struct {
		name   string
		l      *agentv1.Layout
		target string
		field  string
	}{
		{"no layout", nil, "", "layout.disks"},
		{"relative target", &agentv1.Layout{}, "mnt", "target"},
		{"unknown format", &agentv1.Layout{Disks: disk(p(1, 0, "")), Filesystems: []*agentv1.Filesystem{{Path: "/", Device: dev + "p1", Format: "btrfs"}}}, "", "layout.filesystems[0].format"},
		{"size 0 not last", &agentv1.Layout{Disks: disk(p(1, 0, ""), p(2, 1<<20, ""))}, "", "layout.disks[0].partitions[0].size_bytes"},
		{"too big", &agentv1.Layout{Disks: disk(p(1, 32<<20, ""), p(2, 32<<20, ""))}, "", "layout.disks[0].partitions[1].size_bytes"},
		{"missing disk", &agentv1.Layout{Disks: []*agentv1.Disk{{Device: "/dev/nonexistent-disk", Partitions: []*agentv1.DiskPartition{p(1, 0, "")}}}}, "", "layout.disks[0].device"},
		{"not a block device", &agentv1.Layout{Disks: []*agentv1.Disk{{Device: img}}}, "", "layout.disks[0].device"},
		{"disk twice", &agentv1.Layout{Disks: []*agentv1.Disk{{Device: dev}, {Device: dev}}}, "", "layout.disks[1].device"},
		{"duplicate mount path", &agentv1.Layout{Disks: disk(p(1, 16<<20, ""), p(2, 0, "")), Filesystems: []*agentv1.Filesystem{root, {Path: "/", Device: dev + "p2", Format: "xfs"}}}, "", "layout.filesystems[1].path"},
		{"device twice", &agentv1.Layout{Disks: disk(p(1, 0, "")), Filesystems: []*agentv1.Filesystem{root, {Path: "/var", Device: dev + "p1", Format: "ext4"}}}, "", "layout.filesystems[1].device"},
		{"undefined device", &agentv1.Layout{Disks: disk(p(1, 0, "")), Filesystems: []*agentv1.Filesystem{{Path: "/", Device: dev + "p7", Format: "ext4"}}}, "", "layout.filesystems[0].device"},
		{"unknown gpt type", &agentv1.Layout{Disks: disk(p(1, 0, "zz00"))}, "", "layout.disks[0].partitions[0].gpt_type"},
		{"partition number twice", &agentv1.Layout{Disks: disk(p(1, 1<<20, ""), p(1, 0, ""))}, "", "layout.disks[0].partitions[1].number"},
		{"partition number 0", &agentv1.Layout{Disks: disk(p(0, 0, ""))}, "", "layout.disks[0].partitions[0].number"},
		{"relative path", &agentv1.Layout{Disks: disk(p(1, 0, "")), Filesystems: []*agentv1.Filesystem{{Path: "var", Device: dev + "p1", Format: "ext4"}}}, "", "layout.filesystems[0].path"},
		{"unclean path", &agentv1.Layout{Disks: disk(p(1, 0, "")), Filesystems: []*agentv1.Filesystem{{Path: "/var/../etc", Device: dev + "p1", Format: "ext4"}}}, "", "layout.filesystems[0].path"},
		{"swap with a path", &agentv1.Layout{Disks: disk(p(1, 0, "")), Filesystems: []*agentv1.Filesystem{{Path: "/swap", Device: dev + "p1", Format: "swap"}}}, "", "layout.filesystems[0].path"},
		{"tmpfs without path", &agentv1.Layout{Filesystems: []*agentv1.Filesystem{{Format: "tmpfs"}}}, "", "layout.filesystems[0].path"},
		{"label too long", &agentv1.Layout{Disks: disk(p(1, 0, "")), Filesystems: []*agentv1.Filesystem{{Path: "/", Device: dev + "p1", Format: "vfat", Label: "MUCH-TOO-LONG"}}}, "", "layout.filesystems[0].label"},
		{"mount option with a comma", &agentv1.Layout{Disks: disk(p(1, 0, "")), Filesystems: []*agentv1.Filesystem{{Path: "/", Device: dev + "p1", Format: "ext4", MountOptions: []string{"ro,nodev"}}}}, "", "layout.filesystems[0].mount_options[0]"},
		{"raid level", &agentv1.Layout{Disks: disk(p(1, 16<<20, "fd00"), p(2, 0, "fd00")), Raids: []*agentv1.Raid{{Name: "md0", Level: "4", Devices: []string{dev + "p1", dev + "p2"}}}}, "", "layout.raids[0].level"},
		{"raid too small", &agentv1.Layout{Disks: disk(p(1, 0, "fd00")), Raids: []*agentv1.Raid{{Name: "md0", Level: "1", Devices: []string{dev + "p1"}}}}, "", "layout.raids[0].devices"},
		{"raid name", &agentv1.Layout{Disks: disk(p(1, 16<<20, "fd00"), p(2, 0, "fd00")), Raids: []*agentv1.Raid{{Name: "../x", Level: "1", Devices: []string{dev + "p1", dev + "p2"}}}}, "", "layout.raids[0].name"},
		{"lv in unknown vg", &agentv1.Layout{Disks: disk(p(1, 0, "8e00")), VolumeGroups: []*agentv1.VolumeGroup{{Name: "vg0", Devices: []string{dev + "p1"}}}, LogicalVolumes: []*agentv1.LogicalVolume{{Name: "root", VolumeGroup: "vg1"}}}, "", "layout.logical_volumes[0].volume_group"},
		{"two lvs take the rest", &agentv1.Layout{Disks: disk(p(1, 0, "8e00")), VolumeGroups: []*agentv1.VolumeGroup{{Name: "vg0", Devices: []string{dev + "p1"}}}, LogicalVolumes: []*agentv1.LogicalVolume{{Name: "a", VolumeGroup: "vg0"}, {Name: "c", VolumeGroup: "vg0", SizeBytes: 1 << 20}, {Name: "b", VolumeGroup: "vg0"}}}, "", "layout.logical_volumes[2].size_bytes"},
		{"striped on one pv", &agentv1.Layout{Disks: disk(p(1, 0, "8e00")), VolumeGroups: []*agentv1.VolumeGroup{{Name: "vg0", Devices: []string{dev + "p1"}}}, LogicalVolumes: []*agentv1.LogicalVolume{{Name: "a", VolumeGroup: "vg0", LvmType: "striped"}}}, "", "layout.logical_volumes[0].lvm_type"},
		{"pv used twice", &agentv1.Layout{Disks: disk(p(1, 0, "8e00")), VolumeGroups: []*agentv1.VolumeGroup{{Name: "vg0", Devices: []string{dev + "p1"}}, {Name: "vg1", Devices: []string{dev + "p1"}}}}, "", "layout.volume_groups[1].devices[0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := tc.target
			if target == "" {
				target = t.TempDir()
			}
			a, err := Apply(context.Background(), tc.l, Options{Target: target})
			if err == nil {
				a.Unmount(context.Background())
				t.Fatal("Apply succeeded")
			}
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.field+":") && !strings.Contains(err.Error(), tc.field+" ") {
				t.Fatalf("err = %v, want ErrInvalid naming %s", err, tc.field)
			}
			if fileHash(t, img) != before {
				t.Fatal("the disk changed")
			}
		})
	}
}

// A disk without partitions carries its filesystem directly, with no
// partition table left on it.
func TestApplyWholeDisk(t *testing.T) {
	needTools(t, "mkfs.ext4")
	dev, _ := loopDisk(t, 64<<20)
	target := t.TempDir()
	l := &agentv1.Layout{
		Disks:       []*agentv1.Disk{{Device: dev}},
		Filesystems: []*agentv1.Filesystem{{Path: "/", Device: dev, Format: "ext4"}},
	}
	for _, reinstall := range []bool{false, true} {
		a, err := Apply(context.Background(), l, Options{Target: target, Reinstall: reinstall})
		if err != nil {
			t.Fatal(err)
		}
		applied(t, a)
		d, err := statBlock(dev)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(dev)
		if err != nil {
			t.Fatal(err)
		}
		sigs := Probe(f, d.size)
		f.Close()
		if len(sigs) != 1 || sigs[0].Type != "ext4" || sigs[0].UUID != a.Root().UUID {
			t.Errorf("reinstall %v: signatures %v, want only the ext4 %s", reinstall, sigs, a.Root().UUID)
		}
		if err := a.Unmount(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}
