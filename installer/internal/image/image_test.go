package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"golang.org/x/sys/unix"
)

// entry is one archive member for tests.
type entry struct {
	hdr  tar.Header
	data []byte
}

var mtime = time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC)

func file(name string, mode int64, data []byte) entry {
	return entry{tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data)), ModTime: mtime, Format: tar.FormatPAX}, data}
}

func dir(name string, mode int64) entry {
	return entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: mode, ModTime: mtime, Format: tar.FormatPAX}}
}

func link(typ byte, name, target string) entry {
	return entry{hdr: tar.Header{Typeflag: typ, Name: name, Linkname: target, Mode: 0o777, ModTime: mtime, Format: tar.FormatPAX}}
}

func makeTar(t testing.TB, es []entry, trailer []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range es {
		h := e.hdr
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return append(b.Bytes(), trailer...)
}

func compress(t testing.TB, kind string, raw []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	var w io.WriteCloser
	switch kind {
	case "none":
		return raw
	case "gzip":
		w = gzip.NewWriter(&b)
	case "zstd":
		zw, err := zstd.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w = zw
	case "lz4":
		w = lz4.NewWriter(&b)
	default:
		t.Fatalf("unknown compression %s", kind)
	}
	if _, err := w.Write(raw); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func sum(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// serve serves body at /image; truncate > 0 announces the full length
// but sends only that many bytes and drops the connection.
func serve(t testing.TB, body []byte, truncate int) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/image" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		if truncate > 0 {
			w.Write(body[:truncate])
			return
		}
		w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL + "/image"
}

func rootfs(t testing.TB) ([]entry, int64) {
	big := make([]byte, 3<<20+17)
	rand.Read(big)
	es := []entry{
		dir("./", 0o755),
		dir("etc/", 0o755),
		file("etc/hostname", 0o644, []byte("metal\n")),
		link(tar.TypeSymlink, "etc/localtime", "/usr/share/zoneinfo/Etc/UTC"),
		dir("usr/", 0o755),
		dir("usr/bin/", 0o755),
		file("usr/bin/tool", 0o4755, []byte("#!/bin/sh\necho tool\n")),
		link(tar.TypeLink, "usr/bin/tool-alias", "usr/bin/tool"),
		link(tar.TypeSymlink, "bin", "usr/bin"),
		file("usr/lib/big.bin", 0o600, big), // parent not in the archive
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mtime}},
		{hdr: tar.Header{Typeflag: tar.TypeBlock, Name: "dev/loop9", Mode: 0o660, Devmajor: 7, Devminor: 9, Gid: 6, ModTime: mtime}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/initctl", Mode: 0o600, ModTime: mtime}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "home/user/.profile", Mode: 0o640, Uid: 1000, Gid: 1001, Size: 3, ModTime: mtime,
			PAXRecords: map[string]string{"SCHILY.xattr.user.metal": "yes"}}, data: []byte("ok\n")},
		dir("var/empty", 0o1777),
	}
	var n int64
	for _, e := range es {
		n += int64(len(e.data))
	}
	return es, n
}

