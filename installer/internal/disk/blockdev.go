package disk

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// blockDev describes a block device node.
type blockDev struct {
	path   string
	sys    string // its sysfs directory
	name   string // kernel name, e.g. "nvme0n1"
	size   int64
	sector int
}

// statBlock checks that path is a block device and reads its size and
// logical sector size. It opens the device read-only, which changes
// nothing on it.
func statBlock(path string) (blockDev, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return blockDev{}, fmt.Errorf("%s: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return blockDev{}, fmt.Errorf("%s is not a block device", path)
	}
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
	real, err := filepath.EvalSymlinks(sys)
	if err != nil {
		return blockDev{}, fmt.Errorf("%s: %w", path, err)
	}
	d := blockDev{path: path, sys: real, name: filepath.Base(real)}
	f, err := os.Open(path)
	if err != nil {
		return blockDev{}, err
	}
	defer f.Close()
	var size uint64
	if err := ioctlPtr(f, unix.BLKGETSIZE64, unsafe.Pointer(&size)); err != nil {
		return blockDev{}, fmt.Errorf("%s: size: %w", path, err)
	}
	var ss int32
	if err := ioctlPtr(f, unix.BLKSSZGET, unsafe.Pointer(&ss)); err != nil {
		return blockDev{}, fmt.Errorf("%s: sector size: %w", path, err)
	}
	d.size, d.sector = int64(size), int(ss)
	return d, nil
}

func ioctlPtr(f *os.File, req uint, arg unsafe.Pointer) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return err
	}
	var e unix.Errno
	if err := rc.Control(func(fd uintptr) {
		_, _, e = unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(arg))
	}); err != nil {
		return err
	}
	if e != 0 {
		return e
	}
	return nil
}

// partDev names partition n of a disk the kernel's way: a "p" goes between
// names ending in a digit and the number (nvme0n1p1, loop0p1, mmcblk0p1),
// not otherwise (sda1, vda1).
func partDev(disk string, n int) string {
	if last := disk[len(disk)-1]; last >= '0' && last <= '9' {
		return disk + "p" + strconv.Itoa(n)
	}
	return disk + strconv.Itoa(n)
}

// sysPart is a partition the kernel knows, from sysfs.
type sysPart struct {
	name          string
	number        int
	start, length int64 // bytes
}

func (d blockDev) sysPartitions() ([]sysPart, error) {
	ents, err := os.ReadDir(d.sys)
	if err != nil {
		return nil, err
	}
	var out []sysPart
	for _, e := range ents {
		dir := filepath.Join(d.sys, e.Name())
		n, err := readInt(filepath.Join(dir, "partition"))
		if err != nil {
			continue
		}
		start, err1 := readInt(filepath.Join(dir, "start"))
		size, err2 := readInt(filepath.Join(dir, "size"))
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("partition %s: %w", e.Name(), err)
		}
		// sysfs counts 512-byte sectors whatever the logical block size.
		out = append(out, sysPart{name: e.Name(), number: int(n), start: start * 512, length: size * 512})
	}
	return out, nil
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// blkpg adds or deletes one partition through the BLKPG ioctl; it works
// whether or not the kernel has a parser for the partition table.
func blkpg(f *os.File, op int32, number int, start, length int64) error {
	p := unix.BlkpgPartition{Start: start, Length: length, Pno: int32(number)}
	a := unix.BlkpgIoctlArg{Op: op, Datalen: int32(unsafe.Sizeof(p)), Data: (*byte)(unsafe.Pointer(&p))}
	return ioctlPtr(f, unix.BLKPG, unsafe.Pointer(&a))
}

