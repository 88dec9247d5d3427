package disk

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

func probeAt(t *testing.T, f *os.File, off, size int64) []Signature {
	t.Helper()
	return Probe(io.NewSectionReader(f, off, size), size)
}

func types(s []Signature) string {
	var ts []string
	for _, x := range s {
		ts = append(ts, x.Type)
	}
	return strings.Join(ts, ",")
}

// TestWipe puts every kind of signature on a disk (GPT and protective MBR,
// vfat, ext4, swap, xfs, an md superblock, an LVM label), checks that
// Probe finds each where blkid does, wipes, and checks that neither Probe
// nor blkid nor wipefs find anything and that the kernel has dropped the
// partitions.
func TestWipe(t *testing.T) {
	needTools(t, "mkfs.ext4", "mkfs.vfat", "mkfs.xfs", "mkswap", "blkid", "wipefs")
	dev, _ := loopDisk(t, 512<<20)
	l := &agentv1.Layout{
		Disks: []*agentv1.Disk{{Device: dev, Partitions: []*agentv1.DiskPartition{
			{Number: 1, SizeBytes: 32 << 20, GptType: "ef00"},
			{Number: 2, SizeBytes: 32 << 20},
			{Number: 3, SizeBytes: 16 << 20, GptType: "8200"},
			{Number: 4, SizeBytes: 320 << 20},
			{Number: 5, SizeBytes: 16 << 20, GptType: "fd00"},
			{Number: 6, GptType: "8e00"},
		}}},
		Filesystems: []*agentv1.Filesystem{
			{Device: dev + "p1", Format: "vfat", Label: "EFI"},
			{Device: dev + "p2", Format: "ext4", Label: "root"},
			{Device: dev + "p3", Format: "swap", Label: "swap"},
			{Device: dev + "p4", Format: "xfs", Label: "data"},
		},
	}
	if _, err := Apply(context.Background(), l, Options{Target: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	// An md 1.2 superblock (magic at 4 KiB) on p5, written by hand: the
	// host kernel may have no md driver for mdadm to create one.
	p5, err := os.OpenFile(dev+"p5", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p5.WriteAt(binary.LittleEndian.AppendUint32(nil, 0xa92b4efc), 4096); err != nil {
		t.Fatal(err)
	}
	p5.Sync()
	p5.Close()
	lvm := false
	if _, err := exec.LookPath("lvm"); err == nil {
		if out, err := exec.Command("lvm", "pvcreate", "--yes", dev+"p6").CombinedOutput(); err != nil {
			t.Logf("no LVM label: pvcreate: %v: %s", err, out)
		} else {
			lvm = true
		}
	}

	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	d, err := statBlock(dev)
	if err != nil {
		t.Fatal(err)
	}
	parts, err := d.sysPartitions()
	if err != nil || len(parts) != 6 {
		t.Fatalf("sysfs partitions %v, %v", parts, err)
	}
	want := map[string]string{"1": "vfat", "2": "ext4", "3": "swap", "4": "xfs", "5": "md", "6": "LVM2_member"}
	if !lvm {
		want["6"] = ""
	}
	for _, p := range parts {
		n := strings.TrimPrefix(p.name, filepath.Base(dev)+"p")
		sigs := probeAt(t, f, p.start, p.length)
		if got := types(sigs); got != want[n] {
			t.Errorf("partition %s: Probe finds %q, want %q", n, got, want[n])
		}
		if want[n] != "" && want[n] != "md" && want[n] != "LVM2_member" {
			if id := blkid(t, dev+"p"+n, "UUID"); sigs[0].UUID != id {
				t.Errorf("partition %s: Probe UUID %s, blkid %s", n, sigs[0].UUID, id)
			}
			if lbl := blkid(t, dev+"p"+n, "LABEL"); sigs[0].Label != lbl {
				t.Errorf("partition %s: Probe label %s, blkid %s", n, sigs[0].Label, lbl)
			}
		}
	}
	if got := types(Probe(f, d.size)); got != "dos,gpt,gpt" {
		t.Errorf("whole disk: Probe finds %q, want the protective MBR and both GPTs", got)
	}

	if err := Wipe(context.Background(), []string{dev}, nil); err != nil {
		t.Fatal(err)
	}

	if got, err := d.sysPartitions(); err != nil || len(got) != 0 {
		t.Errorf("kernel still has partitions %v (%v)", got, err)
	}
	if sigs := Probe(f, d.size); len(sigs) != 0 {
		t.Errorf("whole disk after Wipe: %v", sigs)
	}
	for _, p := range parts {
		if sigs := probeAt(t, f, p.start, p.length); len(sigs) != 0 {
			t.Errorf("old partition %s after Wipe: %v", p.name, sigs)
		}
		// blkid on the old partition's bytes through a fresh loop device
		// at its offset is overkill; blkid -p at the offset does the same.
		out, err := exec.Command("blkid", "-p", "-O", itoa(p.start), "-S", itoa(p.length), dev).CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 {
			t.Errorf("blkid at partition %s's offset: %v %s", p.name, err, out)
		}
	}
	out, err := exec.Command("blkid", "-p", dev).CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Errorf("blkid -p %s after Wipe: %v %s (want exit 2, nothing found)", dev, err, out)
	}
	if out, err := exec.Command("wipefs", "--no-act", "--noheadings", dev).CombinedOutput(); err != nil || len(strings.TrimSpace(string(out))) != 0 {
		t.Errorf("wipefs finds: %v %s", err, out)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
