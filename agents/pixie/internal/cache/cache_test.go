package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// upstream serves fixed bodies and counts requests per path; release, when
// set, holds every answer until it is closed.
type upstream struct {
	bodies  map[string][]byte
	hits    sync.Map
	release chan struct{}
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n, _ := u.hits.LoadOrStore(r.URL.Path, new(atomic.Int64))
	n.(*atomic.Int64).Add(1)
	if u.release != nil {
		<-u.release
	}
	b, ok := u.bodies[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	_, _ = w.Write(b)
}

func (u *upstream) count(path string) int64 {
	n, ok := u.hits.Load(path)
	if !ok {
		return 0
	}
	return n.(*atomic.Int64).Load()
}

func sum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func TestImageConcurrentFetchOnce(t *testing.T) {
	img := []byte("an image tarball")
	u := &upstream{bodies: map[string][]byte{"/img.tar": img}, release: make(chan struct{})}
	srv := httptest.NewServer(u)
	defer srv.Close()
	c, err := New(Config{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	paths := make([]string, 8)
	errs := make([]error, 8)
	for i := range 8 {
		wg.Go(func() { paths[i], errs[i] = c.Image(t.Context(), sum(img), srv.URL+"/img.tar") })
	}
	// Every requester is waiting before upstream answers once.
	deadline := time.Now().Add(5 * time.Second)
	for u.count("/img.tar") < 1 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	close(u.release)
	wg.Wait()
	for i := range 8 {
		if errs[i] != nil {
			t.Fatalf("requester %d: %v", i, errs[i])
		}
		if b, _ := os.ReadFile(paths[i]); string(b) != string(img) {
			t.Fatalf("requester %d read %q", i, b)
		}
	}
	if n := u.count("/img.tar"); n != 1 {
		t.Fatalf("upstream fetched %d times, want 1", n)
	}
	// Cached: served without upstream, even with another URL.
	if _, err := c.Image(t.Context(), sum(img), "http://192.0.2.1/unreachable"); err != nil {
		t.Fatal(err)
	}
	if n := u.count("/img.tar"); n != 1 {
		t.Fatalf("cached image fetched again (%d)", n)
	}
}

func TestImageMismatchNotCached(t *testing.T) {
	u := &upstream{bodies: map[string][]byte{"/bad.tar": []byte("tampered")}}
	srv := httptest.NewServer(u)
	defer srv.Close()
	dir := t.TempDir()
	c, _ := New(Config{Dir: dir})
	want := sum([]byte("the real image"))
	for i := 1; i <= 2; i++ {
		if _, err := c.Image(t.Context(), want, srv.URL+"/bad.tar"); !errors.Is(err, ErrMismatch) {
			t.Fatalf("attempt %d: %v, want mismatch", i, err)
		}
		if n := u.count("/bad.tar"); n != int64(i) {
			t.Fatalf("attempt %d: upstream asked %d times: a mismatch must not be cached", i, n)
		}
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "images"))
	if len(ents) != 0 {
		t.Fatalf("cache holds %v after mismatches", ents)
	}
}

func TestImageBadInput(t *testing.T) {
	u := &upstream{bodies: map[string][]byte{"/big": make([]byte, 2048)}}
	srv := httptest.NewServer(u)
	defer srv.Close()
	c, _ := New(Config{Dir: t.TempDir(), MaxBytes: 1024})
	for name, tc := range map[string]struct{ sha, url string }{
		"short sha":    {"abc", srv.URL + "/big"},
		"upper sha":    {"ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789", srv.URL + "/big"},
		"file url":     {sum(nil), "file:///etc/passwd"},
		"no url":       {sum(nil), ""},
		"relative":     {sum(nil), "/big"},
		"upstream 404": {sum(nil), srv.URL + "/missing"},
		"too large":    {sum(make([]byte, 2048)), srv.URL + "/big"},
	} {
		if _, err := c.Image(t.Context(), tc.sha, tc.url); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestArtifactAndPrune(t *testing.T) {
	u := &upstream{bodies: map[string][]byte{"/k1": []byte("kernel 1"), "/k2": []byte("kernel 2")}}
	srv := httptest.NewServer(u)
	defer srv.Close()
	dir := t.TempDir()
	c, _ := New(Config{Dir: dir})
	p1, err := c.Artifact(t.Context(), srv.URL+"/k1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Artifact(t.Context(), srv.URL+"/k1"); err != nil || u.count("/k1") != 1 {
		t.Fatalf("second fetch: %v, upstream %d", err, u.count("/k1"))
	}
	p2, err := c.Artifact(t.Context(), srv.URL+"/k2")
	if err != nil {
		t.Fatal(err)
	}
	c.Prune(srv.URL + "/k2")
	if _, err := os.Stat(p1); !os.IsNotExist(err) {
		t.Fatalf("old artifact kept: %v", err)
	}
	if b, _ := os.ReadFile(p2); string(b) != "kernel 2" {
		t.Fatalf("current artifact %q", b)
	}
	// Leftovers of a crash are cleaned on start.
	if err := os.WriteFile(filepath.Join(dir, "images", ".tmp-123"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{Dir: dir}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "images", ".tmp-123")); !os.IsNotExist(err) {
		t.Fatal("temporary download not cleaned up")
	}
}
