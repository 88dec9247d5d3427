package disk

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

func writeGPTImage(t *testing.T, size int64, sector int, parts []gptPart) (string, gptGeometry) {
	t.Helper()
	g, err := newGeometry(size, sector)
	if err != nil {
		t.Fatal(err)
	}
	primary, backup, off, err := encodeGPT(g, "11111111-2222-4333-8444-555555555555", parts)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(primary, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(backup, off); err != nil {
		t.Fatal(err)
	}
	return img, g
}

// The table we write is read back the same by our reader and by
// go-diskfs, an independent GPT implementation, for both sector sizes.
func TestGPTRoundTrip(t *testing.T) {
	for _, sector := range []int{512, 4096} {
		t.Run(fmt.Sprint(sector), func(t *testing.T) {
			const size = 64 << 20
			g, _ := newGeometry(size, sector)
			start := g.firstAligned()
			mib := uint64(1<<20) / g.sector
			esp, _ := gptType("ef00")
			linux, _ := gptType("8300")
			parts := []gptPart{
				{Number: 1, Type: esp, GUID: "A0000000-0000-4000-8000-000000000001", Name: "efi", First: start, Last: start + 8*mib - 1},
				{Number: 3, Type: linux, GUID: "A0000000-0000-4000-8000-000000000003", Name: "røøt", First: start + 8*mib, Last: g.lastUsable()},
			}
			img, _ := writeGPTImage(t, size, sector, parts)

			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			guid, got, err := readGPT(f, g)
			if err != nil {
				t.Fatal(err)
			}
			if guid != "11111111-2222-4333-8444-555555555555" {
				t.Errorf("disk guid %s", guid)
			}
			if len(got) != 2 || got[0] != parts[0] || got[1] != parts[1] {
				t.Errorf("read back %+v, want %+v", got, parts)
			}

			d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly), diskfs.WithSectorSize(diskfs.SectorSize(sector)))
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			pt, err := d.GetPartitionTable()
			if err != nil {
				t.Fatalf("go-diskfs cannot read our GPT: %v", err)
			}
			tbl, ok := pt.(*gpt.Table)
			if !ok {
				t.Fatalf("go-diskfs sees a %T", pt)
			}
			// go-diskfs looks for the MBR signature at the end of the
			// logical block; UEFI puts it at byte 510 for every sector size.
			if sector == 512 && !tbl.ProtectiveMBR {
				t.Error("go-diskfs sees no protective MBR")
			}
			mbr := make([]byte, 512)
			if _, err := f.ReadAt(mbr, 0); err != nil {
				t.Fatal(err)
			}
			if mbr[510] != 0x55 || mbr[511] != 0xaa || mbr[446+4] != 0xee {
				t.Errorf("protective MBR: signature % x, type %#x", mbr[510:512], mbr[446+4])
			}
			var seen []string
			for _, p := range tbl.Partitions {
				if p.Type == gpt.Unused {
					continue
				}
				seen = append(seen, strings.ToUpper(string(p.Type))+"/"+p.Name+"/"+strings.ToUpper(p.GUID))
				if p.Index == 1 && (p.Start != parts[0].First || p.End != parts[0].Last) {
					t.Errorf("go-diskfs: partition 1 at %d-%d, want %d-%d", p.Start, p.End, parts[0].First, parts[0].Last)
				}
			}
			want := []string{strings.ToUpper(esp) + "/efi/A0000000-0000-4000-8000-000000000001", strings.ToUpper(linux) + "/røøt/A0000000-0000-4000-8000-000000000003"}
			if strings.Join(seen, " ") != strings.Join(want, " ") {
				t.Errorf("go-diskfs reads %v, want %v", seen, want)
			}
		})
	}
}

// A damaged primary header falls back to the backup at the end.
func TestGPTBackup(t *testing.T) {
	const size = 16 << 20
	g, _ := newGeometry(size, 512)
	linux, _ := gptType("8300")
	parts := []gptPart{{Number: 1, Type: linux, GUID: "A0000000-0000-4000-8000-000000000001", First: g.firstAligned(), Last: g.lastUsable()}}
	img, _ := writeGPTImage(t, size, 512, parts)
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt([]byte("garbage!"), 512+24); err != nil {
		t.Fatal(err)
	}
	_, got, err := readGPT(f, g)
	if err != nil || len(got) != 1 || got[0] != parts[0] {
		t.Fatalf("readGPT = %v, %v; want the backup's %v", got, err, parts)
	}
	if _, err := f.WriteAt([]byte("garbage!"), size-512+24); err != nil {
		t.Fatal(err)
	}
	if _, _, err := readGPT(f, g); err == nil {
		t.Fatal("readGPT with both headers damaged succeeded")
	}
}