// check asserts that the rootfs entries landed in target as they were.
func check(t *testing.T, target string, es []entry) {
	t.Helper()
	for _, e := range es {
		name := filepath.Join(target, e.hdr.Name)
		var st unix.Stat_t
		if err := unix.Lstat(name, &st); err != nil {
			t.Errorf("%s: %v", e.hdr.Name, err)
			continue
		}
		wantType := map[byte]uint32{tar.TypeReg: unix.S_IFREG, tar.TypeDir: unix.S_IFDIR, tar.TypeSymlink: unix.S_IFLNK, tar.TypeLink: unix.S_IFREG,
			tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[e.hdr.Typeflag]
		if st.Mode&unix.S_IFMT != wantType {
			t.Errorf("%s: type %o, want %o", e.hdr.Name, st.Mode&unix.S_IFMT, wantType)
		}
		if e.hdr.Typeflag != tar.TypeSymlink && e.hdr.Typeflag != tar.TypeLink && e.hdr.Name != "./" && st.Mode&0o7777 != uint32(e.hdr.Mode) {
			t.Errorf("%s: mode %o, want %o", e.hdr.Name, st.Mode&0o7777, e.hdr.Mode)
		}
		if int(st.Uid) != e.hdr.Uid || int(st.Gid) != e.hdr.Gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", e.hdr.Name, st.Uid, st.Gid, e.hdr.Uid, e.hdr.Gid)
		}
		if e.hdr.Name != "./" && e.hdr.Typeflag != tar.TypeLink && st.Mtim.Sec != mtime.Unix() {
			t.Errorf("%s: mtime %v, want %v", e.hdr.Name, time.Unix(st.Mtim.Sec, 0).UTC(), mtime)
		}
		switch e.hdr.Typeflag {
		case tar.TypeReg:
			if b, err := os.ReadFile(name); err != nil || !bytes.Equal(b, e.data) {
				t.Errorf("%s: content differs (%d bytes, %v)", e.hdr.Name, len(b), err)
			}
		case tar.TypeSymlink:
			if l, err := os.Readlink(name); err != nil || l != e.hdr.Linkname {
				t.Errorf("%s: links to %q, want %q", e.hdr.Name, l, e.hdr.Linkname)
			}
		case tar.TypeLink:
			var o unix.Stat_t
			if err := unix.Lstat(filepath.Join(target, e.hdr.Linkname), &o); err != nil || o.Ino != st.Ino || st.Nlink != 2 {
				t.Errorf("%s: not a hard link of %s (inode %d vs %d, %d links)", e.hdr.Name, e.hdr.Linkname, st.Ino, o.Ino, st.Nlink)
			}
		case tar.TypeChar, tar.TypeBlock:
			if unix.Major(st.Rdev) != uint32(e.hdr.Devmajor) || unix.Minor(st.Rdev) != uint32(e.hdr.Devminor) {
				t.Errorf("%s: device %d:%d", e.hdr.Name, unix.Major(st.Rdev), unix.Minor(st.Rdev))
			}
		}
	}
	buf := make([]byte, 16)
	if n, err := unix.Getxattr(filepath.Join(target, "home/user/.profile"), "user.metal", buf); err != nil || string(buf[:n]) != "yes" {
		t.Logf("xattr user.metal not kept (best effort): %q %v", buf[:n], err)
	}
}

func TestStream(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for owners and device nodes")
	}
	es, size := rootfs(t)
	for _, kind := range []string{"gzip", "zstd", "lz4", "none"} {
		t.Run(kind, func(t *testing.T) {
			body := compress(t, kind, makeTar(t, es, nil))
			url := serve(t, body, 0)
			target := t.TempDir()
			var mu sync.Mutex
			var last [2]int64
			calls := 0
			st, err := Stream(context.Background(), nil, url, sum(body), target, func(read, total int64) {
				mu.Lock()
				defer mu.Unlock()
				if read < last[0] {
					t.Errorf("progress went back from %d to %d", last[0], read)
				}
				last = [2]int64{read, total}
				calls++
			})
			if err != nil {
				t.Fatal(err)
			}
			check(t, target, es)
			if st.Compression != kind || st.Bytes != int64(len(body)) || st.Written != size || st.Files != 8 || st.Duration <= 0 {
				t.Errorf("stats %+v, want %s, %d bytes read, %d written, 8 files", st, kind, len(body), size)
			}
			mu.Lock()
			defer mu.Unlock()
			if calls == 0 || last != [2]int64{int64(len(body)), int64(len(body))} {
				t.Errorf("progress: %d calls, last %v, want the end (%d of %d)", calls, last, len(body), len(body))
			}
		})
	}
}

// The hash covers bytes after the tar end marker: a sum over the archive
// alone does not match, the sum over everything sent does.
func TestStreamHashCoversTrailer(t *testing.T) {
	es := []entry{file("a", 0o644, []byte("a"))}
	tarOnly := makeTar(t, es, nil)
	body := makeTar(t, es, []byte("trailing bytes after the end of the archive"))
	url := serve(t, body, 0)
	if _, err := Stream(context.Background(), nil, url, sum(tarOnly), t.TempDir(), nil); !errors.Is(err, ErrChecksum) {
		t.Errorf("sum over the archive only: err = %v, want ErrChecksum", err)
	}
	if _, err := Stream(context.Background(), nil, url, sum(body), t.TempDir(), nil); err != nil {
		t.Errorf("sum over all bytes: %v", err)
	}
}

