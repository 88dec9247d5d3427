package facts

import (
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// readDisks lists the whole disks in <Sys>/class/block.
func readDisks(r Root, log *slog.Logger) ([]*agentv1.DiskFact, error) {
	dir := r.sys("class/block")
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		log.Warn("no block class in sysfs", "path", dir)
		return nil, nil
	}
	if err != nil {
		return nil, errPath(dir, err)
	}
	var out []*agentv1.DiskFact
	for _, e := range ents {
		name := e.Name()
		if skipBlock(name) {
			continue
		}
		d := filepath.Join(dir, name)
		if _, err := os.Stat(filepath.Join(d, "partition")); err == nil {
			continue
		}
		sectors, err := strconv.ParseUint(readString(filepath.Join(d, "size")), 10, 64)
		if err != nil {
			log.Warn("block device without a readable size", "disk", name, "err", err)
			continue
		}
		if sectors == 0 {
			// Card readers without a card, detached virtual disks.
			continue
		}
		out = append(out, &agentv1.DiskFact{
			Name: name,
			// sysfs counts 512-byte sectors whatever the logical block size.
			SizeBytes:  sectors * 512,
			Model:      readString(filepath.Join(d, "device/model")),
			Serial:     diskSerial(d),
			Rotational: readString(filepath.Join(d, "queue/rotational")) == "1",
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// skipBlock says whether a block device is not a disk a layout could use:
// loop and RAM disks, optical drives, device-mapper and md arrays (made
// from disks), network block devices, floppies.
func skipBlock(name string) bool {
	for _, p := range []string{"loop", "ram", "zram", "sr", "dm-", "md", "nbd", "fd"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// diskSerial finds the serial where each driver puts it: NVMe in
// device/serial, virtio-blk in serial, SCSI/SATA in the unit serial number
// VPD page 0x80 (4-byte header, then the ASCII serial).
func diskSerial(d string) string {
	if s := readString(filepath.Join(d, "device/serial")); s != "" {
		return s
	}
	if s := readString(filepath.Join(d, "serial")); s != "" {
		return s
	}
	b, err := os.ReadFile(filepath.Join(d, "device/vpd_pg80"))
	if err != nil || len(b) < 4 {
		return ""
	}
	n := int(b[2])<<8 | int(b[3])
	b = b[4:]
	if n < len(b) {
		b = b[:n]
	}
	return strings.TrimSpace(strings.TrimRight(string(b), "\x00"))
}
