package image

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The image install benchmark (issue 4: "image install throughput ≥ 90 %
// of the disk's own write speed"):
//
//	go test -run '^$' -bench 'BenchmarkStream' -benchtime 3x ./installer/internal/image/
//
// MF_BENCH_DIR picks the filesystem (default: the temp dir), MF_BENCH_MB
// the uncompressed image size (default 256). For each compression every
// iteration first writes as many bytes of incompressible data to one
// file with fsync (dd conv=fsync: the disk's own write speed), then
// streams the rootfs-like image from a loopback HTTP server into an empty
// directory on the same filesystem, final syncfs included. MB/s is the
// image's uncompressed size over Stream's time; "disk-MB/s" is the
// plain write's; "x-disk" is their ratio over the same iterations.
// BenchmarkStreamLoop does the same on an ext4 on a loop device with
// direct I/O, so that the sync covers only the install.
// MF_BENCH_WORKERS sets the number of file-creating workers (0: none).

type benchImage struct {
	tar   []byte
	size  int64 // file data
	files int
	body  map[string][]byte
}

var benchImages struct {
	sync.Mutex
	m map[string]*benchImage
}

func benchMB() int {
	if n, err := strconv.Atoi(os.Getenv("MF_BENCH_MB")); err == nil && n > 0 {
		return n
	}
	return 256
}

// rootfsLike builds a tar of about mb MiB shaped like a Linux root:
// thousands of small text files (configs, scripts, docs), medium files,
// and a few large binaries, with text that compresses like text and
// binary data that compresses like machine code. Shape "large" has the
// same kind of data in 16 MiB files only: it shows the pipeline's own
// throughput without the filesystem's cost per file.
func rootfsLike(b *testing.B, mb int, shape string) *benchImage {
	benchImages.Lock()
	defer benchImages.Unlock()
	if img := benchImages.m[shape]; img != nil {
		return img
	}
	{
		r := rand.New(rand.NewPCG(4, 2))
		words := make([]string, 1024)
		for i := range words {
			w := make([]byte, 2+r.IntN(9))
			for j := range w {
				w[j] = byte('a' + r.IntN(26))
			}
			words[i] = string(w)
		}
		text := func(n int) []byte {
			var buf bytes.Buffer
			for buf.Len() < n {
				buf.WriteString(words[int(r.ExpFloat64()*80)%len(words)])
				if r.IntN(12) == 0 {
					buf.WriteByte('\n')
				} else {
					buf.WriteByte(' ')
				}
			}
			return buf.Bytes()[:n]
		}
		binary := func(n int) []byte {
			out := make([]byte, n)
			for off := 0; off < n; off += 4096 {
				blk := out[off:min(off+4096, n)]
				switch r.IntN(8) {
				case 0: // code and data: no redundancy
					for i := range blk {
						blk[i] = byte(r.Uint32())
					}
				case 1, 2: // padding and bss
				case 3, 4: // tables: a short pattern repeated with noise
					pat := make([]byte, 8+r.IntN(56))
					for i := range pat {
						pat[i] = byte(r.Uint32())
					}
					for i := range blk {
						blk[i] = pat[i%len(pat)]
						if r.IntN(16) == 0 {
							blk[i] = byte(r.Uint32())
						}
					}
				default: // strings and symbols
					copy(blk, text(len(blk)))
				}
			}
			return out
		}
		total := int64(mb) << 20
		var buf bytes.Buffer
		buf.Grow(int(total + total/8))
		tw := tar.NewWriter(&buf)
		img := &benchImage{}
		mtime := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
		dirs := 0
		newDir := func() string {
			dirs++
			name := fmt.Sprintf("usr/share/d%03d/s%02d/", dirs/20, dirs%20)
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: mtime})
			return name
		}
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "usr/", Mode: 0o755, ModTime: mtime})
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "usr/share/", Mode: 0o755, ModTime: mtime})
		dir := ""
		for img.size < total {
			if img.files%25 == 0 {
				if img.files%500 == 0 {
					tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("usr/share/d%03d/", (dirs+1)/20), Mode: 0o755, ModTime: mtime})
				}
				dir = newDir()
			}
			var data []byte
			switch p := r.IntN(1000); {
			case shape == "large":
				data = binary(16 << 20)
			case p < 897: // most files: small text (configs, scripts, docs)
				data = text(100 + r.IntN(8<<10))
			case p < 997: // medium
				if r.IntN(2) == 0 {
					data = text(16<<10 + r.IntN(128<<10))
				} else {
					data = binary(16<<10 + r.IntN(240<<10))
				}
			default: // large binaries
				data = binary(1<<20 + r.IntN(15<<20))
			}
			if rest := total - img.size; int64(len(data)) > rest {
				data = data[:rest]
			}
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("%sf%d", dir, img.files), Mode: 0o644, Size: int64(len(data)), ModTime: mtime})
			tw.Write(data)
			img.size += int64(len(data))
			img.files++
			if img.files%50 == 0 {
				tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: fmt.Sprintf("%sl%d", dir, img.files), Linkname: fmt.Sprintf("f%d", img.files-1), ModTime: mtime})
			}
		}
		tw.Close()
		img.tar = buf.Bytes()
		img.body = map[string][]byte{}
		for _, kind := range []string{"zstd", "gzip", "lz4", "none"} {
			img.body[kind] = compress(b, kind, img.tar)
		}
		if benchImages.m == nil {
			benchImages.m = map[string]*benchImage{}
		}
		benchImages.m[shape] = img
		return img
	}
}

