package web

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/agents/pixie/internal/boot"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/cache"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/metric"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

type fakeCentral struct {
	mu   sync.Mutex
	resp map[string]*agentv1.BootResponse
	err  error
	reqs []*agentv1.BootRequest
}

func (f *fakeCentral) Boot(_ context.Context, req *agentv1.BootRequest) (*agentv1.BootResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, req)
	if f.err != nil {
		return nil, f.err
	}
	if r, ok := f.resp[req.GetMac()]; ok {
		return r, nil
	}
	return nil, status.Error(codes.PermissionDenied, "not your partition")
}

func (f *fakeCentral) req(i int) *agentv1.BootRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reqs[i]
}

func (f *fakeCentral) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.reqs)
}

type env struct {
	srv     *httptest.Server
	central *fakeCentral
	events  chan *agentv1.Event
	up      *httptest.Server
	upHits  map[string]int
	upMu    sync.Mutex
	doc     atomic.Pointer[agentv1.PixieDocument]
}

func (e *env) hits(path string) int {
	e.upMu.Lock()
	defer e.upMu.Unlock()
	return e.upHits[path]
}

func newEnv(t *testing.T, kernel string) *env {
	t.Helper()
	e := &env{events: make(chan *agentv1.Event, 16), upHits: map[string]int{}}
	e.up = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.upMu.Lock()
		e.upHits[r.URL.Path]++
		e.upMu.Unlock()
		switch r.URL.Path {
		case "/vmlinuz":
			_, _ = w.Write([]byte("KERNEL"))
		case "/initramfs":
			_, _ = w.Write([]byte("INITRAMFS"))
		case "/image.tgz":
			_, _ = w.Write([]byte("IMAGE"))
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(e.up.Close)
	doc := &agentv1.PixieDocument{PartitionId: "p1", KernelUrl: e.up.URL + "/vmlinuz", InitramfsUrl: e.up.URL + "/initramfs", Cmdline: "console=ttyS0 metal.partition=p1"}
	e.doc.Store(doc)
	e.central = &fakeCentral{resp: map[string]*agentv1.BootResponse{
		"52:54:00:00:00:01": {Action: agentv1.BootAction_BOOT_ACTION_INSTALLER, MachineId: "m1", KernelUrl: doc.KernelUrl, InitramfsUrl: doc.InitramfsUrl,
			Cmdline: "console=ttyS0 metal.partition=p1", BootToken: "mfb_tok", BootTokenExpiresAt: timestamppb.New(time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC))},
		"52:54:00:00:00:02": {Action: agentv1.BootAction_BOOT_ACTION_DISK, MachineId: "m2"},
		"52:54:00:00:00:03": {Action: agentv1.BootAction_BOOT_ACTION_INSTALLER, KernelUrl: "http://elsewhere/k", InitramfsUrl: "http://elsewhere/i", Cmdline: "x"},
	}}
	dir := t.TempDir()
	dec, err := boot.NewDecider(boot.DeciderConfig{Central: e.central, Dir: filepath.Join(dir, "decisions"), Document: e.doc.Load})
	if err != nil {
		t.Fatal(err)
	}
	c, err := cache.New(cache.Config{Dir: filepath.Join(dir, "cache")})
	if err != nil {
		t.Fatal(err)
	}
	ipxeDir := filepath.Join(dir, "ipxe")
	_ = os.MkdirAll(ipxeDir, 0o755)
	_ = os.WriteFile(filepath.Join(ipxeDir, "undionly.kpxe"), []byte("UNDI"), 0o644)
	_ = os.WriteFile(filepath.Join(dir, "secret"), []byte("SECRET"), 0o644)
	ca := filepath.Join(dir, "ca.crt")
	_ = os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\n"), 0o644)
	reg := prometheus.NewRegistry()
	s, err := New(Config{
		Decider: dec, Cache: c, IPXEDir: ipxeDir, CAFile: ca, Kernel: kernel,
		Document: e.doc.Load,
		Address: func(mac string, v6 bool) string {
			if mac == "52:54:00:00:00:01" && !v6 {
				return "192.0.2.10"
			}
			return ""
		},
		Emit: func(ev *agentv1.Event) { e.events <- ev }, ImagePrefixes: []string{e.up.URL + "/"},
		Gatherer: reg, Metrics: metric.New(reg),
	})
	if err != nil {
		t.Fatal(err)
	}
	e.srv = httptest.NewServer(s)
	t.Cleanup(e.srv.Close)
	return e
}

