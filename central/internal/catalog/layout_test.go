package catalog

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

func TestChooseLayout(t *testing.T) {
	layout := func(id string, sizes []string, images map[string]string) *apiv1.FilesystemLayout {
		return &apiv1.FilesystemLayout{Id: id, Constraints: &apiv1.FilesystemLayoutConstraints{Sizes: sizes, Images: images}}
	}
	// By id, as ListLayouts returns them.
	all := []*apiv1.FilesystemLayout{
		layout("a-debian-old", []string{"s1"}, map[string]string{"debian": "< 12"}),
		layout("b-debian", []string{"s1", "s2"}, map[string]string{"debian": ">= 12"}),
		layout("c-any-image", []string{"s1", "s3"}, nil),
		layout("d-ubuntu", []string{"s2"}, map[string]string{"ubuntu": "*"}),
	}
	machine := func(size string, disks ...string) *apiv1.Machine {
		m := &apiv1.Machine{Id: "m1", SizeId: size, Hardware: &agentv1.MachineFacts{}}
		for _, d := range disks {
			m.Hardware.Disks = append(m.Hardware.Disks, &agentv1.DiskFact{Name: d})
		}
		return m
	}
	debian := func(v string) *apiv1.Image { return &apiv1.Image{Os: "debian", Version: v} }
	tests := []struct {
		name string
		id   string
		m    *apiv1.Machine
		img  *apiv1.Image
		want string     // the layout's id
		code codes.Code // when it fails
	}{
		{"asked for by id, constraints aside", "d-ubuntu", machine("s1"), debian("12.0.0"), "d-ubuntu", codes.OK},
		{"asked for, unknown", "nope", machine("s1", "sda"), debian("12.0.0"), "", codes.NotFound},
		{"first whose version constraint holds", "", machine("s1"), debian("11.0.0"), "a-debian-old", codes.OK},
		{"earlier one's version fails", "", machine("s1"), debian("12.1.0"), "b-debian", codes.OK},
		{"no image constraints take every image", "", machine("s3"), &apiv1.Image{Os: "alpine", Version: "3.20.0"}, "c-any-image", codes.OK},
		{"other OS is not accepted", "", machine("s2", "sda"), &apiv1.Image{Os: "alpine", Version: "3.20.0"}, "default", codes.OK},
		{"OS with any version", "", machine("s2"), &apiv1.Image{Os: "ubuntu", Version: "24.4.0"}, "d-ubuntu", codes.OK},
		{"size named by none", "", machine("s9", "sda"), debian("12.0.0"), "default", codes.OK},
		{"default needs a disk", "", machine("s9"), debian("12.0.0"), "", codes.FailedPrecondition},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ChooseLayout(tt.id, all, tt.m, tt.img)
			if status.Code(err) != tt.code {
				t.Fatalf("ChooseLayout = %v, %v; want code %v", got, err, tt.code)
			}
			if got.GetId() != tt.want {
				t.Fatalf("ChooseLayout = %s, want %s", got.GetId(), tt.want)
			}
		})
	}
}

func TestDefaultLayout(t *testing.T) {
	tests := []struct {
		disks      []string
		efi, root  string
		wantDevice string
	}{
		{[]string{"sdb", "sda"}, "/dev/sda1", "/dev/sda2", "/dev/sda"},
		{[]string{"vda"}, "/dev/vda1", "/dev/vda2", "/dev/vda"},
		{[]string{"nvme1n1", "nvme0n1"}, "/dev/nvme0n1p1", "/dev/nvme0n1p2", "/dev/nvme0n1"},
	}
	for _, tt := range tests {
		m := &apiv1.Machine{Hardware: &agentv1.MachineFacts{}}
		for _, d := range tt.disks {
			m.Hardware.Disks = append(m.Hardware.Disks, &agentv1.DiskFact{Name: d})
		}
		l, err := DefaultLayout(m)
		if err != nil {
			t.Fatal(err)
		}
		if l.GetDisks()[0].GetDevice() != tt.wantDevice || l.GetFilesystems()[0].GetDevice() != tt.efi || l.GetFilesystems()[1].GetDevice() != tt.root {
			t.Errorf("disks %v: layout %v", tt.disks, l)
		}
		// The default is a layout the catalogue would accept.
		if err := validateLayout(l); err != nil {
			t.Errorf("disks %v: default layout is invalid: %v", tt.disks, err)
		}
	}
}
