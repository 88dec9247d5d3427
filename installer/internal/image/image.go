// Package image streams an OS image onto the mounted filesystems: one
// HTTP GET of a tar archive (gzip, zstd, lz4 or plain), unpacked as it
// arrives while the raw bytes are hashed with sha256, so the image is
// never stored and is verified byte for byte.
package image

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"golang.org/x/sys/unix"
)

// ErrChecksum is wrapped when the image's sha256 does not match.
var ErrChecksum = errors.New("image checksum mismatch")

// Stats of one Stream.
type Stats struct {
	// Bytes is what was read from the wire (compressed).
	Bytes int64
	// Written is the file data written (uncompressed).
	Written int64
	// Files counts regular files, hard links and device nodes.
	Files int64
	// Duration includes the final sync of the target's filesystem.
	Duration    time.Duration
	Compression string
}

// zstdMaxWindow is zstd --long=27's window, the most image tools use; it
// bounds what a hostile stream can make the decoder allocate.
const zstdMaxWindow = 1 << 27

// pipeline sizes the stages: network → sha256 → decompressor → tar.
type pipeline struct {
	chunk, chunks int   // read-ahead buffers of each stage
	workers       int   // goroutines creating small files
	maxBytes      int64 // cap on the data written (twice that decompressed), 0: none
}

func defaultPipeline() pipeline { return pipeline{chunk: 1 << 20, chunks: 8, workers: 4} }

// Stream GETs url and unpacks the tar archive onto target while hashing
// the raw bytes with sha256; compression is told by magic bytes. The hash
// covers every byte of the body, also after the archive's end marker, and
// must equal sha256hex, or Stream returns an error wrapping ErrChecksum.
// The files are written by then: the caller wipes on a mismatch. Entries
// that would escape target are an error wrapping ErrUnsafePath. progress
// (may be nil) is called now and then, from one goroutine, with the
// compressed bytes read and the Content-Length (-1 when unknown).
func Stream(ctx context.Context, client *http.Client, url, sha256hex, target string, progress func(read, total int64)) (Stats, error) {
	return stream(ctx, client, url, sha256hex, target, progress, defaultPipeline())
}

