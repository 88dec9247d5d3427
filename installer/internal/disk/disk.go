// Package disk applies a machine's filesystem layout: it wipes disks,
// writes GPTs (in Go, no sgdisk), builds md RAID and LVM with mdadm and
// lvm, formats with the mkfs programs and mounts the result under a target
// directory for the image to be streamed onto. It works without udev: the
// kernel is told about new partitions over BLKPG when it cannot parse the
// table itself, and missing device nodes are created from sysfs.
package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sys/unix"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// ErrInvalid is wrapped by every layout validation error; nothing was
// touched when Apply returns one.
var ErrInvalid = errors.New("invalid layout")

func (e *fieldErr) Unwrap() error { return ErrInvalid }

// Runner runs a program and returns its combined output. Tests replace it
// to see the mdadm and lvm commands on a kernel without md or
// device-mapper.
type Runner func(ctx context.Context, name string, args ...string) ([]byte, error)

func runCommand(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	// mdadm and lvm would wait for udev events no one sends in the
	// initramfs.
	cmd.Env = append(os.Environ(), "DM_DISABLE_UDEV=1", "LVM_SUPPRESS_FD_WARNINGS=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// Options of Apply.
type Options struct {
	// Target is where the filesystems get mounted (the new root).
	Target string
	// Reinstall keeps the disks without wipe_on_reinstall: they are not
	// repartitioned and their filesystems not formatted, but mounted.
	Reinstall bool
	Log       *slog.Logger
	// Exec runs mdadm, lvm and the mkfs programs; nil runs them for real.
	// With a non-nil Exec, Apply does not check that they are installed.
	Exec Runner
}

// Mount is one filesystem of the installed system.
type Mount struct {
	Device, Path, Format, UUID string
	Options                    []string
}

// Applied is a layout applied to the disks and mounted under Target.
type Applied struct {
	Target string
	// Mounts are the mounted filesystems in mount order.
	Mounts []Mount
	// Swaps and Tmpfs go into fstab only.
	Swaps, Tmpfs []Mount
	// Wiped are the disks Apply repartitioned (on a reinstall, the kept
	// data disks are not among them).
	Wiped []string
	// Raids are the md arrays, "/dev/md/<name>".
	Raids []string

	mounted int // how many of Mounts are still mounted
}

// Root is the mount of "/", nil when the layout has none.
func (a *Applied) Root() *Mount { return a.find(func(m *Mount) bool { return m.Path == "/" }) }

// ESP is the EFI system partition (vfat at /boot/efi), nil when none.
func (a *Applied) ESP() *Mount {
	return a.find(func(m *Mount) bool { return m.Path == "/boot/efi" && m.Format == "vfat" })
}

func (a *Applied) find(f func(*Mount) bool) *Mount {
	for i := range a.Mounts {
		if f(&a.Mounts[i]) {
			return &a.Mounts[i]
		}
	}
	return nil
}

// Fstab is the installed system's /etc/fstab, every filesystem by UUID=.
func (a *Applied) Fstab() string {
	var b strings.Builder
	b.WriteString("# /etc/fstab written by metal-installer\n# <file system> <mount point> <type> <options> <dump> <pass>\n")
	for _, m := range a.Mounts {
		pass := 2
		switch {
		case m.Format == "xfs":
			pass = 0 // fsck.xfs does nothing; xfs repairs on mount
		case m.Path == "/":
			pass = 1
		}
		fmt.Fprintf(&b, "UUID=%s %s %s %s 0 %d\n", m.UUID, m.Path, m.Format, fstabOptions(m.Options), pass)
	}
	for _, m := range a.Tmpfs {
		fmt.Fprintf(&b, "tmpfs %s tmpfs %s 0 0\n", m.Path, fstabOptions(m.Options))
	}
	for _, m := range a.Swaps {
		fmt.Fprintf(&b, "UUID=%s none swap %s 0 0\n", m.UUID, fstabOptions(append([]string{"sw"}, m.Options...)))
	}
	return b.String()
}

func fstabOptions(o []string) string {
	if len(o) == 0 {
		return "defaults"
	}
	return strings.Join(o, ",")
}

// Unmount unmounts everything Apply mounted, deepest first. It may be
// called again after a failure.
func (a *Applied) Unmount(ctx context.Context) error {
	for a.mounted > 0 {
		m := a.Mounts[a.mounted-1]
		dir := filepath.Join(a.Target, m.Path)
		var err error
		for try := 0; try < 10; try++ {
			if err = unix.Unmount(dir, 0); err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
				err = nil
				break
			}
			if !errors.Is(err, unix.EBUSY) {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("unmount %s: %w (%w)", dir, err, ctx.Err())
			case <-time.After(200 * time.Millisecond):
			}
		}
		if err != nil {
			return fmt.Errorf("unmount %s: %w", dir, err)
		}
		a.mounted--
	}
	return nil
}

// Apply validates the layout, partitions the disks (GPT), builds RAID and
// LVM, formats and mounts everything under o.Target in path-depth order.
// An invalid layout returns an error wrapping ErrInvalid that names the
// field, before anything is touched. A failure later leaves the disks
// half-done for the caller to wipe, but unmounts what was mounted.
func Apply(ctx context.Context, l *agentv1.Layout, o Options) (*Applied, error) {
	log := o.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	run := o.Exec
	if run == nil {
		run = runCommand
	}
	if o.Target == "" || !filepath.IsAbs(o.Target) {
		return nil, fmt.Errorf("%w: target %q is not an absolute path", ErrInvalid, o.Target)
	}
	p, err := validate(l, o.Reinstall, o.Exec == nil)
	if err != nil {
		return nil, err
	}
	a := &Applied{Target: o.Target}
	zero := make([]byte, wipeSpan)

	for _, d := range p.disks {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if d.keep {
			log.Info("keeping disk", "disk", d.dev.path)
			if err := adoptPartitions(d); err != nil {
				return nil, err
			}
			continue
		}
		if err := partition(ctx, d, zero, log, run); err != nil {
			return nil, err
		}
		a.Wiped = append(a.Wiped, d.dev.path)
	}

	for _, r := range p.raids {
		var args []string
		if r.keep {
			args = append([]string{"--assemble", r.device, "--run"}, r.members...)
		} else {
			args = append([]string{"--create", r.device, "--run", "--metadata=1.2", "--homehost=any",
				"--name=" + r.name, "--level=" + r.level, "--raid-devices=" + strconv.Itoa(len(r.members))}, r.members...)
		}
		log.Info("md array", "device", r.device, "level", r.level, "members", r.members, "keep", r.keep)
		if _, err := run(ctx, "mdadm", args...); err != nil {
			return nil, fmt.Errorf("raid %s: %w", r.name, err)
		}
		a.Raids = append(a.Raids, r.device)
	}

	lvmConfig := "--config=activation { udev_sync = 0 udev_rules = 0 } devices { obtain_device_list_from_udev = 0 }"
	for _, v := range p.vgs {
		if v.keep {
			if _, err := run(ctx, "lvm", "vgchange", lvmConfig, "--activate", "y", v.name); err != nil {
				return nil, fmt.Errorf("volume group %s: %w", v.name, err)
			}
			continue
		}
		args := append([]string{"pvcreate", lvmConfig, "--yes", "--force", "--force"}, v.members...)
		if _, err := run(ctx, "lvm", args...); err != nil {
			return nil, fmt.Errorf("volume group %s: %w", v.name, err)
		}
		args = append([]string{"vgcreate", lvmConfig, "--yes", v.name}, v.members...)
		if _, err := run(ctx, "lvm", args...); err != nil {
			return nil, fmt.Errorf("volume group %s: %w", v.name, err)
		}
	}
	// Fixed sizes first, so that the one taking the rest gets what is left.
	lvs := slices.Clone(p.lvs)
	slices.SortStableFunc(lvs, func(x, y lvPlan) int {
		return boolInt(x.size == 0) - boolInt(y.size == 0)
	})
	for _, lv := range lvs {
		if lv.keep {
			continue
		}
		args := []string{"lvcreate", lvmConfig, "--yes", "--wipesignatures", "y", "--zero", "y", "--name", lv.name}
		if lv.size == 0 {
			args = append(args, "--extents", "100%FREE")
		} else {
			args = append(args, "--size", strconv.FormatUint(lv.size, 10)+"b")
		}
		switch lv.typ {
		case "striped":
			args = append(args, "--type", "striped", "--stripes", strconv.Itoa(lv.stripes))
		case "raid1":
			args = append(args, "--type", "raid1", "--mirrors", "1")
		}
		args = append(args, lv.vg)
		log.Info("logical volume", "device", lv.device, "size", lv.size, "type", lv.typ)
		if _, err := run(ctx, "lvm", args...); err != nil {
			return nil, fmt.Errorf("logical volume %s/%s: %w", lv.vg, lv.name, err)
		}
	}

	var mounts []Mount
	for _, fs := range p.fss {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !fs.keep {
			if err := mkfs(ctx, fs, run, log); err != nil {
				return nil, fmt.Errorf("filesystem %d (%s on %s): %w", fs.index, fs.format, fs.device, err)
			}
		}
		m := Mount{Device: fs.device, Path: fs.path, Format: fs.format, Options: fs.mountOptions}
		switch {
		case fs.format == "none", fs.path == "" && fs.format != "swap":
			// Formatted for later use, neither mounted nor in fstab.
			continue
		case fs.format == "tmpfs":
			m.Device = "tmpfs"
			a.Tmpfs = append(a.Tmpfs, m)
			continue
		}
		id, err := fsUUID(ctx, fs.device, fs.format, run)
		if err != nil {
			return nil, fmt.Errorf("filesystem %d (%s on %s): %w", fs.index, fs.format, fs.device, err)
		}
		m.UUID = id
		if fs.format == "swap" {
			a.Swaps = append(a.Swaps, m)
			continue
		}
		mounts = append(mounts, m)
	}
	slices.SortStableFunc(mounts, func(x, y Mount) int { return depth(x.Path) - depth(y.Path) })
	a.Mounts = mounts
	for _, m := range a.Mounts {
		if err := mount(a.Target, m); err != nil {
			uerr := a.Unmount(context.WithoutCancel(ctx))
			return nil, errors.Join(err, uerr)
		}
		a.mounted++
		log.Info("mounted", "device", m.Device, "path", m.Path, "format", m.Format, "uuid", m.UUID)
	}
	return a, nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func depth(p string) int {
	if p == "/" {
		return 0
	}
	return strings.Count(path.Clean(p), "/")
}

// partition wipes a disk, writes its GPT and gets the kernel to know the
// partitions, whose first and last MiBs are zeroed too: a new partition
// lying where an old one was would otherwise show the old superblocks.
func partition(ctx context.Context, d diskPlan, zero []byte, log *slog.Logger, run Runner) error {
	if err := wipe(ctx, d.dev.path, zero, log, run); err != nil {
		return fmt.Errorf("wipe %s: %w", d.dev.path, err)
	}
	if len(d.parts) == 0 {
		// The disk is used whole (a RAID member, a PV, a filesystem): a GPT
		// would only leave a stray backup header at its end.
		return nil
	}
	parts := make([]gptPart, len(d.parts))
	for i, p := range d.parts {
		parts[i] = p.gptPart
		parts[i].GUID = uuid.NewString()
	}
	primary, backup, backupOff, err := encodeGPT(d.geo, uuid.NewString(), parts)
	if err != nil {
		return fmt.Errorf("%s: %w", d.dev.path, err)
	}
	f, err := os.OpenFile(d.dev.path, os.O_RDWR|unix.O_EXCL, 0)
	if err != nil {
		return fmt.Errorf("%s: open exclusively: %w", d.dev.path, err)
	}
	defer f.Close()
	var spans []span
	for _, p := range parts {
		spans = append(spans, span{int64(p.First * d.geo.sector), int64((p.Last - p.First + 1) * d.geo.sector)})
	}
	if err := zeroSpans(f, d.dev.size, spans, zero); err != nil {
		return fmt.Errorf("%s: %w", d.dev.path, err)
	}
	if _, err := f.WriteAt(primary, 0); err != nil {
		return fmt.Errorf("%s: write GPT: %w", d.dev.path, err)
	}
	if _, err := f.WriteAt(backup, backupOff); err != nil {
		return fmt.Errorf("%s: write backup GPT: %w", d.dev.path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("%s: %w", d.dev.path, err)
	}
	log.Info("partitioned", "disk", d.dev.path, "partitions", len(parts))
	return syncPartitions(f, d.dev, d.geo, parts)
}

// adoptPartitions makes sure the kernel knows the partitions of a kept
// disk, reading them from its GPT; the layout's partitions must be there.
func adoptPartitions(d diskPlan) error {
	if len(d.parts) == 0 {
		return nil // used whole
	}
	f, err := os.OpenFile(d.dev.path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	_, parts, err := readGPT(f, d.geo)
	if err != nil {
		return fmt.Errorf("%s: kept for the reinstall but %w", d.dev.path, err)
	}
	have := map[int]bool{}
	for _, p := range parts {
		have[p.Number] = true
	}
	for _, p := range d.parts {
		if !have[p.Number] {
			return fmt.Errorf("%s: kept for the reinstall but has no partition %d", d.dev.path, p.Number)
		}
	}
	// Only add what is missing: the kept disk's partitions may be in use.
	known, err := d.dev.sysPartitions()
	if err != nil {
		return err
	}
	k := map[int]bool{}
	for _, p := range known {
		k[p.number] = true
	}
	for _, p := range parts {
		if k[p.Number] {
			continue
		}
		if err := blkpg(f, unix.BLKPG_ADD_PARTITION, p.Number, int64(p.First*d.geo.sector), int64((p.Last-p.First+1)*d.geo.sector)); err != nil {
			return fmt.Errorf("%s: add partition %d: %w", d.dev.path, p.Number, err)
		}
	}
	for _, p := range parts {
		if err := ensureNode(filepath.Join(filepath.Dir(d.dev.path), partDev(filepath.Base(d.dev.path), p.Number)),
			filepath.Join(d.dev.sys, partDev(d.dev.name, p.Number))); err != nil {
			return err
		}
	}
	return nil
}

func mkfs(ctx context.Context, fs fsPlan, run Runner, log *slog.Logger) error {
	tool, _ := mkfsTool(fs.format)
	if tool == "" {
		return nil
	}
	var args []string
	switch fs.format {
	case "ext4", "ext3":
		args = []string{"-F", "-q"}
		if fs.label != "" {
			args = append(args, "-L", fs.label)
		}
	case "xfs":
		args = []string{"-f", "-q"}
		if fs.label != "" {
			args = append(args, "-L", fs.label)
		}
	case "vfat":
		if fs.label != "" {
			args = append(args, "-n", fs.label)
		}
	case "swap":
		args = []string{"-f"}
		if fs.label != "" {
			args = append(args, "-L", fs.label)
		}
	}
	args = append(append(args, fs.createOpts...), fs.device)
	log.Info("formatting", "device", fs.device, "format", fs.format)
	_, err := run(ctx, tool, args...)
	return err
}

// fsUUID reads the UUID of the filesystem on dev with Probe, falling back
// to blkid for formats Probe does not know.
func fsUUID(ctx context.Context, dev, format string, run Runner) (string, error) {
	f, err := os.Open(dev)
	if err == nil {
		defer f.Close()
		size, serr := f.Seek(0, 2)
		if serr == nil {
			for _, s := range Probe(f, size) {
				if (s.Type == format || (format == "ext3" || format == "ext4") && strings.HasPrefix(s.Type, "ext")) && s.UUID != "" {
					return s.UUID, nil
				}
			}
		}
	}
	out, berr := run(ctx, "blkid", "-o", "value", "-s", "UUID", dev)
	if id := strings.TrimSpace(string(out)); berr == nil && id != "" {
		return id, nil
	}
	return "", fmt.Errorf("no %s UUID found (open: %v, blkid: %v)", format, err, berr)
}

// mount mounts m below target, creating the mount point.
func mount(target string, m Mount) error {
	dir := filepath.Join(target, m.Path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	flags, data := mountFlags(m.Options)
	if err := unix.Mount(m.Device, dir, m.Format, flags, data); err != nil {
		if errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("mount %s on %s: the kernel does not support %s: %w", m.Device, dir, m.Format, err)
		}
		return fmt.Errorf("mount %s (%s) on %s: %w", m.Device, m.Format, dir, err)
	}
	return nil
}

// mountFlags splits fstab options into mount(2) flags and the data string
// the filesystem parses; fstab-only options are dropped.
func mountFlags(opts []string) (uintptr, string) {
	var flags uintptr
	var data []string
	for _, o := range opts {
		switch o {
		case "defaults", "rw", "suid", "dev", "exec", "async", "auto", "noauto", "nofail", "user", "nouser", "_netdev", "sw":
		case "ro":
			flags |= unix.MS_RDONLY
		case "nosuid":
			flags |= unix.MS_NOSUID
		case "nodev":
			flags |= unix.MS_NODEV
		case "noexec":
			flags |= unix.MS_NOEXEC
		case "sync":
			flags |= unix.MS_SYNCHRONOUS
		case "dirsync":
			flags |= unix.MS_DIRSYNC
		case "noatime":
			flags |= unix.MS_NOATIME
		case "nodiratime":
			flags |= unix.MS_NODIRATIME
		case "relatime":
			flags |= unix.MS_RELATIME
		case "strictatime":
			flags |= unix.MS_STRICTATIME
		case "lazytime":
			flags |= unix.MS_LAZYTIME
		default:
			if strings.HasPrefix(o, "x-") || strings.HasPrefix(o, "comment=") {
				continue
			}
			data = append(data, o)
		}
	}
	return flags, strings.Join(data, ",")
}