func TestEncodeGPTErrors(t *testing.T) {
	g, _ := newGeometry(16<<20, 512)
	linux, _ := gptType("8300")
	for _, tc := range []struct {
		name string
		p    gptPart
		want string
	}{
		{"number 0", gptPart{Number: 0, Type: linux, GUID: "A0000000-0000-4000-8000-000000000001"}, "not in 1..128"},
		{"long name", gptPart{Number: 1, Type: linux, GUID: "A0000000-0000-4000-8000-000000000001", Name: strings.Repeat("n", 37)}, "longer than 36"},
		{"bad type", gptPart{Number: 1, Type: "nope", GUID: "A0000000-0000-4000-8000-000000000001"}, "type"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, _, err := encodeGPT(g, "11111111-2222-4333-8444-555555555555", []gptPart{tc.p}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want %q", err, tc.want)
			}
		})
	}
	if _, err := newGeometry(1<<20, 512); err == nil {
		t.Error("a 1 MiB disk got a geometry")
	}
}

func TestPartDev(t *testing.T) {
	for _, tc := range []struct {
		disk string
		n    int
		want string
	}{
		{"sda", 1, "sda1"}, {"vda", 12, "vda12"}, {"nvme0n1", 1, "nvme0n1p1"}, {"loop0", 2, "loop0p2"}, {"mmcblk0", 1, "mmcblk0p1"}, {"xvdb", 3, "xvdb3"},
	} {
		if got := partDev(tc.disk, tc.n); got != tc.want {
			t.Errorf("partDev(%s, %d) = %s, want %s", tc.disk, tc.n, got, tc.want)
		}
	}
}

func TestMountFlags(t *testing.T) {
	for _, tc := range []struct {
		opts  []string
		flags uintptr
		data  string
	}{
		{nil, 0, ""},
		{[]string{"defaults"}, 0, ""},
		{[]string{"noatime", "nodev", "nosuid", "errors=remount-ro"}, 0x400 | 0x4 | 0x2, "errors=remount-ro"},
		{[]string{"ro", "umask=0077", "nofail", "x-systemd.automount", "shortname=mixed"}, 0x1, "umask=0077,shortname=mixed"},
	} {
		flags, data := mountFlags(tc.opts)
		if flags != tc.flags || data != tc.data {
			t.Errorf("mountFlags(%v) = %#x %q, want %#x %q", tc.opts, flags, data, tc.flags, tc.data)
		}
	}
}

func TestFstab(t *testing.T) {
	a := &Applied{
		Mounts: []Mount{
			{Device: "/dev/sda2", Path: "/", Format: "ext4", UUID: "r", Options: []string{"noatime", "errors=remount-ro"}},
			{Device: "/dev/sda1", Path: "/boot/efi", Format: "vfat", UUID: "ABCD-0123", Options: []string{"umask=0077"}},
			{Device: "/dev/md/data", Path: "/data", Format: "xfs", UUID: "x"},
		},
		Tmpfs: []Mount{{Device: "tmpfs", Path: "/tmp", Format: "tmpfs", Options: []string{"size=1g"}}},
		Swaps: []Mount{{Device: "/dev/sda3", Format: "swap", UUID: "s"}},
	}
	want := "UUID=r / ext4 noatime,errors=remount-ro 0 1\n" +
		"UUID=ABCD-0123 /boot/efi vfat umask=0077 0 2\n" +
		"UUID=x /data xfs defaults 0 0\n" +
		"tmpfs /tmp tmpfs size=1g 0 0\n" +
		"UUID=s none swap sw 0 0\n"
	got := a.Fstab()
	if !strings.HasSuffix(got, want) || strings.Count(got, "\n") != 7 {
		t.Errorf("fstab:\n%s\nwant the lines:\n%s", got, want)
	}
	if a.Root() != &a.Mounts[0] || a.ESP() != &a.Mounts[1] {
		t.Errorf("Root %v ESP %v", a.Root(), a.ESP())
	}
	if (&Applied{}).Root() != nil || (&Applied{}).ESP() != nil {
		t.Error("empty Applied has a root or an ESP")
	}
}
