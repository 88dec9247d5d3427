package disk

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// wipeSpan is how much is zeroed at each end of a disk and of each
// partition: it covers the protective MBR and both GPTs, md superblocks
// of every version (at 0, 4 KiB, the end), LVM labels (first 4 sectors)
// and metadata areas (1 MiB by default), and the superblocks of ext*,
// xfs, vfat, btrfs (64 KiB) and swap.
const wipeSpan = 4 << 20

// Wipe removes every signature a new layout could trip over from devices:
// both GPTs and the MBR, and md, LVM and filesystem superblocks at the
// start and end of the disk and of every partition (those the kernel
// knows and those in the on-disk GPT, which a kernel without the GPT
// parser does not know). md arrays and device-mapper devices built on the
// disk are stopped first; a mounted partition is an error. Afterwards the
// kernel holds no partitions of the disk. Regular files (disk images) are
// wiped the same way.
func Wipe(ctx context.Context, devices []string, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	zero := make([]byte, wipeSpan)
	for _, dev := range devices {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := wipe(ctx, dev, zero, log, runCommand); err != nil {
			return fmt.Errorf("wipe %s: %w", dev, err)
		}
	}
	return nil
}

type span struct{ off, len int64 }

func wipe(ctx context.Context, path string, zero []byte, log *slog.Logger, run Runner) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Mode().IsRegular() {
		f, err := os.OpenFile(path, os.O_RDWR, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		g, err := newGeometry(fi.Size(), 512)
		if err != nil {
			g = gptGeometry{}
		}
		if err := zeroSpans(f, fi.Size(), gptSpans(f, g, fi.Size(), nil), zero); err != nil {
			return err
		}
		return f.Sync()
	}
	d, err := statBlock(path)
	if err != nil {
		return err
	}
	if err := release(ctx, d.sys, log, run); err != nil {
		return err
	}
	parts, err := d.sysPartitions()
	if err != nil {
		return err
	}
	if err := checkNotMounted(d, parts); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_EXCL, 0)
	if err != nil {
		return fmt.Errorf("open exclusively (in use?): %w", err)
	}
	defer f.Close()
	var spans []span
	for _, p := range parts {
		spans = append(spans, span{p.start, p.length})
	}
	g, gerr := newGeometry(d.size, d.sector)
	if gerr == nil {
		spans = gptSpans(f, g, d.size, spans)
	} else {
		spans = append(spans, span{0, d.size})
	}
	log.Info("wiping", "device", path, "size", d.size, "regions", len(spans))
	if err := zeroSpans(f, d.size, spans, zero); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	// Drop what the page caches of the disk still hold of the old data.
	_ = ioctlPtr(f, unix.BLKFLSBUF, nil)
	return dropPartitions(f, d)
}

// gptSpans adds the whole device and the partitions of an on-disk GPT.
func gptSpans(f *os.File, g gptGeometry, size int64, spans []span) []span {
	spans = append(spans, span{0, size})
	if g.sector == 0 {
		return spans
	}
	if _, parts, err := readGPT(f, g); err == nil {
		for _, p := range parts {
			if p.Last >= p.First && p.Last < g.sectors {
				spans = append(spans, span{int64(p.First * g.sector), int64((p.Last - p.First + 1) * g.sector)})
			}
		}
	}
	return spans
}

// zeroSpans zeroes the first and last wipeSpan bytes of each span.
func zeroSpans(f *os.File, size int64, spans []span, zero []byte) error {
	for _, s := range spans {
		if s.off < 0 || s.len <= 0 || s.off+s.len > size {
			continue
		}
		head := min(s.len, wipeSpan)
		if _, err := f.WriteAt(zero[:head], s.off); err != nil {
			return err
		}
		if s.len > wipeSpan {
			tail := min(s.len-wipeSpan, wipeSpan)
			if _, err := f.WriteAt(zero[:tail], s.off+s.len-tail); err != nil {
				return err
			}
		}
	}
	return nil
}

// release stops what is built on the disk or its partitions (md arrays,
// device-mapper devices such as LVM volumes), top-most first.
func release(ctx context.Context, sys string, log *slog.Logger, run Runner) error {
	dirs := []string{sys}
	ents, _ := os.ReadDir(sys)
	for _, e := range ents {
		if _, err := os.Stat(filepath.Join(sys, e.Name(), "partition")); err == nil {
			dirs = append(dirs, filepath.Join(sys, e.Name()))
		}
	}
	for _, dir := range dirs {
		holders, _ := os.ReadDir(filepath.Join(dir, "holders"))
		for _, h := range holders {
			hsys, err := filepath.EvalSymlinks(filepath.Join(dir, "holders", h.Name()))
			if err != nil {
				continue
			}
			if err := release(ctx, hsys, log, run); err != nil {
				return err
			}
			name := h.Name()
			switch {
			case strings.HasPrefix(name, "md"):
				log.Info("stopping md array on the disk", "array", name)
				if _, err := run(ctx, "mdadm", "--stop", "/dev/"+name); err != nil {
					return fmt.Errorf("%s holds %s: %w", name, filepath.Base(dir), err)
				}
			case strings.HasPrefix(name, "dm-"):
				dm := readTrim(filepath.Join(hsys, "dm/name"))
				if dm == "" {
					dm = name
				}
				log.Info("removing device-mapper device on the disk", "dm", dm)
				if _, err := run(ctx, "dmsetup", "remove", "--retry", dm); err != nil {
					return fmt.Errorf("%s holds %s: %w", dm, filepath.Base(dir), err)
				}
			default:
				return fmt.Errorf("%s holds %s and cannot be released", name, filepath.Base(dir))
			}
		}
	}
	return nil
}

func readTrim(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// checkNotMounted fails when the disk or one of its partitions is mounted.
func checkNotMounted(d blockDev, parts []sysPart) error {
	devs := map[string]string{readTrim(filepath.Join(d.sys, "dev")): d.name}
	for _, p := range parts {
		devs[readTrim(filepath.Join(d.sys, p.name, "dev"))] = p.name
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil // no procfs, nothing to compare against
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		if name, ok := devs[fields[2]]; ok {
			return fmt.Errorf("%s is mounted at %s", name, fields[4])
		}
	}
	return errors.Join(sc.Err())
}
