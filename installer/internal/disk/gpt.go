package disk

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"unicode/utf16"

	"github.com/google/uuid"
)

// GPT on-disk constants (UEFI spec, chapter 5).
const (
	gptEntries    = 128
	gptEntrySize  = 128
	gptHeaderSize = 92
	gptAlign      = 1 << 20 // partitions start on MiB boundaries
	gptSignature  = "EFI PART"
)

// gptTypes maps the short codes of sgdisk (which the layout uses) to
// partition type GUIDs.
func gptType(code string) (string, bool) {
	switch strings.ToLower(code) {
	case "", "8300":
		return "0FC63DAF-8483-4772-8E79-3D69D8477DE4", true // Linux filesystem
	case "ef00":
		return "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", true // EFI system
	case "ef02":
		return "21686148-6449-6E6F-744E-656564454649", true // BIOS boot
	case "fd00":
		return "A19D880F-05FC-4D3B-A006-743F0F84911E", true // Linux RAID
	case "8e00":
		return "E6D6D379-F507-44C2-A23C-238F2A3DF928", true // Linux LVM
	case "8200":
		return "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", true // Linux swap
	case "8304":
		return "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", true // Linux x86-64 root
	}
	if _, err := uuid.Parse(code); err == nil && len(code) == 36 {
		return strings.ToUpper(code), true
	}
	return "", false
}

// gptPart is one partition entry; LBAs in logical sectors, last inclusive.
type gptPart struct {
	Number      int // 1-based entry index
	Type        string
	GUID        string
	Name        string
	First, Last uint64
}

// gptGeometry is where a disk's GPT structures are and what lies between.
type gptGeometry struct {
	sector       uint64 // logical sector size
	sectors      uint64 // disk size in sectors
	entrySectors uint64
}

func newGeometry(size int64, sector int) (gptGeometry, error) {
	if sector < 512 || sector&(sector-1) != 0 {
		return gptGeometry{}, fmt.Errorf("sector size %d", sector)
	}
	g := gptGeometry{sector: uint64(sector), sectors: uint64(size) / uint64(sector)}
	g.entrySectors = (gptEntries*gptEntrySize + g.sector - 1) / g.sector
	if g.sectors < 2*(2+g.entrySectors)+g.alignSectors() {
		return gptGeometry{}, fmt.Errorf("disk of %d bytes is too small for a GPT", size)
	}
	return g, nil
}

func (g gptGeometry) alignSectors() uint64 { return gptAlign / g.sector }
func (g gptGeometry) firstUsable() uint64  { return 2 + g.entrySectors }
func (g gptGeometry) lastUsable() uint64   { return g.sectors - 2 - g.entrySectors }

// firstAligned is where the first partition starts.
func (g gptGeometry) firstAligned() uint64 {
	return alignUp(g.firstUsable(), g.alignSectors())
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) / a * a }

// guidBytes encodes a GUID string in GPT's mixed-endian byte order.
func guidBytes(s string) ([16]byte, error) {
	var b [16]byte
	u, err := uuid.Parse(s)
	if err != nil {
		return b, err
	}
	copy(b[:], u[:])
	// The first three fields are little-endian on disk.
	b[0], b[1], b[2], b[3] = u[3], u[2], u[1], u[0]
	b[4], b[5] = u[5], u[4]
	b[6], b[7] = u[7], u[6]
	return b, nil
}

func guidString(b []byte) string {
	var u uuid.UUID
	copy(u[:], b)
	u[0], u[1], u[2], u[3] = b[3], b[2], b[1], b[0]
	u[4], u[5] = b[5], b[4]
	u[6], u[7] = b[7], b[6]
	return strings.ToUpper(u.String())
}

