package catalog

import (
	"strings"
	"testing"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

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
			err := validateLayout(l)
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