func stream(ctx context.Context, client *http.Client, url, sha256hex, target string, progress func(read, total int64), p pipeline) (st Stats, err error) {
	start := time.Now()
	want, err := hex.DecodeString(sha256hex)
	if err != nil || len(want) != sha256.Size {
		return st, fmt.Errorf("image sha256 %q is not 64 hex digits", sha256hex)
	}
	if client == nil {
		client = &http.Client{}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return st, fmt.Errorf("image url: %w", err)
	}
	// Compressed images must arrive as they are: the hash is over them.
	req.Header.Set("Accept-Encoding", "identity")
	resp, err := client.Do(req)
	if err != nil {
		return st, fmt.Errorf("GET image: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return st, fmt.Errorf("GET image %s: %s: %s", url, resp.Status, strings.TrimSpace(string(b)))
	}

	hr := &hashReader{r: resp.Body, h: sha256.New(), total: resp.ContentLength, progress: progress}
	defer func() { st.Bytes = hr.n }()
	return unpack(ctx, cancel, hr, want, target, p, start)
}

// unpack runs the pipeline over src (which hashes what it reads).
func unpack(ctx context.Context, cancel context.CancelFunc, src *hashReader, want []byte, target string, p pipeline, start time.Time) (st Stats, err error) {
	raw := newReadAhead(src, p.chunk, p.chunks)
	defer func() {
		cancel() // ends a read still waiting on the network
		raw.Close()
	}()
	br := bufio.NewReaderSize(raw, 64<<10)
	magic, _ := br.Peek(4)
	var dec io.Reader
	var closeDec func()
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		st.Compression = "gzip"
		zr, err := gzip.NewReader(br)
		if err != nil {
			return st, fmt.Errorf("gzip: %w", err)
		}
		dec = zr
	case len(magic) == 4 && string(magic) == "\x28\xb5\x2f\xfd":
		st.Compression = "zstd"
		zr, err := zstd.NewReader(br, zstd.WithDecoderMaxWindow(zstdMaxWindow), zstd.WithDecoderConcurrency(0))
		if err != nil {
			return st, fmt.Errorf("zstd: %w", err)
		}
		dec, closeDec = zr, zr.Close
	case len(magic) == 4 && string(magic) == "\x04\x22\x4d\x18":
		st.Compression = "lz4"
		zr := lz4.NewReader(br)
		if err := zr.Apply(lz4.ConcurrencyOption(-1)); err != nil {
			return st, fmt.Errorf("lz4: %w", err)
		}
		dec = zr
	default:
		st.Compression = "none"
		dec = br
	}
	if p.maxBytes > 0 {
		// Tar skips the data of entries it does not return by reading it,
		// so a bomb is bounded by the decompressed stream, not by files.
		dec = &capReader{r: dec, left: 2 * p.maxBytes}
	}
	// gzip decodes in the caller's goroutine; a read-ahead gives it one of
	// its own so that it overlaps with writing files. zstd and lz4 decode
	// in workers of their own already, and plain tar needs no second copy.
	plain := dec
	var plainRA *readAhead
	if st.Compression == "gzip" {
		plainRA = newReadAhead(dec, p.chunk, p.chunks)
		plain = plainRA
	}
	defer func() {
		// Bottom-up teardown: with raw closed, the decoder's reads fail,
		// which ends the read-ahead's goroutine; only then is the decoder
		// idle and can be closed.
		cancel()
		raw.Close()
		if plainRA != nil {
			plainRA.Close()
		}
		if closeDec != nil {
			closeDec()
		}
	}()

	x, err := newExtractor(target, p.chunk, p.workers)
	if err != nil {
		return st, err
	}
	x.maxBytes = p.maxBytes
	defer x.close()
	tr := tar.NewReader(plain)
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, fmt.Errorf("image archive: %w", err)
		}
		if err := x.entry(hdr, tr); err != nil {
			if werr := x.wait(); werr != nil {
				return st, werr // the worker's error came first
			}
			return st, fmt.Errorf("image entry %q: %w", hdr.Name, err)
		}
	}
	err = x.wait()
	st.Written, st.Files = x.written.Load(), x.files.Load()
	if err != nil {
		return st, err
	}
	if err := x.finish(); err != nil {
		return st, err
	}
	// The rest of the stream: tar's zero blocks and padding, the
	// compressor's trailer (whose own checksum the decoder verifies), and
	// whatever follows it on the wire; the hash must cover all of it.
	if _, err := io.Copy(io.Discard, plain); err != nil {
		return st, fmt.Errorf("image archive trailer: %w", err)
	}
	if _, err := io.Copy(io.Discard, br); err != nil {
		return st, fmt.Errorf("image: %w", err)
	}
	if got := src.h.Sum(nil); string(got) != string(want) {
		return st, fmt.Errorf("%w: got sha256 %x, want %x", ErrChecksum, got, want)
	}
	if err := syncfs(target); err != nil {
		return st, err
	}
	st.Duration = time.Since(start)
	return st, nil
}

// syncfs flushes the target's filesystem once, instead of an fsync per
// file: the image is worth nothing until all of it is there anyway.
func syncfs(target string) error {
	fd, err := unix.Open(target, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Syncfs(fd); err != nil {
		return fmt.Errorf("sync %s: %w", target, err)
	}
	return nil
}

// hashReader hashes and counts what passes and reports progress at most
// every 256 KiB and 200 ms.
type hashReader struct {
	r        io.Reader
	h        hash.Hash
	n, total int64
	progress func(read, total int64)
	lastN    int64
	lastT    time.Time
}

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	if n > 0 {
		h.h.Write(p[:n])
		h.n += int64(n)
	}
	if h.progress != nil && (err != nil || h.n-h.lastN >= 256<<10 && time.Since(h.lastT) >= 200*time.Millisecond) {
		h.progress(h.n, h.total)
		h.lastN, h.lastT = h.n, time.Now()
	}
	return n, err
}

// capReader fails once more than left bytes came through.
type capReader struct {
	r    io.Reader
	left int64
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.left <= 0 {
		return 0, errors.New("image expands beyond the limit")
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}