// diskWrite writes n bytes of incompressible data to a new file in dir
// in 1 MiB writes and fsyncs it, like dd bs=1M conv=fsync.
func diskWrite(b *testing.B, dir string, n int64, data []byte) time.Duration {
	name := filepath.Join(dir, "dd.bin")
	start := time.Now()
	f, err := os.Create(name)
	if err != nil {
		b.Fatal(err)
	}
	for left := n; left > 0; {
		chunk := data[:min(int64(len(data)), left)]
		if _, err := f.Write(chunk); err != nil {
			b.Fatal(err)
		}
		left -= int64(len(chunk))
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	f.Close()
	d := time.Since(start)
	os.Remove(name)
	return d
}

// tarExtract is the filesystem's own pace for the tree: GNU tar unpacks
// the uncompressed archive from a local file, then everything is synced.
// It does no decompression, no hashing and no network.
func tarExtract(b *testing.B, dir string, tarball []byte) time.Duration {
	src := filepath.Join(dir, "img.tar")
	if err := os.WriteFile(src, tarball, 0o600); err != nil {
		b.Fatal(err)
	}
	defer os.Remove(src)
	target, err := os.MkdirTemp(dir, "tar-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(target)
	exec.Command("sync").Run()
	start := time.Now()
	if out, err := exec.Command("tar", "-xf", src, "-C", target).CombinedOutput(); err != nil {
		b.Fatalf("tar: %v: %s", err, out)
	}
	if out, err := exec.Command("sync", "-f", target).CombinedOutput(); err != nil {
		b.Fatalf("sync: %v: %s", err, out)
	}
	return time.Since(start)
}

func benchStream(b *testing.B, dir string) {
	for _, shape := range []string{"rootfs", "large"} {
		b.Run(shape, func(b *testing.B) { benchShape(b, dir, rootfsLike(b, benchMB(), shape)) })
	}
}

func benchShape(b *testing.B, dir string, img *benchImage) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body := img.body[strings.TrimPrefix(r.URL.Path, "/")]
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		w.Write(body)
	}))
	defer srv.Close()
	p := defaultPipeline()
	if n, err := strconv.Atoi(os.Getenv("MF_BENCH_WORKERS")); err == nil {
		p.workers = n // 0: every file in order, for comparison
	}
	random := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{1}).Read(random)
	for _, kind := range []string{"zstd", "gzip", "lz4", "none"} {
		b.Run(kind, func(b *testing.B) {
			body := img.body[kind]
			var diskTime, streamTime, tarTime time.Duration
			b.SetBytes(img.size)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				diskTime += diskWrite(b, dir, img.size, random)
				tarTime += tarExtract(b, dir, img.tar)
				target, err := os.MkdirTemp(dir, "target-")
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				st, err := stream(context.Background(), srv.Client(), srv.URL+"/"+kind, sum(body), target, nil, p)
				b.StopTimer()
				if err != nil {
					b.Fatal(err)
				}
				if st.Written != img.size {
					b.Fatalf("wrote %d bytes, want %d", st.Written, img.size)
				}
				streamTime += st.Duration
				os.RemoveAll(target)
				b.StartTimer()
			}
			b.StopTimer()
			mbs := func(d time.Duration) float64 { return float64(img.size) * float64(b.N) / d.Seconds() / 1e6 }
			b.ReportMetric(mbs(diskTime), "disk-MB/s")
			b.ReportMetric(mbs(streamTime), "stream-MB/s")
			b.ReportMetric(diskTime.Seconds()/streamTime.Seconds(), "x-disk")
			b.ReportMetric(mbs(tarTime), "tar-MB/s")
			b.ReportMetric(tarTime.Seconds()/streamTime.Seconds(), "x-tar")
			b.ReportMetric(float64(len(body))/float64(len(img.tar)), "compressed/tar")
			b.ReportMetric(float64(img.files), "files")
		})
	}
}

func BenchmarkStream(b *testing.B) {
	dir := os.Getenv("MF_BENCH_DIR")
	if dir == "" {
		dir = os.TempDir()
	}
	d, err := os.MkdirTemp(dir, "mf-bench-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(d)
	benchStream(b, d)
}

// BenchmarkStreamLoop runs the same on a fresh ext4 on a loop device with
// direct I/O onto an image file in MF_BENCH_DIR: the sync of the install
// flushes only the install, not the rest of the host's filesystem.
func BenchmarkStreamLoop(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root for a loop device")
	}
	for _, tool := range []string{"losetup", "mkfs.ext4"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("needs %s", tool)
		}
	}
	dir := os.Getenv("MF_BENCH_DIR")
	if dir == "" {
		dir = os.TempDir()
	}
	work, err := os.MkdirTemp(dir, "mf-bench-loop-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(work)
	img := filepath.Join(work, "disk.img")
	f, err := os.Create(img)
	if err != nil {
		b.Fatal(err)
	}
	f.Truncate(int64(benchMB())<<20*3 + 256<<20)
	f.Close()
	out, err := exec.Command("losetup", "--find", "--show", "--direct-io=on", img).CombinedOutput()
	if err != nil {
		b.Fatalf("losetup: %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	defer exec.Command("losetup", "--detach", dev).Run()
	if out, err := exec.Command("mkfs.ext4", "-F", "-q", "-E", "lazy_itable_init=0,lazy_journal_init=0", dev).CombinedOutput(); err != nil {
		b.Fatalf("mkfs: %v: %s", err, out)
	}
	mnt := filepath.Join(work, "mnt")
	os.Mkdir(mnt, 0o755)
	if out, err := exec.Command("mount", dev, mnt).CombinedOutput(); err != nil {
		b.Fatalf("mount: %v: %s", err, out)
	}
	defer exec.Command("umount", mnt).Run()
	benchStream(b, mnt)
}