func (e *env) get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(e.srv.URL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestBootScripts(t *testing.T) {
	e := newEnv(t, "")
	base := e.srv.URL
	code, body := e.get(t, "/ipxe/boot.ipxe?mac=52-54-00-00-00-01&arch=efi")
	want := "kernel " + base + "/boot/vmlinuz console=ttyS0 metal.partition=p1 metal.pixie=" + base + " metal.boot_token=mfb_tok initrd=initramfs || goto retry\n" +
		"initrd " + base + "/boot/initramfs || goto retry\n"
	if code != 200 || !strings.HasPrefix(body, "#!ipxe\n") || !strings.Contains(body, want) {
		t.Fatalf("installer script (%d):\n%s\nwant it to contain:\n%s", code, body, want)
	}
	select {
	case ev := <-e.events:
		if ev.GetType() != "PXE Booting" || ev.GetSubject() != "52:54:00:00:00:01" || ev.GetMessage() != "arch=efi address=192.0.2.10 action=installer source=central" {
			t.Fatalf("event %v", ev)
		}
	default:
		t.Fatal("no PXE Booting event")
	}
	if r := e.central.req(0); r.GetMac() != "52:54:00:00:00:01" || r.GetArch() != "efi" || r.GetAddress() != "192.0.2.10" {
		t.Fatalf("boot request %v", r)
	}

	if code, body = e.get(t, "/ipxe/boot.ipxe?mac=52:54:00:00:00:02&arch=bios"); code != 200 || !strings.HasSuffix(body, "\nexit 1\n") {
		t.Fatalf("disk script (%d):\n%s", code, body)
	}
	// BIOS: no initrd= on the kernel line; the address falls back to the peer's.
	if code, body = e.get(t, "/ipxe/boot.ipxe?mac=52:54:00:00:00:03&arch=bios"); code != 200 ||
		!strings.Contains(body, "kernel http://elsewhere/k x metal.pixie="+base+" || goto retry\n") || !strings.Contains(body, "initrd --name initramfs http://elsewhere/i") {
		t.Fatalf("script with central's own artifacts (%d):\n%s", code, body)
	}
	if r := e.central.req(2); r.GetAddress() != "127.0.0.1" {
		t.Fatalf("address of an unleased MAC %q, want the peer's", r.GetAddress())
	}
	// Central refuses: the machine waits and asks again instead of booting on.
	if code, body = e.get(t, "/ipxe/boot.ipxe?mac=52:54:00:00:00:09&arch=bios"); code != 200 || !strings.Contains(body, "sleep 10\nchain --autofree --replace "+base+"/ipxe/boot.ipxe?arch=bios&mac=52%3A54%3A00%3A00%3A00%3A09\n") {
		t.Fatalf("retry script (%d):\n%s", code, body)
	}
	if code, body = e.get(t, "/ipxe/boot.ipxe"); code != 200 || !strings.Contains(body, "mac=${netX/mac}&arch=${platform}") {
		t.Fatalf("chain script (%d):\n%s", code, body)
	}
	for _, bad := range []string{"mac=nonsense&arch=efi", "mac=52:54:00:00:00:01&arch=sparc", "mac=52:54:00:00:00:01&mac=52:54:00:00:00:02", "mac=52:54:00:00:00:01:02:03"} {
		if code, body := e.get(t, "/ipxe/boot.ipxe?"+bad); code != 400 {
			t.Errorf("%s: %d %s, want 400", bad, code, body)
		}
	}
	if n := e.central.count(); n != 4 {
		t.Fatalf("central asked %d times; bad requests must not reach it", n)
	}
}

func TestArtifactsAndFiles(t *testing.T) {
	e := newEnv(t, "")
	for path, want := range map[string]string{"/boot/vmlinuz": "KERNEL", "/boot/initramfs": "INITRAMFS", "/ipxe/undionly.kpxe": "UNDI", "/ca.pem": "-----BEGIN CERTIFICATE-----\n"} {
		for range 2 {
			if code, body := e.get(t, path); code != 200 || body != want {
				t.Fatalf("%s: %d %q", path, code, body)
			}
		}
	}
	if e.hits("/vmlinuz") != 1 || e.hits("/initramfs") != 1 {
		t.Fatalf("upstream hits %d, %d: artifacts must be fetched once", e.hits("/vmlinuz"), e.hits("/initramfs"))
	}
	for _, path := range []string{"/ipxe/..%2fsecret", "/ipxe/.hidden", "/ipxe/%2e%2e%2fsecret"} {
		if code, body := e.get(t, path); code != 400 {
			t.Errorf("%s: %d %q, want 400", path, code, body)
		}
	}
	if code, _ := e.get(t, "/ipxe/missing.efi"); code != 404 {
		t.Errorf("missing iPXE file: %d", code)
	}
	e.doc.Store(nil)
	if code, _ := e.get(t, "/boot/initramfs"); code != 503 {
		t.Errorf("no document: %d, want 503", code)
	}

	local := filepath.Join(t.TempDir(), "vmlinuz")
	_ = os.WriteFile(local, []byte("LOCAL KERNEL"), 0o644)
	e2 := newEnv(t, local)
	if code, body := e2.get(t, "/boot/vmlinuz"); code != 200 || body != "LOCAL KERNEL" {
		t.Fatalf("local kernel: %d %q", code, body)
	}
	// A local kernel wins over central's URL in the script.
	if _, body := e2.get(t, "/ipxe/boot.ipxe?mac=52:54:00:00:00:03&arch=bios"); !strings.Contains(body, "kernel "+e2.srv.URL+"/boot/vmlinuz x") {
		t.Fatalf("script with a local kernel:\n%s", body)
	}
}

func TestBootTokenEndpoint(t *testing.T) {
	e := newEnv(t, "")
	code, body := e.get(t, "/v1/boot-token?mac=52:54:00:00:00:01")
	var got struct {
		BootToken string `json:"boot_token"`
		ExpiresAt string `json:"expires_at"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &got) != nil || got.BootToken != "mfb_tok" || got.ExpiresAt != "2030-01-01T00:00:00Z" {
		t.Fatalf("boot token: %d %s", code, body)
	}
	for q, want := range map[string]int{"": 400, "mac=bad": 400, "mac=52:54:00:00:00:02": 409, "mac=52:54:00:00:00:09": 502} {
		if code, body := e.get(t, "/v1/boot-token?"+q); code != want {
			t.Errorf("%q: %d %s, want %d", q, code, body, want)
		}
	}
	e.central.mu.Lock()
	e.central.err = status.Error(codes.Unavailable, "down")
	e.central.mu.Unlock()
	if code, _ := e.get(t, "/v1/boot-token?mac=52:54:00:00:00:01"); code != 503 {
		t.Errorf("offline: %d, want 503", code)
	}
}

func TestImageEndpoint(t *testing.T) {
	e := newEnv(t, "")
	h := sha256.Sum256([]byte("IMAGE"))
	sha := hex.EncodeToString(h[:])
	img := e.up.URL + "/image.tgz"
	for path, want := range map[string]int{
		"/images/xyz?url=" + img:                                       400,
		"/images/" + sha + "?url=ftp://x/y":                            400,
		"/images/" + sha + "?url=http://not-allowed.example/image.tgz": 403,
		"/images/" + sha:                                               404,
		"/images/" + strings.Repeat("0", 64) + "?url=" + img:           502,
	} {
		if code, body := e.get(t, path); code != want {
			t.Errorf("%s: %d %s, want %d", path, code, body, want)
		}
	}
	if code, body := e.get(t, "/images/"+strings.ToUpper(sha)+"?url="+img); code != 200 || body != "IMAGE" {
		t.Fatalf("image: %d %q", code, body)
	}
	// Cached now: served without a URL and without upstream.
	if code, body := e.get(t, "/images/"+sha); code != 200 || body != "IMAGE" {
		t.Fatalf("cached image: %d %q", code, body)
	}
	if n := e.hits("/image.tgz"); n != 2 {
		t.Fatalf("upstream hits %d, want 2 (one mismatch, one good)", n)
	}
}

func TestMetricsAndHealth(t *testing.T) {
	e := newEnv(t, "")
	e.get(t, "/ipxe/boot.ipxe?mac=52:54:00:00:00:02&arch=bios")
	e.get(t, "/ipxe/boot.ipxe?mac=bad")
	_, m := e.get(t, "/metrics")
	for _, want := range []string{
		`metalfleet_pixie_requests_total{kind="script",result="200"} 1`,
		`metalfleet_pixie_requests_total{kind="script",result="400"} 1`,
		`metalfleet_pixie_boot_decisions_total{action="disk",source="central"} 1`,
		`metalfleet_pixie_pxe_booting_events_total 1`,
	} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	if code, body := e.get(t, "/healthz"); code != 200 || !strings.Contains(body, `"ok"`) {
		t.Fatalf("healthz %d %s", code, body)
	}
}

// TestBootTokenRateLimit: a loop asking for one MAC's token gets 429 with
// Retry-After once its burst is used, and the refusals are counted; the
// script (which carries a token too) shares the budget.
func TestBootTokenRateLimit(t *testing.T) {
	e := newEnv(t, "")
	for i := range DefaultTokenBurst - 1 {
		if code, body := e.get(t, "/v1/boot-token?mac=52:54:00:00:00:01"); code != 200 {
			t.Fatalf("request %d: %d %s", i, code, body)
		}
	}
	if code, _ := e.get(t, "/ipxe/boot.ipxe?mac=52:54:00:00:00:01&arch=efi"); code != 200 {
		t.Fatalf("script within the burst: %d", code)
	}
	resp, err := http.Get(e.srv.URL + "/v1/boot-token?mac=52:54:00:00:00:01")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("beyond the burst: %d, Retry-After %q", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if code, _ := e.get(t, "/ipxe/boot.ipxe?mac=52:54:00:00:00:01&arch=efi"); code != http.StatusTooManyRequests {
		t.Fatalf("script beyond the burst: %d", code)
	}
	asked := e.central.count()
	if code, _ := e.get(t, "/v1/boot-token?mac=52:54:00:00:00:03"); code == http.StatusTooManyRequests {
		t.Fatalf("another MAC: %d", code)
	}
	if e.central.count() != asked+1 {
		t.Fatal("refused requests must not reach central")
	}
	if _, m := e.get(t, "/metrics"); !strings.Contains(m, `metalfleet_pixie_requests_total{kind="boot_token",result="429"} 1`) {
		t.Fatal("429 not counted")
	}
}
