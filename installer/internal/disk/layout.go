package disk

import (
	"fmt"
	"os/exec"
	"path"
	"path/filepath"
	"strings"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// plan is a validated layout with every device resolved: what to
// partition, assemble, create and format, and what a reinstall keeps.
type plan struct {
	disks []diskPlan
	raids []raidPlan
	vgs   []vgPlan
	lvs   []lvPlan
	fss   []fsPlan
}

type diskPlan struct {
	dev   blockDev
	keep  bool
	geo   gptGeometry
	parts []partPlan
}

type partPlan struct {
	gptPart
	device string // e.g. "/dev/sda1"
	keep   bool
}

type raidPlan struct {
	name, level, device string
	members             []string
	keep                bool
}

type vgPlan struct {
	name    string
	members []string
	keep    bool
}

type lvPlan struct {
	name, vg, typ, device string
	size                  uint64
	stripes               int
	keep                  bool
}

type fsPlan struct {
	index                    int
	device, path, format     string
	label                    string
	mountOptions, createOpts []string
	keep                     bool
}

// mkfsTool is the program that makes a format, "" for none.
func mkfsTool(format string) (string, bool) {
	switch format {
	case "ext4":
		return "mkfs.ext4", true
	case "ext3":
		return "mkfs.ext3", true
	case "xfs":
		return "mkfs.xfs", true
	case "vfat":
		return "mkfs.vfat", true
	case "swap":
		return "mkswap", true
	case "tmpfs", "none":
		return "", true
	}
	return "", false
}

func raidMinDevices(level string) (int, bool) {
	switch level {
	case "0", "1":
		return 2, true
	case "5":
		return 3, true
	case "6", "10":
		return 4, true
	}
	return 0, false
}

// fieldErr is a layout error that names the field at fault.
type fieldErr struct {
	field, msg string
}

func (e *fieldErr) Error() string { return "layout." + e.field + ": " + e.msg }

func ferr(field, format string, a ...any) error {
	return &fieldErr{field: field, msg: fmt.Sprintf(format, a...)}
}

// validate checks the whole layout against the machine without changing
// anything: it only stats devices and reads their sizes. checkTools
// additionally requires the programs the layout needs.
func validate(l *agentv1.Layout, reinstall, checkTools bool) (*plan, error) {
	if l == nil {
		return nil, ferr("disks", "no layout")
	}
	p := &plan{}
	// origin maps every device the layout may use to the disks it lives on
	// and whether the reinstall keeps it.
	type origin struct {
		field string
		keep  bool
		// usedBy is the field that consumes the device (a filesystem, a RAID
		// or a volume group); a device is used at most once.
		usedBy string
	}
	devices := map[string]*origin{}
	define := func(field, dev string, keep bool) error {
		if prev, ok := devices[dev]; ok {
			return ferr(field, "device %s is already defined by %s", dev, prev.field)
		}
		devices[dev] = &origin{field: field, keep: keep}
		return nil
	}
	use := func(field, dev string) (*origin, error) {
		o, ok := devices[dev]
		if !ok {
			// A device outside the layout (a disk left alone, an existing
			// array) may be used as it is, if it exists.
			if _, err := statBlock(dev); err != nil {
				return nil, ferr(field, "device %s is neither defined by the layout nor an existing block device: %v", dev, err)
			}
			o = &origin{field: field, keep: true}
			devices[dev] = o
		}
		if o.usedBy != "" {
			return nil, ferr(field, "device %s is already used by %s", dev, o.usedBy)
		}
		o.usedBy = field
		return o, nil
	}

	for i, d := range l.GetDisks() {
		f := fmt.Sprintf("disks[%d]", i)
		if d.GetDevice() == "" {
			return nil, ferr(f+".device", "empty")
		}
		for _, prev := range p.disks {
			if prev.dev.path == d.GetDevice() {
				return nil, ferr(f+".device", "disk %s appears twice", d.GetDevice())
			}
		}
		bd, err := statBlock(d.GetDevice())
		if err != nil {
			return nil, ferr(f+".device", "%v", err)
		}
		geo, err := newGeometry(bd.size, bd.sector)
		if err != nil {
			return nil, ferr(f+".device", "%s: %v", bd.path, err)
		}
		dp := diskPlan{dev: bd, geo: geo, keep: reinstall && !d.GetWipeOnReinstall()}
		if len(d.GetPartitions()) == 0 {
			// A whole disk used directly (a RAID member, a PV, a filesystem).
			if err := define(f, bd.path, dp.keep); err != nil {
				return nil, err
			}
		}
		next := geo.firstAligned()
		numbers := map[uint32]bool{}
		for j, pt := range d.GetPartitions() {
			pf := fmt.Sprintf("%s.partitions[%d]", f, j)
			if pt.GetNumber() < 1 || pt.GetNumber() > gptEntries {
				return nil, ferr(pf+".number", "%d not in 1..%d", pt.GetNumber(), gptEntries)
			}
			if numbers[pt.GetNumber()] {
				return nil, ferr(pf+".number", "partition %d appears twice on %s", pt.GetNumber(), bd.path)
			}
			numbers[pt.GetNumber()] = true
			typ, ok := gptType(pt.GetGptType())
			if !ok {
				return nil, ferr(pf+".gpt_type", "unknown type %q (want ef00, ef02, 8300, 8200, 8304, fd00, 8e00 or a GUID)", pt.GetGptType())
			}
			if len([]rune(pt.GetLabel())) > 36 {
				return nil, ferr(pf+".label", "longer than 36 characters")
			}
			var last uint64
			switch {
			case pt.GetSizeBytes() == 0 && j != len(d.GetPartitions())-1:
				return nil, ferr(pf+".size_bytes", "0 (the rest of the disk) is only allowed for the last partition")
			case pt.GetSizeBytes() == 0:
				last = geo.lastUsable()
			default:
				last = next + (pt.GetSizeBytes()+geo.sector-1)/geo.sector - 1
			}
			if next > geo.lastUsable() || last > geo.lastUsable() {
				return nil, ferr(pf+".size_bytes", "partition %d does not fit on %s (%d bytes)", pt.GetNumber(), bd.path, bd.size)
			}
			pp := partPlan{
				gptPart: gptPart{Number: int(pt.GetNumber()), Type: typ, Name: pt.GetLabel(), First: next, Last: last},
				device:  filepath.Join(filepath.Dir(bd.path), partDev(filepath.Base(bd.path), int(pt.GetNumber()))),
				keep:    dp.keep,
			}
			if err := define(pf, pp.device, dp.keep); err != nil {
				return nil, err
			}
			dp.parts = append(dp.parts, pp)
			next = alignUp(last+1, geo.alignSectors())
		}
		p.disks = append(p.disks, dp)
	}

	for i, r := range l.GetRaids() {
		f := fmt.Sprintf("raids[%d]", i)
		if !validName(r.GetName()) {
			return nil, ferr(f+".name", "%q is not a valid array name", r.GetName())
		}
		minDev, ok := raidMinDevices(r.GetLevel())
		if !ok {
			return nil, ferr(f+".level", "unknown level %q (want 0, 1, 5, 6 or 10)", r.GetLevel())
		}
		if len(r.GetDevices()) < minDev {
			return nil, ferr(f+".devices", "RAID %s needs at least %d devices, has %d", r.GetLevel(), minDev, len(r.GetDevices()))
		}
		rp := raidPlan{name: r.GetName(), level: r.GetLevel(), device: "/dev/md/" + r.GetName(), keep: true}
		for j, dev := range r.GetDevices() {
			o, err := use(fmt.Sprintf("%s.devices[%d]", f, j), dev)
			if err != nil {
				return nil, err
			}
			rp.keep = rp.keep && o.keep
			rp.members = append(rp.members, dev)
		}
		if err := define(f, rp.device, rp.keep); err != nil {
			return nil, err
		}
		p.raids = append(p.raids, rp)
	}

	vgs := map[string]int{} // name → index in p.vgs
	for i, v := range l.GetVolumeGroups() {
		f := fmt.Sprintf("volume_groups[%d]", i)
		if !validName(v.GetName()) {
			return nil, ferr(f+".name", "%q is not a valid volume group name", v.GetName())
		}
		if _, ok := vgs[v.GetName()]; ok {
			return nil, ferr(f+".name", "volume group %s appears twice", v.GetName())
		}
		if len(v.GetDevices()) == 0 {
			return nil, ferr(f+".devices", "no physical volumes")
		}
		vp := vgPlan{name: v.GetName(), keep: true}
		for j, dev := range v.GetDevices() {
			o, err := use(fmt.Sprintf("%s.devices[%d]", f, j), dev)
			if err != nil {
				return nil, err
			}
			vp.keep = vp.keep && o.keep
			vp.members = append(vp.members, dev)
		}
		vgs[vp.name] = len(p.vgs)
		p.vgs = append(p.vgs, vp)
	}
	rest := map[string]string{} // volume group → the LV taking the rest
	for i, lv := range l.GetLogicalVolumes() {
		f := fmt.Sprintf("logical_volumes[%d]", i)
		if !validName(lv.GetName()) {
			return nil, ferr(f+".name", "%q is not a valid logical volume name", lv.GetName())
		}
		vi, ok := vgs[lv.GetVolumeGroup()]
		if !ok {
			return nil, ferr(f+".volume_group", "unknown volume group %q", lv.GetVolumeGroup())
		}
		vg := p.vgs[vi]
		lp := lvPlan{name: lv.GetName(), vg: vg.name, typ: lv.GetLvmType(), size: lv.GetSizeBytes(),
			device: "/dev/" + vg.name + "/" + lv.GetName(), keep: vg.keep}
		switch lp.typ {
		case "", "linear":
			lp.typ = "linear"
		case "striped":
			lp.stripes = len(vg.members)
			if lp.stripes < 2 {
				return nil, ferr(f+".lvm_type", "striped needs a volume group of at least 2 devices")
			}
		case "raid1":
			if len(vg.members) < 2 {
				return nil, ferr(f+".lvm_type", "raid1 needs a volume group of at least 2 devices")
			}
		default:
			return nil, ferr(f+".lvm_type", "unknown type %q (want linear, striped or raid1)", lp.typ)
		}
		if lp.size == 0 {
			// Created last whatever its place in the list (see Apply).
			if prev, ok := rest[vg.name]; ok {
				return nil, ferr(f+".size_bytes", "0 (the rest of volume group %s) is already taken by %s", vg.name, prev)
			}
			rest[vg.name] = f
		}
		if err := define(f, lp.device, lp.keep); err != nil {
			return nil, err
		}
		p.lvs = append(p.lvs, lp)
	}

	paths := map[string]string{}
	for i, fs := range l.GetFilesystems() {
		f := fmt.Sprintf("filesystems[%d]", i)
		tool, ok := mkfsTool(fs.GetFormat())
		if !ok {
			return nil, ferr(f+".format", "unknown format %q (want ext4, ext3, xfs, vfat, swap, tmpfs or none)", fs.GetFormat())
		}
		fp := fsPlan{index: i, device: fs.GetDevice(), path: fs.GetPath(), format: fs.GetFormat(), label: fs.GetLabel(),
			mountOptions: fs.GetMountOptions(), createOpts: fs.GetCreateOptions()}
		switch fs.GetFormat() {
		case "swap":
			if fp.path != "" {
				return nil, ferr(f+".path", "swap is not mounted; leave the path empty")
			}
		case "tmpfs":
			if fp.path == "" {
				return nil, ferr(f+".path", "tmpfs needs a mount path")
			}
		case "none":
			if fp.path != "" {
				return nil, ferr(f+".path", "format none is not mounted; leave the path empty")
			}
		}
		if fp.path != "" {
			if !path.IsAbs(fp.path) || path.Clean(fp.path) != fp.path || strings.ContainsAny(fp.path, " \t\n\\") {
				return nil, ferr(f+".path", "%q is not a clean absolute path without blanks", fp.path)
			}
			if prev, ok := paths[fp.path]; ok {
				return nil, ferr(f+".path", "%s is already mounted by %s", fp.path, prev)
			}
			paths[fp.path] = f
		}
		if fs.GetFormat() != "tmpfs" {
			if fp.device == "" {
				return nil, ferr(f+".device", "empty")
			}
			o, err := use(f+".device", fp.device)
			if err != nil {
				return nil, err
			}
			fp.keep = o.keep
		}
		if checkTools && tool != "" && !fp.keep {
			if _, err := exec.LookPath(tool); err != nil {
				return nil, ferr(f+".format", "%s needs %s, which is not installed", fs.GetFormat(), tool)
			}
		}
		if err := checkLabel(fs.GetFormat(), fp.label); err != nil {
			return nil, ferr(f+".label", "%v", err)
		}
		for j, o := range fp.mountOptions {
			if o == "" || strings.ContainsAny(o, " \t\n,") {
				return nil, ferr(fmt.Sprintf("%s.mount_options[%d]", f, j), "%q is not a single option", o)
			}
		}
		p.fss = append(p.fss, fp)
	}
	if checkTools {
		if len(p.raids) > 0 {
			if _, err := exec.LookPath("mdadm"); err != nil {
				return nil, ferr("raids", "RAID needs mdadm, which is not installed")
			}
		}
		if len(p.vgs) > 0 {
			if _, err := exec.LookPath("lvm"); err != nil {
				return nil, ferr("volume_groups", "LVM needs lvm, which is not installed")
			}
		}
	}
	return p, nil
}

func checkLabel(format, label string) error {
	max := 0
	switch format {
	case "ext4", "ext3", "swap":
		max = 16
	case "xfs":
		max = 12
	case "vfat":
		max = 11
	}
	if max > 0 && len(label) > max {
		return fmt.Errorf("%q is longer than %d bytes, the most %s takes", label, max, format)
	}
	return nil
}

// validName accepts names that are safe as device and command arguments.
func validName(s string) bool {
	if s == "" || len(s) > 64 || s[0] == '-' || s[0] == '.' {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.' || c == '+') {
			return false
		}
	}
	return true
}