// syncPartitions makes the kernel's view of the disk's partitions equal
// parts. It asks for a re-read first; kernels without the GPT parser
// (CONFIG_EFI_PARTITION unset, as in some lab hosts) or disks whose
// partition scanning is off (loop devices without -P) then get the
// partitions one by one over BLKPG, and partition nodes are created when
// /dev is not a devtmpfs.
func syncPartitions(f *os.File, d blockDev, g gptGeometry, parts []gptPart) error {
	rrErr := ioctlPtr(f, unix.BLKRRPART, nil)
	if errors.Is(rrErr, unix.EBUSY) {
		return fmt.Errorf("%s: re-read partition table: device busy (a partition is mounted or in use): %w", d.path, rrErr)
	}
	have, err := d.sysPartitions()
	if err != nil {
		return err
	}
	want := map[int]gptPart{}
	for _, p := range parts {
		want[p.Number] = p
	}
	byNum := map[int]sysPart{}
	for _, h := range have {
		w, ok := want[h.number]
		if ok && h.start == int64(w.First*g.sector) && h.length == int64((w.Last-w.First+1)*g.sector) {
			byNum[h.number] = h
			continue
		}
		if err := blkpg(f, unix.BLKPG_DEL_PARTITION, h.number, 0, 0); err != nil {
			return fmt.Errorf("%s: remove stale partition %d: %w", d.path, h.number, err)
		}
	}
	for _, p := range parts {
		if _, ok := byNum[p.Number]; ok {
			continue
		}
		start, length := int64(p.First*g.sector), int64((p.Last-p.First+1)*g.sector)
		if err := blkpg(f, unix.BLKPG_ADD_PARTITION, p.Number, start, length); err != nil {
			return fmt.Errorf("%s: add partition %d (re-read: %v): %w", d.path, p.Number, rrErr, err)
		}
	}
	for _, p := range parts {
		if err := ensureNode(filepath.Join(filepath.Dir(d.path), partDev(filepath.Base(d.path), p.Number)),
			filepath.Join(d.sys, partDev(d.name, p.Number))); err != nil {
			return err
		}
	}
	return nil
}

// dropPartitions removes every partition the kernel knows of the disk.
func dropPartitions(f *os.File, d blockDev) error {
	rrErr := ioctlPtr(f, unix.BLKRRPART, nil)
	if errors.Is(rrErr, unix.EBUSY) {
		return fmt.Errorf("%s: re-read partition table: device busy (a partition is mounted or in use): %w", d.path, rrErr)
	}
	have, err := d.sysPartitions()
	if err != nil {
		return err
	}
	for _, h := range have {
		if err := blkpg(f, unix.BLKPG_DEL_PARTITION, h.number, 0, 0); err != nil {
			return fmt.Errorf("%s: remove partition %d: %w", d.path, h.number, err)
		}
	}
	return nil
}

// ensureNode waits briefly for devtmpfs to create a partition's node and
// makes it from sysfs' major:minor when it does not come (a static /dev).
func ensureNode(node, sys string) error {
	var st unix.Stat_t
	var devErr error
	for i := 0; i < 20; i++ {
		b, err := os.ReadFile(filepath.Join(sys, "dev"))
		if err != nil {
			devErr = err
			time.Sleep(50 * time.Millisecond)
			continue
		}
		maj, min, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
		ma, err1 := strconv.ParseUint(maj, 10, 32)
		mi, err2 := strconv.ParseUint(min, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return fmt.Errorf("%s/dev: malformed %q", sys, b)
		}
		rdev := unix.Mkdev(uint32(ma), uint32(mi))
		if err := unix.Stat(node, &st); err == nil {
			if st.Mode&unix.S_IFMT == unix.S_IFBLK && st.Rdev == rdev {
				return nil
			}
			if i < 10 {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			// A stale node from an earlier layout.
			if err := os.Remove(node); err != nil {
				return err
			}
		} else if i < 4 {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if err := unix.Mknod(node, unix.S_IFBLK|0o660, int(rdev)); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mknod %s: %w", node, err)
		}
		return nil
	}
	return fmt.Errorf("partition %s did not appear in sysfs: %w", filepath.Base(sys), devErr)
}
