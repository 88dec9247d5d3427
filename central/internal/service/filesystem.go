package service

import (
	"context"
	"strings"

	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type filesystemLayoutService struct {
	*API
	apiv1.UnimplementedFilesystemLayoutServiceServer
}

var filesystemLayouts = store.Table[*apiv1.FilesystemLayout]{Name: "filesystem_layouts", New: func() *apiv1.FilesystemLayout { return &apiv1.FilesystemLayout{} }}

var (
	fsFormats  = map[string]bool{"ext4": true, "ext3": true, "xfs": true, "vfat": true, "swap": true, "tmpfs": true, "none": true}
	raidLevels = map[string]bool{"0": true, "1": true, "5": true, "6": true, "10": true}
	lvmTypes   = map[string]bool{"": true, "linear": true, "striped": true, "raid1": true}
)

// validateFilesystemLayout checks the layout is internally consistent: every
// device a RAID, volume group or filesystem uses is made by the layout, so the
// installer never meets a dangling reference on a machine.
func validateFilesystemLayout(l *apiv1.FilesystemLayout) error {
	var v violations
	if l == nil {
		v.add("filesystem_layout", "required")
		return v.err()
	}
	v.id("filesystem_layout.id", l.GetId())
	v.text("filesystem_layout.description", l.GetDescription(), 1024)
	v.labels("filesystem_layout.labels", l.GetLabels())
	devices := map[string]bool{"tmpfs": true}
	for i, d := range l.GetDisks() {
		f := fieldIndex("filesystem_layout.disks", i)
		if !strings.HasPrefix(d.GetDevice(), "/dev/") {
			v.add(f+".device", "must be a /dev path")
		}
		devices[d.GetDevice()] = true
		nums := map[uint32]bool{}
		for j, p := range d.GetPartitions() {
			pf := fieldIndex(f+".partitions", j)
			if p.GetNumber() == 0 || nums[p.GetNumber()] {
				v.add(pf+".number", "must be unique and at least 1")
			}
			nums[p.GetNumber()] = true
			if p.GetSizeBytes() == 0 && j != len(d.GetPartitions())-1 {
				v.add(pf+".size_bytes", "only the last partition may take the rest of the disk (0)")
			}
			devices[partitionDevice(d.GetDevice(), p.GetNumber())] = true
		}
	}
	for i, r := range l.GetRaids() {
		f := fieldIndex("filesystem_layout.raids", i)
		if !raidLevels[r.GetLevel()] {
			v.add(f+".level", "must be one of 0, 1, 5, 6, 10")
		}
		if len(r.GetDevices()) < 2 {
			v.add(f+".devices", "a RAID needs at least two devices")
		}
		for _, dev := range r.GetDevices() {
			if !devices[dev] {
				v.add(f+".devices", "%s is not a partition of this layout", dev)
			}
		}
		devices["/dev/md/"+r.GetName()] = true
	}
	vgs := map[string]bool{}
	for i, vg := range l.GetVolumeGroups() {
		f := fieldIndex("filesystem_layout.volume_groups", i)
		v.id(f+".name", vg.GetName())
		for _, dev := range vg.GetDevices() {
			if !devices[dev] {
				v.add(f+".devices", "%s is not a device of this layout", dev)
			}
		}
		vgs[vg.GetName()] = true
	}
	for i, lv := range l.GetLogicalVolumes() {
		f := fieldIndex("filesystem_layout.logical_volumes", i)
		v.id(f+".name", lv.GetName())
		if !vgs[lv.GetVolumeGroup()] {
			v.add(f+".volume_group", "unknown volume group %s", quote(lv.GetVolumeGroup()))
		}
		if !lvmTypes[lv.GetLvmType()] {
			v.add(f+".lvm_type", "must be linear, striped or raid1")
		}
		devices["/dev/"+lv.GetVolumeGroup()+"/"+lv.GetName()] = true
	}
	root := false
	for i, fs := range l.GetFilesystems() {
		f := fieldIndex("filesystem_layout.filesystems", i)
		if !fsFormats[fs.GetFormat()] {
			v.add(f+".format", "must be one of ext4, ext3, xfs, vfat, swap, tmpfs, none")
		}
		if !devices[fs.GetDevice()] {
			v.add(f+".device", "%s is not a device of this layout", fs.GetDevice())
		}
		if fs.GetPath() != "" && !strings.HasPrefix(fs.GetPath(), "/") {
			v.add(f+".path", "must be absolute")
		}
		root = root || fs.GetPath() == "/"
	}
	if !root {
		v.add("filesystem_layout.filesystems", "one filesystem must be mounted at /")
	}
	return v.err()
}

// partitionDevice names partition n of a disk the way the kernel does
// (/dev/sda1, /dev/nvme0n1p1).
func partitionDevice(disk string, n uint32) string {
	sep := ""
	// disk may be empty (already reported as a violation): it must not panic.
	if l := len(disk); l > 0 && disk[l-1] >= '0' && disk[l-1] <= '9' {
		sep = "p"
	}
	return disk + sep + itoa(n)
}

func (s *filesystemLayoutService) Create(ctx context.Context, req *apiv1.FilesystemLayoutServiceCreateRequest) (*apiv1.FilesystemLayoutServiceCreateResponse, error) {
	if err := validateFilesystemLayout(req.GetFilesystemLayout()); err != nil {
		return nil, err
	}
	out, err := create(ctx, s.API, filesystemLayouts, req.GetFilesystemLayout().GetId(), "", req.GetFilesystemLayout())
	if err != nil {
		return nil, err
	}
	return &apiv1.FilesystemLayoutServiceCreateResponse{FilesystemLayout: out}, nil
}

func (s *filesystemLayoutService) Get(ctx context.Context, req *apiv1.FilesystemLayoutServiceGetRequest) (*apiv1.FilesystemLayoutServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, filesystemLayouts, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.FilesystemLayoutServiceGetResponse{FilesystemLayout: out}, nil
}

func (s *filesystemLayoutService) List(ctx context.Context, _ *apiv1.FilesystemLayoutServiceListRequest) (*apiv1.FilesystemLayoutServiceListResponse, error) {
	out, err := filesystemLayouts.List(ctx, s.store.Pool(), "TRUE")
	if err != nil {
		return nil, toStatus(err, "filesystem layouts")
	}
	return &apiv1.FilesystemLayoutServiceListResponse{FilesystemLayouts: out}, nil
}

func (s *filesystemLayoutService) Update(ctx context.Context, req *apiv1.FilesystemLayoutServiceUpdateRequest) (*apiv1.FilesystemLayoutServiceUpdateResponse, error) {
	if err := validateFilesystemLayout(req.GetFilesystemLayout()); err != nil {
		return nil, err
	}
	out, err := replace(ctx, s.API, filesystemLayouts, req.GetFilesystemLayout().GetId(), "", req.GetFilesystemLayout())
	if err != nil {
		return nil, err
	}
	return &apiv1.FilesystemLayoutServiceUpdateResponse{FilesystemLayout: out}, nil
}

func (s *filesystemLayoutService) Delete(ctx context.Context, req *apiv1.FilesystemLayoutServiceDeleteRequest) (*apiv1.FilesystemLayoutServiceDeleteResponse, error) {
	out, err := remove(ctx, s.API, filesystemLayouts, req.GetId(), "")
	if err != nil {
		return nil, err
	}
	return &apiv1.FilesystemLayoutServiceDeleteResponse{FilesystemLayout: out}, nil
}
