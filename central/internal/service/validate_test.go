package service

import (
	"strings"
	"testing"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func TestParseSemverAndOrder(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"12.0.0", true}, {"v12.1", true}, {"12", true}, {"1.2.3-rc1", true}, {"1.2.3+build", true},
		{"", false}, {"a.b.c", false}, {"1.2.3.4", false}, {"01.2.3", false}, {"1..3", false},
	}
	for _, tt := range tests {
		if _, ok := parseSemver(tt.in); ok != tt.ok {
			t.Errorf("parseSemver(%q) ok = %v, want %v", tt.in, ok, tt.ok)
		}
	}
	ordered := []string{"1.0.0-alpha", "1.0.0-beta", "1.0.0", "1.0.1", "1.2.0", "2.0.0", "10.0.0"}
	for i := 1; i < len(ordered); i++ {
		a, _ := parseSemver(ordered[i-1])
		b, _ := parseSemver(ordered[i])
		if !a.less(b) || b.less(a) {
			t.Errorf("%s < %s does not hold", ordered[i-1], ordered[i])
		}
	}
}

func FuzzParseSemver(f *testing.F) {
	for _, s := range []string{"12.0.0", "v1.2.3-rc.1+b", "0.0.0", "99999999999999999999.1.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, ok := parseSemver(s)
		if !ok {
			return
		}
		if v.less(v) {
			t.Fatalf("%q less than itself", s)
		}
	})
}

func TestSizeMatches(t *testing.T) {
	const gib = 1 << 30
	size := &apiv1.Size{Id: "s1", Constraints: []*apiv1.SizeConstraint{
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, Min: 4, Max: 8},
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY, Min: 8 * gib, Max: 64 * gib},
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_STORAGE, Min: 100 * gib, Max: 1000 * gib},
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU, Min: 1, Max: 2, Identifier: "H100*"},
	}}
	facts := func(cores uint32, mem uint64, disks []uint64, gpus ...string) *agentv1.MachineFacts {
		f := &agentv1.MachineFacts{Cores: cores, MemoryBytes: mem}
		for _, d := range disks {
			f.Disks = append(f.Disks, &agentv1.DiskFact{SizeBytes: d})
		}
		for _, g := range gpus {
			f.Gpus = append(f.Gpus, &agentv1.GPUFact{Model: g})
		}
		return f
	}
	tests := []struct {
		name string
		f    *agentv1.MachineFacts
		want bool
	}{
		{"fits", facts(8, 16*gib, []uint64{60 * gib, 60 * gib}, "H100 SXM"), true},
		{"storage summed below min", facts(8, 16*gib, []uint64{40 * gib, 40 * gib}, "H100"), false},
		{"too many cores", facts(9, 16*gib, []uint64{200 * gib}, "H100"), false},
		{"wrong gpu model", facts(8, 16*gib, []uint64{200 * gib}, "A100"), false},
		{"too many matching gpus", facts(8, 16*gib, []uint64{200 * gib}, "H100", "H100", "H100"), false},
		{"no gpu", facts(8, 16*gib, []uint64{200 * gib}), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := sizeMatches(size, tt.f); got != tt.want {
				t.Fatalf("sizeMatches = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestValidateFilesystemLayout(t *testing.T) {
	good := func() *apiv1.FilesystemLayout {
		return &apiv1.FilesystemLayout{
			Id: "raid-lvm",
			Disks: []*agentv1.Disk{
				{Device: "/dev/sda", Partitions: []*agentv1.DiskPartition{{Number: 1, SizeBytes: 512 << 20, GptType: "ef00"}, {Number: 2, GptType: "fd00"}}},
				{Device: "/dev/nvme0n1", Partitions: []*agentv1.DiskPartition{{Number: 1, SizeBytes: 512 << 20}, {Number: 2}}},
			},
			Raids:          []*agentv1.Raid{{Name: "root", Level: "1", Devices: []string{"/dev/sda2", "/dev/nvme0n1p2"}}},
			VolumeGroups:   []*agentv1.VolumeGroup{{Name: "vg0", Devices: []string{"/dev/md/root"}}},
			LogicalVolumes: []*agentv1.LogicalVolume{{Name: "root", VolumeGroup: "vg0", LvmType: "linear"}},
			Filesystems: []*agentv1.Filesystem{
				{Path: "/boot/efi", Device: "/dev/sda1", Format: "vfat"},
				{Path: "/", Device: "/dev/vg0/root", Format: "ext4"},
			},
		}
	}
	tests := []struct {
		name  string
		edit  func(*apiv1.FilesystemLayout)
		field string
	}{
		{"valid", func(*apiv1.FilesystemLayout) {}, ""},
		{"dangling raid device", func(l *apiv1.FilesystemLayout) { l.Raids[0].Devices[1] = "/dev/sdz9" }, "filesystem_layout.raids[0].devices"},
		{"unknown vg", func(l *apiv1.FilesystemLayout) { l.LogicalVolumes[0].VolumeGroup = "vg9" }, "filesystem_layout.logical_volumes[0].volume_group"},
		{"no root", func(l *apiv1.FilesystemLayout) { l.Filesystems = l.Filesystems[:1] }, "filesystem_layout.filesystems"},
		{"bad format", func(l *apiv1.FilesystemLayout) { l.Filesystems[1].Format = "zfs" }, "filesystem_layout.filesystems[1].format"},
		{"rest before last", func(l *apiv1.FilesystemLayout) { l.Disks[0].Partitions[0].SizeBytes = 0 }, "filesystem_layout.disks[0].partitions[0].size_bytes"},
		{"bad raid level", func(l *apiv1.FilesystemLayout) { l.Raids[0].Level = "7" }, "filesystem_layout.raids[0].level"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := good()
			tt.edit(l)
			err := validateFilesystemLayout(l)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("error %v does not name %s", err, tt.field)
			}
		})
	}
}

func TestViolationsPrefix(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"10.0.0.0/8", true}, {"fd00::/48", true}, {"10.0.0.1/8", false}, {"10.0.0.0", false},
		{"fe80::/64%eth0", false}, {"::ffff:10.0.0.0/104", false}, {"", false},
	}
	for _, tt := range tests {
		var v violations
		_, ok := v.prefix("p", tt.in)
		if ok != tt.ok || (v.err() == nil) != tt.ok {
			t.Errorf("prefix(%q) ok = %v, err = %v; want ok %v", tt.in, ok, v.err(), tt.ok)
		}
	}
}

func FuzzValidatePrefix(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "fd00::/48", "1.2.3.4/33", "::/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var v violations
		p, ok := v.prefix("p", s)
		if ok && (p.Masked() != p || !p.IsValid()) {
			t.Fatalf("accepted non-canonical prefix %q", s)
		}
		if ok != (v.err() == nil) {
			t.Fatalf("ok=%v but err=%v", ok, v.err())
		}
	})
}
