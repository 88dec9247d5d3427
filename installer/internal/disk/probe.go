package disk

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"strings"

	"github.com/google/uuid"
)

// Signature is something on a device that tools (the kernel's partition
// parsers, mdadm and LVM scans, blkid, mount) would recognise.
type Signature struct {
	Type   string // "ext4", "xfs", "vfat", "swap", "btrfs", "md", "LVM2_member", "gpt", "dos"
	Offset int64
	UUID   string
	Label  string
}

// Probe finds the signatures on the first and last bytes of a device of
// size bytes. It is the installer's own blkid: it needs no tool in the
// initramfs and reads only what it knows.
func Probe(r io.ReaderAt, size int64) []Signature {
	head := make([]byte, min(size, 128<<10))
	n, _ := r.ReadAt(head, 0)
	head = head[:n]
	at := func(off, l int) []byte {
		if off < 0 || off+l > len(head) {
			return nil
		}
		return head[off : off+l]
	}
	var out []Signature

	// ext2/3/4: superblock at 1024, magic 0xEF53 at 56.
	if m := at(1024+56, 2); m != nil && binary.LittleEndian.Uint16(m) == 0xef53 {
		sb := at(1024, 1024)
		typ := "ext2"
		compat := binary.LittleEndian.Uint32(sb[92:])
		incompat := binary.LittleEndian.Uint32(sb[96:])
		rocompat := binary.LittleEndian.Uint32(sb[100:])
		switch {
		case incompat&^0x6 != 0 || rocompat&^0x7 != 0: // beyond filetype+recover / sparse+large+btree
			typ = "ext4"
		case compat&0x4 != 0: // has_journal
			typ = "ext3"
		}
		out = append(out, Signature{Type: typ, Offset: 1024, UUID: uuidString(sb[104:120]), Label: cstr(sb[120:136])})
	}
	if m := at(0, 4); string(m) == "XFSB" {
		sb := at(0, 120)
		out = append(out, Signature{Type: "xfs", UUID: uuidString(sb[32:48]), Label: cstr(sb[108:120])})
	}
	if m := at(510, 2); m != nil && m[0] == 0x55 && m[1] == 0xaa {
		bs := at(0, 512)
		switch {
		case string(bs[82:87]) == "FAT32":
			out = append(out, Signature{Type: "vfat", UUID: fatID(bs[67:71]), Label: fatLabel(bs[71:82])})
		case string(bs[54:59]) == "FAT12" || string(bs[54:59]) == "FAT16":
			out = append(out, Signature{Type: "vfat", UUID: fatID(bs[39:43]), Label: fatLabel(bs[43:54])})
		default:
			out = append(out, Signature{Type: "dos", Offset: 510})
		}
	}
	for _, page := range []int{4096, 8192, 16384, 65536} {
		if m := at(page-10, 10); string(m) == "SWAPSPACE2" || string(m) == "SWAP-SPACE" {
			s := Signature{Type: "swap", Offset: int64(page - 10)}
			if string(m) == "SWAPSPACE2" {
				s.UUID, s.Label = uuidString(at(1024+12, 16)), cstr(at(1024+28, 16))
			}
			out = append(out, s)
			break
		}
	}
	if m := at(65536+64, 8); string(m) == "_BHRfS_M" {
		out = append(out, Signature{Type: "btrfs", Offset: 65536, UUID: uuidString(at(65536+32, 16))})
	}
	for s := 0; s < 4; s++ {
		if m := at(s*512, 32); m != nil && string(m[:8]) == "LABELONE" && string(m[24:32]) == "LVM2 001" {
			out = append(out, Signature{Type: "LVM2_member", Offset: int64(s * 512)})
		}
	}
	for _, off := range []int{512, 4096} {
		if m := at(off, 8); string(m) == "EFI PART" {
			out = append(out, Signature{Type: "gpt", Offset: int64(off)})
		}
	}

	// md superblocks: 1.1 at 0, 1.2 at 4 KiB, 1.0 near the end, 0.90 in the
	// last 64 KiB-aligned 64 KiB.
	mdAt := func(off int64) {
		b := make([]byte, 4)
		if off < 0 || off+4 > size {
			return
		}
		if _, err := r.ReadAt(b, off); err == nil && binary.LittleEndian.Uint32(b) == 0xa92b4efc {
			out = append(out, Signature{Type: "md", Offset: off})
		}
	}
	mdAt(0)
	mdAt(4096)
	mdAt(((size/512 - 16) &^ 7) * 512)
	mdAt((size/512&^127 - 128) * 512)
	// The backup GPT header in the last sector (512 or 4096 bytes).
	for _, ss := range []int64{512, 4096} {
		b := make([]byte, 8)
		if size-ss > 0 {
			if _, err := r.ReadAt(b, size-ss); err == nil && string(b) == "EFI PART" {
				out = append(out, Signature{Type: "gpt", Offset: size - ss})
			}
		}
	}
	return out
}

func uuidString(b []byte) string {
	if len(b) != 16 || bytes.Equal(b, make([]byte, 16)) {
		return ""
	}
	u, _ := uuid.FromBytes(b)
	return u.String()
}

// fatID is the volume serial the way blkid and fstab spell it: "ABCD-1234".
func fatID(b []byte) string {
	v := binary.LittleEndian.Uint32(b)
	return fmt.Sprintf("%04X-%04X", v>>16, v&0xffff)
}

func fatLabel(b []byte) string {
	l := strings.TrimRight(string(b), " \x00")
	if l == "NO NAME" {
		return ""
	}
	return l
}

func cstr(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}