// encodeGPT returns the protective MBR plus primary header and entries
// (written at offset 0) and the backup entries plus header (written at
// backupOffset).
func encodeGPT(g gptGeometry, diskGUID string, parts []gptPart) (primary, backup []byte, backupOffset int64, err error) {
	entries := make([]byte, g.entrySectors*g.sector)
	for _, p := range parts {
		if p.Number < 1 || p.Number > gptEntries {
			return nil, nil, 0, fmt.Errorf("partition number %d not in 1..%d", p.Number, gptEntries)
		}
		e := entries[(p.Number-1)*gptEntrySize : p.Number*gptEntrySize]
		t, err := guidBytes(p.Type)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("partition %d type: %w", p.Number, err)
		}
		u, err := guidBytes(p.GUID)
		if err != nil {
			return nil, nil, 0, fmt.Errorf("partition %d guid: %w", p.Number, err)
		}
		copy(e[0:16], t[:])
		copy(e[16:32], u[:])
		binary.LittleEndian.PutUint64(e[32:40], p.First)
		binary.LittleEndian.PutUint64(e[40:48], p.Last)
		name := utf16.Encode([]rune(p.Name))
		if len(name) > 36 {
			return nil, nil, 0, fmt.Errorf("partition %d name %q is longer than 36 UTF-16 units", p.Number, p.Name)
		}
		for i, c := range name {
			binary.LittleEndian.PutUint16(e[56+2*i:], c)
		}
	}
	entriesCRC := crc32.ChecksumIEEE(entries[:gptEntries*gptEntrySize])
	dg, err := guidBytes(diskGUID)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("disk guid: %w", err)
	}
	header := func(current, other, entriesLBA uint64) []byte {
		h := make([]byte, g.sector)
		copy(h, gptSignature)
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], gptHeaderSize)
		binary.LittleEndian.PutUint64(h[24:], current)
		binary.LittleEndian.PutUint64(h[32:], other)
		binary.LittleEndian.PutUint64(h[40:], g.firstUsable())
		binary.LittleEndian.PutUint64(h[48:], g.lastUsable())
		copy(h[56:72], dg[:])
		binary.LittleEndian.PutUint64(h[72:], entriesLBA)
		binary.LittleEndian.PutUint32(h[80:], gptEntries)
		binary.LittleEndian.PutUint32(h[84:], gptEntrySize)
		binary.LittleEndian.PutUint32(h[88:], entriesCRC)
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:gptHeaderSize]))
		return h
	}
	mbr := make([]byte, g.sector)
	pe := mbr[446:462]
	pe[1], pe[2], pe[3] = 0x00, 0x02, 0x00 // CHS of LBA 1
	pe[4] = 0xee
	pe[5], pe[6], pe[7] = 0xff, 0xff, 0xff
	binary.LittleEndian.PutUint32(pe[8:], 1)
	binary.LittleEndian.PutUint32(pe[12:], uint32(min(g.sectors-1, 0xffffffff)))
	mbr[510], mbr[511] = 0x55, 0xaa

	last := g.sectors - 1
	primary = append(append(mbr, header(1, last, 2)...), entries...)
	backupEntriesLBA := last - g.entrySectors
	backup = append(append([]byte{}, entries...), header(last, 1, backupEntriesLBA)...)
	return primary, backup, int64(backupEntriesLBA * g.sector), nil
}

// readGPT reads the partition table, from the backup when the primary is
// damaged.
func readGPT(r io.ReaderAt, g gptGeometry) (diskGUID string, parts []gptPart, err error) {
	guid, parts, perr := readGPTAt(r, g, 1)
	if perr == nil {
		return guid, parts, nil
	}
	guid, parts, berr := readGPTAt(r, g, g.sectors-1)
	if berr == nil {
		return guid, parts, nil
	}
	return "", nil, fmt.Errorf("primary GPT: %w; backup GPT: %v", perr, berr)
}

var errNoGPT = errors.New("no GPT signature")

func readGPTAt(r io.ReaderAt, g gptGeometry, lba uint64) (string, []gptPart, error) {
	h := make([]byte, g.sector)
	if _, err := r.ReadAt(h, int64(lba*g.sector)); err != nil {
		return "", nil, err
	}
	if string(h[:8]) != gptSignature {
		return "", nil, errNoGPT
	}
	hs := binary.LittleEndian.Uint32(h[12:])
	if hs < gptHeaderSize || uint64(hs) > g.sector {
		return "", nil, fmt.Errorf("header size %d", hs)
	}
	crc := binary.LittleEndian.Uint32(h[16:])
	hc := append([]byte{}, h[:hs]...)
	binary.LittleEndian.PutUint32(hc[16:], 0)
	if crc32.ChecksumIEEE(hc) != crc {
		return "", nil, errors.New("header CRC mismatch")
	}
	entriesLBA := binary.LittleEndian.Uint64(h[72:])
	n := binary.LittleEndian.Uint32(h[80:])
	es := binary.LittleEndian.Uint32(h[84:])
	if es < gptEntrySize || es > 4096 || n == 0 || n > 1024 || entriesLBA >= g.sectors {
		return "", nil, fmt.Errorf("%d entries of %d bytes at LBA %d", n, es, entriesLBA)
	}
	entries := make([]byte, int(n)*int(es))
	if _, err := r.ReadAt(entries, int64(entriesLBA*g.sector)); err != nil {
		return "", nil, err
	}
	if crc32.ChecksumIEEE(entries) != binary.LittleEndian.Uint32(h[88:]) {
		return "", nil, errors.New("entries CRC mismatch")
	}
	var parts []gptPart
	zero := make([]byte, 16)
	for i := range int(n) {
		e := entries[i*int(es) : (i+1)*int(es)]
		if bytes.Equal(e[:16], zero) {
			continue
		}
		name := make([]uint16, 0, 36)
		for j := 56; j+1 < 128; j += 2 {
			c := binary.LittleEndian.Uint16(e[j:])
			if c == 0 {
				break
			}
			name = append(name, c)
		}
		parts = append(parts, gptPart{
			Number: i + 1,
			Type:   guidString(e[0:16]),
			GUID:   guidString(e[16:32]),
			First:  binary.LittleEndian.Uint64(e[32:]),
			Last:   binary.LittleEndian.Uint64(e[40:]),
			Name:   string(utf16.Decode(name)),
		})
	}
	return guidString(h[56:72]), parts, nil
}
