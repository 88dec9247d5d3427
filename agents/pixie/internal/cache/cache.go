// Package cache keeps boot artifacts and images on pixie's local disk:
// fetched once from their URL, served from disk afterwards, so that a
// partition boots and installs machines while central or the image
// server is unreachable. Concurrent requests for one file share one
// download; an image whose bytes do not match its sha256 is never stored.
package cache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/agents/pixie/internal/metric"
)

// ErrMismatch: the downloaded bytes do not have the sha256 they should.
var ErrMismatch = errors.New("sha256 mismatch")

// ErrTooLarge: the download exceeded the cache's size limit.
var ErrTooLarge = errors.New("download too large")

// Config of a Cache.
type Config struct {
	Dir string
	// Client fetches upstream (default: a client with a 10s connect and
	// header timeout and no overall timeout, as images are large).
	Client *http.Client
	// MaxBytes bounds one file (default 16 GiB).
	MaxBytes int64
	// Timeout bounds one download (default 1h).
	Timeout time.Duration
	Log     *slog.Logger
	Metrics *metric.Metrics
}

// Cache is a directory of downloaded files.
type Cache struct {
	cfg Config

	mu       sync.Mutex
	inflight map[string]*call
}

type call struct {
	done chan struct{}
	err  error
}

// New prepares dir, removing downloads a crash left half done.
func New(cfg Config) (*Cache, error) {
	if cfg.Dir == "" {
		return nil, errors.New("cache: directory required")
	}
	if cfg.MaxBytes <= 0 {
		cfg.MaxBytes = 16 << 30
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Hour
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Client == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.ResponseHeaderTimeout = 30 * time.Second
		cfg.Client = &http.Client{Transport: tr}
	}
	for _, sub := range []string{"boot", "images"} {
		d := filepath.Join(cfg.Dir, sub)
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("cache: %w", err)
		}
		tmps, _ := filepath.Glob(filepath.Join(d, ".tmp-*"))
		for _, t := range tmps {
			os.Remove(t)
		}
	}
	return &Cache{cfg: cfg, inflight: map[string]*call{}}, nil
}

// ValidSHA256 reports whether s is a lower-case hex sha256.
func ValidSHA256(s string) bool {
	if len(s) != 64 {
		return false
	}
	for _, c := range s {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// CheckURL accepts absolute http and https URLs only: pixie fetches what
// a machine on the PXE network names, so nothing like file:// may pass.
func CheckURL(raw string) (*url.URL, error) {
	if len(raw) > 4096 {
		return nil, errors.New("url longer than 4096 bytes")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("url: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("url %q: want an absolute http or https URL", raw)
	}
	return u, nil
}

// Image returns the path of the image with the given sha256, fetching it
// from rawURL once. The bytes are verified while they are written; a
// mismatch leaves nothing in the cache and returns ErrMismatch.
func (c *Cache) Image(ctx context.Context, sha, rawURL string) (path string, err error) {
	if !ValidSHA256(sha) {
		return "", fmt.Errorf("sha256 %q: want 64 lower-case hex digits", sha)
	}
	return c.get(ctx, "image", filepath.Join("images", sha), rawURL, sha)
}

// Artifact returns the path of a boot artifact (kernel, initramfs) from
// rawURL, fetching it once. Artifacts carry no checksum in the contract,
// so they are keyed by their URL: a changed URL is a new artifact.
func (c *Cache) Artifact(ctx context.Context, rawURL string) (string, error) {
	return c.get(ctx, "boot", ArtifactName(rawURL), rawURL, "")
}

// ArtifactName is where an artifact of rawURL lives in the cache.
func ArtifactName(rawURL string) string {
	h := sha256.Sum256([]byte(rawURL))
	return filepath.Join("boot", hex.EncodeToString(h[:]))
}

// Prune removes cached artifacts other than those of keep (URLs): old
// installers pile up otherwise, one per document change.
func (c *Cache) Prune(keep ...string) {
	want := map[string]bool{}
	for _, u := range keep {
		want[filepath.Base(ArtifactName(u))] = true
	}
	ents, err := os.ReadDir(filepath.Join(c.cfg.Dir, "boot"))
	if err != nil {
		return
	}
	for _, e := range ents {
		if e.Type().IsRegular() && !strings.HasPrefix(e.Name(), ".") && !want[e.Name()] {
			c.cfg.Log.Info("pruning old boot artifact", "file", e.Name())
			os.Remove(filepath.Join(c.cfg.Dir, "boot", e.Name()))
		}
	}
}

func (c *Cache) get(ctx context.Context, kind, name, rawURL, sha string) (string, error) {
	path := filepath.Join(c.cfg.Dir, name)
	if _, err := os.Stat(path); err == nil {
		c.cfg.Metrics.Cache(kind, "hit")
		return path, nil
	}
	if _, err := CheckURL(rawURL); err != nil {
		return "", err
	}
	c.mu.Lock()
	cl, running := c.inflight[name]
	if !running {
		// A file may have landed between the Stat and the lock.
		if _, err := os.Stat(path); err == nil {
			c.mu.Unlock()
			c.cfg.Metrics.Cache(kind, "hit")
			return path, nil
		}
		cl = &call{done: make(chan struct{})}
		c.inflight[name] = cl
		c.cfg.Metrics.Cache(kind, "miss")
		// The download belongs to no single requester: one that gives up
		// must not fail the others waiting for the same file.
		go func() {
			cl.err = c.download(kind, path, rawURL, sha)
			c.mu.Lock()
			delete(c.inflight, name)
			c.mu.Unlock()
			close(cl.done)
		}()
	}
	c.mu.Unlock()
	select {
	case <-ctx.Done():
		return "", ctx.Err()
	case <-cl.done:
	}
	if cl.err != nil {
		return "", cl.err
	}
	return path, nil
}

func (c *Cache) download(kind, path, rawURL, sha string) (err error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.Timeout)
	defer cancel()
	defer func() {
		switch {
		case errors.Is(err, ErrMismatch):
			c.cfg.Metrics.Cache(kind, "mismatch")
		case err != nil:
			c.cfg.Metrics.Cache(kind, "error")
		}
	}()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", rawURL, err)
	}
	resp, err := c.cfg.Client.Do(req)
	if err != nil {
		return fmt.Errorf("fetch %s: %w", rawURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("fetch %s: %s", rawURL, resp.Status)
	}
	if resp.ContentLength > c.cfg.MaxBytes {
		return fmt.Errorf("fetch %s: %d bytes: %w (limit %d)", rawURL, resp.ContentLength, ErrTooLarge, c.cfg.MaxBytes)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return fmt.Errorf("cache %s: %w", rawURL, err)
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(resp.Body, c.cfg.MaxBytes+1))
	if err == nil && n > c.cfg.MaxBytes {
		err = fmt.Errorf("%w (limit %d)", ErrTooLarge, c.cfg.MaxBytes)
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("fetch %s: %w", rawURL, err)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if sha != "" && got != sha {
		return fmt.Errorf("fetch %s: got %s, want %s: %w", rawURL, got, sha, ErrMismatch)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("cache %s: %w", rawURL, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("cache %s: %w", rawURL, err)
	}
	c.cfg.Log.Info("cached", "kind", kind, "url", rawURL, "bytes", n, "sha256", got, "took", time.Since(start).Round(time.Millisecond))
	return nil
}