func TestStreamErrors(t *testing.T) {
	es, _ := rootfs(t)
	raw := makeTar(t, es, nil)
	for _, kind := range []string{"gzip", "zstd", "lz4", "none"} {
		body := compress(t, kind, raw)
		t.Run(kind+"/wrong sha256", func(t *testing.T) {
			other := sha256.Sum256([]byte("another image"))
			_, err := Stream(context.Background(), nil, serve(t, body, 0), hex.EncodeToString(other[:]), t.TempDir(), nil)
			if !errors.Is(err, ErrChecksum) {
				t.Fatalf("err = %v, want ErrChecksum", err)
			}
		})
		t.Run(kind+"/truncated", func(t *testing.T) {
			_, err := Stream(context.Background(), nil, serve(t, body, len(body)*2/3), sum(body), t.TempDir(), nil)
			if err == nil {
				t.Fatal("a truncated image was accepted")
			}
		})
	}
	t.Run("bad sha256", func(t *testing.T) {
		if _, err := Stream(context.Background(), nil, serve(t, raw, 0), "abc", t.TempDir(), nil); err == nil || !strings.Contains(err.Error(), "64 hex") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("not found", func(t *testing.T) {
		_, err := Stream(context.Background(), nil, serve(t, raw, 0)+"-missing", sum(raw), t.TempDir(), nil)
		if err == nil || !strings.Contains(err.Error(), "404") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("not a tar", func(t *testing.T) {
		junk := bytes.Repeat([]byte("junk"), 1000)
		if _, err := Stream(context.Background(), nil, serve(t, junk, 0), sum(junk), t.TempDir(), nil); err == nil {
			t.Fatal("junk accepted")
		}
	})
	t.Run("corrupt gzip", func(t *testing.T) {
		gz := compress(t, "gzip", raw)
		gz[len(gz)/2] ^= 0xff
		if _, err := Stream(context.Background(), nil, serve(t, gz, 0), sum(gz), t.TempDir(), nil); err == nil {
			t.Fatal("corrupt gzip accepted")
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := Stream(ctx, nil, serve(t, raw, 0), sum(raw), t.TempDir(), nil); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
}

// TestStreamUnsafe feeds archives that try to write outside the target.
// Each must fail and leave the directory around the target as it was.
func TestStreamUnsafe(t *testing.T) {
	for _, tc := range []struct {
		name string
		es   []entry
	}{
		{"dot-dot", []entry{file("../evil", 0o644, []byte("x"))}},
		{"dot-dot inside", []entry{dir("a/", 0o755), file("a/../../evil", 0o644, []byte("x"))}},
		{"absolute", []entry{file("/evil", 0o644, []byte("x"))}},
		{"through an absolute symlink", []entry{link(tar.TypeSymlink, "escape", "/"), file("escape/evil", 0o644, []byte("x"))}},
		{"through a relative symlink", []entry{link(tar.TypeSymlink, "escape", ".."), file("escape/evil", 0o644, []byte("x"))}},
		{"dir through a symlink", []entry{link(tar.TypeSymlink, "escape", ".."), dir("escape/evil/", 0o755)}},
		{"hard link out", []entry{link(tar.TypeLink, "passwd", "../sentinel")}},
		{"hard link through a symlink", []entry{link(tar.TypeSymlink, "escape", ".."), link(tar.TypeLink, "stolen", "escape/sentinel")}},
		{"symlink then file through it deeper", []entry{dir("etc/", 0o755), link(tar.TypeSymlink, "etc/x", "../../"), file("etc/x/evil", 0o644, []byte("x"))}},
		{"file replacing the target", []entry{file(".", 0o644, []byte("x"))}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			outer := t.TempDir()
			if err := os.WriteFile(filepath.Join(outer, "sentinel"), []byte("secret"), 0o600); err != nil {
				t.Fatal(err)
			}
			target := filepath.Join(outer, "target")
			if err := os.Mkdir(target, 0o755); err != nil {
				t.Fatal(err)
			}
			body := makeTar(t, tc.es, nil)
			_, err := Stream(context.Background(), nil, serve(t, body, 0), sum(body), target, nil)
			if !errors.Is(err, ErrUnsafePath) {
				t.Errorf("err = %v, want ErrUnsafePath", err)
			}
			ents, _ := os.ReadDir(outer)
			if len(ents) != 2 {
				t.Errorf("outside the target: %v", ents)
			}
			if _, err := os.Stat("/evil"); err == nil {
				t.Fatal("/evil was written")
			}
		})
	}
}

// An entry may replace an earlier one: a file by a file, a symlink by a
// file, an empty directory by a symlink.
func TestStreamReplaces(t *testing.T) {
	es := []entry{
		file("a", 0o644, []byte("old")),
		file("a", 0o600, []byte("new")),
		link(tar.TypeSymlink, "b", "/etc/passwd"),
		file("b", 0o644, []byte("file now")),
		dir("c/", 0o755),
		link(tar.TypeSymlink, "c", "a"),
	}
	body := makeTar(t, es, nil)
	target := t.TempDir()
	if _, err := Stream(context.Background(), nil, serve(t, body, 0), sum(body), target, nil); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(target, "a")); string(b) != "new" {
		t.Errorf("a = %q", b)
	}
	if fi, err := os.Lstat(filepath.Join(target, "b")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("b: %v %v", fi, err)
	}
	if l, err := os.Readlink(filepath.Join(target, "c")); err != nil || l != "a" {
		t.Errorf("c: %q %v", l, err)
	}
	if b, _ := os.ReadFile("/etc/passwd"); bytes.Equal(b, []byte("file now")) {
		t.Fatal("wrote through a symlink")
	}
}

// FuzzUnpack feeds arbitrary bytes as the image (with their own correct
// hash, so extraction runs to the end): it must never panic and never
// write outside the target.
//
// Run it with a bounded minimization, as make fuzz does:
//
//	go test -run '^$' -fuzz FuzzUnpack -fuzzminimizetime 100x ./installer/internal/image/
//
// Go minimizes each input that finds new coverage for up to 60s, one
// extraction per candidate, and its byte pass is quadratic in the input:
// an archive of a few KiB always uses the whole minute, during which the
// worker counts no execs, and early on nearly every input is new.
func FuzzUnpack(f *testing.F) {
	es, _ := rootfs(f)
	small := []entry{es[1], es[2], es[3], es[5], es[6], es[7], es[8]}
	raw := makeTar(f, small, nil)
	for _, kind := range []string{"gzip", "zstd", "lz4", "none"} {
		f.Add(compress(f, kind, raw))
	}
	f.Add(makeTar(f, []entry{link(tar.TypeSymlink, "escape", ".."), file("escape/evil", 0o644, []byte("x"))}, nil))
	f.Add(makeTar(f, []entry{link(tar.TypeLink, "l", "../sentinel"), file("../x", 0o644, nil)}, nil))
	f.Add([]byte{})
	f.Add([]byte{0x28, 0xb5, 0x2f, 0xfd})
	f.Fuzz(func(t *testing.T, data []byte) {
		outer := t.TempDir()
		if err := os.WriteFile(filepath.Join(outer, "sentinel"), []byte("secret"), 0o600); err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(outer, "target")
		if err := os.Mkdir(target, 0o755); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		h := sha256.Sum256(data)
		src := &hashReader{r: bytes.NewReader(data), h: sha256.New(), total: int64(len(data))}
		// Small buffers: cheap runs, and many chunk boundaries.
		_, _ = unpack(ctx, cancel, src, h[:], target, pipeline{chunk: 4 << 10, chunks: 2, workers: 2, maxBytes: 8 << 20}, time.Now())
		ents, err := os.ReadDir(outer)
		if err != nil || len(ents) != 2 {
			t.Fatalf("outside the target: %v %v", ents, err)
		}
		if b, err := os.ReadFile(filepath.Join(outer, "sentinel")); err != nil || string(b) != "secret" {
			t.Fatalf("sentinel changed: %q %v", b, err)
		}
	})
}
