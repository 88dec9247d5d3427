package catalog

import (
	"context"
	"slices"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/field"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Layouts reads filesystem layouts as stored; only this package writes them.
var Layouts = store.Table[*apiv1.FilesystemLayout]{Name: "filesystem_layouts", New: func() *apiv1.FilesystemLayout { return &apiv1.FilesystemLayout{} }}

// The formats, RAID levels and LVM types the installer knows.

func fsFormat(s string) bool {
	switch s {
	case "ext4", "ext3", "xfs", "vfat", "swap", "tmpfs", "none":
		return true
	}
	return false
}

func raidLevel(s string) bool {
	switch s {
	case "0", "1", "5", "6", "10":
		return true
	}
	return false
}

func lvmType(s string) bool {
	switch s {
	case "", "linear", "striped", "raid1":
		return true
	}
	return false
}

// validateLayout checks the layout is internally consistent: every device
// a RAID, volume group or filesystem uses is made by the layout, so the
// installer never meets a dangling reference on a machine.
func validateLayout(l *apiv1.FilesystemLayout) error {
	v := violations()
	if l == nil {
		v.Add("filesystem_layout", "required")
		return v.Err("")
	}
	v.ID("filesystem_layout.id", l.GetId())
	v.Text("filesystem_layout.description", l.GetDescription(), 1024)
	v.Labels("filesystem_layout.labels", l.GetLabels())
	devices := map[string]bool{"tmpfs": true}
	for i, d := range l.GetDisks() {
		f := field.Index("filesystem_layout.disks", i)
		if !strings.HasPrefix(d.GetDevice(), "/dev/") {
			v.Add(f+".device", "must be a /dev path")
		}
		devices[d.GetDevice()] = true
		nums := map[uint32]bool{}
		for j, p := range d.GetPartitions() {
			pf := field.Index(f+".partitions", j)
			if p.GetNumber() == 0 || nums[p.GetNumber()] {
				v.Add(pf+".number", "must be unique and at least 1")
			}
			nums[p.GetNumber()] = true
			if p.GetSizeBytes() == 0 && j != len(d.GetPartitions())-1 {
				v.Add(pf+".size_bytes", "only the last partition may take the rest of the disk (0)")
			}
			devices[partitionDevice(d.GetDevice(), p.GetNumber())] = true
		}
	}
	for i, r := range l.GetRaids() {
		f := field.Index("filesystem_layout.raids", i)
		if !raidLevel(r.GetLevel()) {
			v.Add(f+".level", "must be one of 0, 1, 5, 6, 10")
		}
		if len(r.GetDevices()) < 2 {
			v.Add(f+".devices", "a RAID needs at least two devices")
		}
		for _, dev := range r.GetDevices() {
			if !devices[dev] {
				v.Add(f+".devices", "%s is not a partition of this layout", dev)
			}
		}
		devices["/dev/md/"+r.GetName()] = true
	}
	vgs := map[string]bool{}
	for i, vg := range l.GetVolumeGroups() {
		f := field.Index("filesystem_layout.volume_groups", i)
		v.ID(f+".name", vg.GetName())
		for _, dev := range vg.GetDevices() {
			if !devices[dev] {
				v.Add(f+".devices", "%s is not a device of this layout", dev)
			}
		}
		vgs[vg.GetName()] = true
	}
	for i, lv := range l.GetLogicalVolumes() {
		f := field.Index("filesystem_layout.logical_volumes", i)
		v.ID(f+".name", lv.GetName())
		if !vgs[lv.GetVolumeGroup()] {
			v.Add(f+".volume_group", "unknown volume group %s", auth.Quote(lv.GetVolumeGroup()))
		}
		if !lvmType(lv.GetLvmType()) {
			v.Add(f+".lvm_type", "must be linear, striped or raid1")
		}
		devices["/dev/"+lv.GetVolumeGroup()+"/"+lv.GetName()] = true
	}
	root := false
	for i, fs := range l.GetFilesystems() {
		f := field.Index("filesystem_layout.filesystems", i)
		if !fsFormat(fs.GetFormat()) {
			v.Add(f+".format", "must be one of ext4, ext3, xfs, vfat, swap, tmpfs, none")
		}
		if !devices[fs.GetDevice()] {
			v.Add(f+".device", "%s is not a device of this layout", fs.GetDevice())
		}
		if fs.GetPath() != "" && !strings.HasPrefix(fs.GetPath(), "/") {
			v.Add(f+".path", "must be absolute")
		}
		root = root || fs.GetPath() == "/"
	}
	if !root {
		v.Add("filesystem_layout.filesystems", "one filesystem must be mounted at /")
	}
	return v.Err("")
}

// partitionDevice names partition n of a disk the way the kernel does
// (/dev/sda1, /dev/nvme0n1p1).
func partitionDevice(disk string, n uint32) string {
	sep := ""
	// disk may be empty (already reported as a violation): it must not panic.
	if l := len(disk); l > 0 && disk[l-1] >= '0' && disk[l-1] <= '9' {
		sep = "p"
	}
	return disk + sep + strconv.FormatUint(uint64(n), 10)
}

// CreateLayout checks l and stores it with its audit row.
func CreateLayout(ctx context.Context, st *store.Store, l *apiv1.FilesystemLayout) (*apiv1.FilesystemLayout, error) {
	if err := validateLayout(l); err != nil {
		return nil, err
	}
	return Layouts.Create(ctx, st, l.GetId(), "", l)
}

// UpdateLayout checks l and replaces the stored layout of its id, with its
// audit row.
func UpdateLayout(ctx context.Context, st *store.Store, l *apiv1.FilesystemLayout) (*apiv1.FilesystemLayout, error) {
	if err := validateLayout(l); err != nil {
		return nil, err
	}
	return Layouts.Replace(ctx, st, l.GetId(), "", l)
}

// DeleteLayout deletes the layout with its audit row.
func DeleteLayout(ctx context.Context, st *store.Store, id string) (*apiv1.FilesystemLayout, error) {
	return Layouts.Remove(ctx, st, id, "")
}

// ListLayouts reads every filesystem layout, by id: the order ChooseLayout
// takes them in.
func ListLayouts(ctx context.Context, db store.Querier) ([]*apiv1.FilesystemLayout, error) {
	return Layouts.List(ctx, db, "TRUE")
}

// ChooseLayout picks the filesystem layout of machine m installing img
// from all (ListLayouts): the one asked for by id, else the first (by id)
// whose constraints name the size and accept the image, else a default on
// the machine's first disk (DefaultLayout).
func ChooseLayout(id string, all []*apiv1.FilesystemLayout, m *apiv1.Machine, img *apiv1.Image) (*apiv1.FilesystemLayout, error) {
	if id != "" {
		for _, l := range all {
			if l.GetId() == id {
				return l, nil
			}
		}
		return nil, status.Errorf(codes.NotFound, "filesystem layout %s not found", auth.Quote(id))
	}
	for _, l := range all {
		c := l.GetConstraints()
		if !slices.Contains(c.GetSizes(), m.GetSizeId()) {
			continue
		}
		if want, ok := c.GetImages()[img.GetOs()]; ok || len(c.GetImages()) == 0 {
			if len(c.GetImages()) == 0 || VersionAccepts(want, img.GetVersion()) {
				return l, nil
			}
		}
	}
	return DefaultLayout(m)
}

// DefaultLayout is an EFI system partition and one ext4 root on the first
// disk (by name): what a machine without a configured layout gets.
func DefaultLayout(m *apiv1.Machine) (*apiv1.FilesystemLayout, error) {
	disks := m.GetHardware().GetDisks()
	if len(disks) == 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "machine %s reported no disks and no filesystem layout applies", m.GetId())
	}
	names := make([]string, 0, len(disks))
	for _, d := range disks {
		names = append(names, d.GetName())
	}
	sort.Strings(names)
	dev := "/dev/" + names[0]
	return &apiv1.FilesystemLayout{
		Id: "default", Name: "default",
		Disks: []*agentv1.Disk{{Device: dev, WipeOnReinstall: true, Partitions: []*agentv1.DiskPartition{
			{Number: 1, Label: "efi", SizeBytes: 256 << 20, GptType: "ef00"},
			{Number: 2, Label: "root", GptType: "8300"},
		}}},
		Filesystems: []*agentv1.Filesystem{
			{Path: "/boot/efi", Device: partitionDevice(dev, 1), Format: "vfat", Label: "efi"},
			{Path: "/", Device: partitionDevice(dev, 2), Format: "ext4", Label: "root"},
		},
	}, nil
}

// LayoutDoc is the layout as the installer's document carries it.
func LayoutDoc(l *apiv1.FilesystemLayout) *agentv1.Layout {
	return &agentv1.Layout{Disks: l.GetDisks(), Raids: l.GetRaids(), VolumeGroups: l.GetVolumeGroups(),
		LogicalVolumes: l.GetLogicalVolumes(), Filesystems: l.GetFilesystems()}
}
