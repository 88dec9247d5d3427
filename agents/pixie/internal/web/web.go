// Package web is metal-pixie's HTTP server: iPXE scripts and binaries,
// the installer's kernel and initramfs, central's CA, fresh boot tokens,
// the image cache, metrics and health. Everything it is asked comes from
// machines on the PXE network and is checked before use.
package web

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/agents/pixie/internal/boot"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/cache"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/metric"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Config of the HTTP server.
type Config struct {
	Decider *boot.Decider
	Cache   *cache.Cache
	// IPXEDir holds the iPXE binaries served under /ipxe/.
	IPXEDir string
	// CAFile is central's CA certificate (PEM) served as /ca.pem.
	CAFile string
	// Kernel and Initramfs, when set, are local files served instead of
	// the document's URLs.
	Kernel, Initramfs string
	// Document returns pixie's desired document (nil: none yet).
	Document func() *agentv1.PixieDocument
	// Address returns the address leased to mac ("" if none).
	Address func(mac string, v6 bool) string
	// ServesDHCP tells whether pixie leases the addresses of a family:
	// then boot tokens go only to the address leased to the MAC.
	ServesDHCP func(v6 bool) bool
	// TokenBurst and TokenEvery limit the boot tokens per MAC (defaults
	// DefaultTokenBurst, DefaultTokenEvery); Now is the gate's clock.
	TokenBurst int
	TokenEvery time.Duration
	Now        func() time.Time
	// Emit queues an event for central.
	Emit func(*agentv1.Event)
	// PublicURL and PublicURL6 override the base URL written into
	// scripts (default: http://<address the request came to>).
	PublicURL, PublicURL6 string
	// ImagePrefixes, when not empty, are the only URL prefixes the image
	// cache fetches from.
	ImagePrefixes []string
	Gatherer      prometheus.Gatherer
	// Health describes pixie for /healthz.
	Health  func() any
	Log     *slog.Logger
	Metrics *metric.Metrics
}

// Server serves Config.
type Server struct {
	cfg     Config
	mux     *http.ServeMux
	limiter *limiter
}

// New checks cfg and builds the routes.
func New(cfg Config) (*Server, error) {
	if cfg.Decider == nil || cfg.Cache == nil {
		return nil, errors.New("web: decider and cache required")
	}
	if cfg.Document == nil {
		cfg.Document = func() *agentv1.PixieDocument { return nil }
	}
	if cfg.Address == nil {
		cfg.Address = func(string, bool) string { return "" }
	}
	if cfg.ServesDHCP == nil {
		cfg.ServesDHCP = func(bool) bool { return false }
	}
	if cfg.Emit == nil {
		cfg.Emit = func(*agentv1.Event) {}
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	for _, u := range []*string{&cfg.PublicURL, &cfg.PublicURL6} {
		*u = strings.TrimRight(*u, "/")
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), limiter: newLimiter(cfg.TokenBurst, cfg.TokenEvery, cfg.Now)}
	s.route("GET /ipxe/boot.ipxe", "script", s.script)
	s.route("GET /ipxe/{file}", "ipxe", s.ipxe)
	s.route("GET /boot/vmlinuz", "kernel", s.artifact(func(d *agentv1.PixieDocument) string { return d.GetKernelUrl() }, cfg.Kernel))
	s.route("GET /boot/initramfs", "initramfs", s.artifact(func(d *agentv1.PixieDocument) string { return d.GetInitramfsUrl() }, cfg.Initramfs))
	s.route("GET /ca.pem", "ca", s.ca)
	s.route("GET /v1/boot-token", "boot_token", s.bootToken)
	s.route("GET /images/{sha}", "image", s.image)
	s.route("GET /healthz", "healthz", s.healthz)
	if cfg.Gatherer != nil {
		s.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Gatherer, promhttp.HandlerOpts{}))
	}
	return s, nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// NewHTTPServer wraps h with the timeouts a server facing a whole PXE
// network needs. No write timeout: images take as long as they take.
func NewHTTPServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

type recorder struct {
	http.ResponseWriter
	code int
}

func (r *recorder) WriteHeader(code int) {
	if r.code == 0 {
		r.code = code
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	if r.code == 0 {
		r.code = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

// route counts every request by kind and status code.
func (s *Server) route(pattern, kind string, h http.HandlerFunc) {
	s.mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
		rec := &recorder{ResponseWriter: w}
		h(rec, r)
		if rec.code == 0 {
			rec.code = http.StatusOK
		}
		s.cfg.Metrics.Request(kind, strconv.Itoa(rec.code))
	})
}

// base is pixie's URL as the asking machine reaches it: the address its
// request arrived at, unless the operator set a public URL.
func (s *Server) base(r *http.Request) string {
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	ap, err := netip.ParseAddrPort(fmt.Sprint(local))
	if err != nil {
		if s.cfg.PublicURL != "" {
			return s.cfg.PublicURL
		}
		return "http://" + r.Host
	}
	a := ap.Addr().Unmap().WithZone("")
	if a.Is4() && s.cfg.PublicURL != "" {
		return s.cfg.PublicURL
	}
	if a.Is6() && s.cfg.PublicURL6 != "" {
		return s.cfg.PublicURL6
	}
	return "http://" + netip.AddrPortFrom(a, ap.Port()).String()
}

func remoteIsV6(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().Is6()
}

func (s *Server) address(r *http.Request, mac string) string {
	if a := s.cfg.Address(mac, remoteIsV6(r)); a != "" {
		return a
	}
	if ap, err := netip.ParseAddrPort(r.RemoteAddr); err == nil {
		return ap.Addr().Unmap().WithZone("").String()
	}
	return ""
}

func writeScript(w http.ResponseWriter, script string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	// A script carries a one-time token and is made for one boot.
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write([]byte(script))
}

func (s *Server) script(w http.ResponseWriter, r *http.Request) {
	q, err := boot.ParseQuery(r.URL.Query())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	base := s.base(r)
	if q.MAC == "" || q.Arch == "" {
		writeScript(w, boot.ChainScript(base, q.MAC, q.Arch))
		return
	}
	// The answer may carry a boot token: asking central mints one.
	if !s.tokenGate(w, r, q.MAC) {
		return
	}
	addr := s.address(r, q.MAC)
	req := &agentv1.BootRequest{Mac: q.MAC, Arch: string(q.Arch), Address: addr}
	dec, err := s.cfg.Decider.Decide(r.Context(), req)
	if err != nil {
		s.cfg.Log.Warn("no boot decision", "mac", q.MAC, "arch", q.Arch, "address", addr, "err", err)
		s.cfg.Metrics.Decision("retry", "none")
		writeScript(w, boot.RetryScript("cannot decide what "+q.MAC+" boots: "+err.Error(), boot.ScriptURL(base, q.MAC, q.Arch)))
		return
	}
	resp := dec.Resp
	var script, action string
	switch resp.GetAction() {
	case agentv1.BootAction_BOOT_ACTION_DISK:
		action = "disk"
		script = boot.DiskScript(q.MAC)
	default:
		action = "installer"
		tok := resp.GetBootToken()
		if tok != "" && !boot.ValidToken(tok) {
			s.cfg.Log.Error("central sent a boot token that cannot go on a command line; booting without", "mac", q.MAC)
			tok = ""
		}
		doc := s.cfg.Document()
		kernel := s.artifactURL(base, "vmlinuz", resp.GetKernelUrl(), doc.GetKernelUrl(), s.cfg.Kernel)
		initrd := s.artifactURL(base, "initramfs", resp.GetInitramfsUrl(), doc.GetInitramfsUrl(), s.cfg.Initramfs)
		script = boot.InstallerScript(q.MAC, kernel, initrd, boot.Cmdline(base, resp.GetCmdline(), tok, q.Arch))
	}
	s.cfg.Metrics.Decision(action, string(dec.Source))
	s.cfg.Log.Info("boot script", "mac", q.MAC, "arch", q.Arch, "address", addr, "action", action, "source", dec.Source, "machine", resp.GetMachineId())
	s.cfg.Emit(&agentv1.Event{
		Time:    timestamppb.Now(),
		Type:    "PXE Booting",
		Subject: q.MAC,
		Message: fmt.Sprintf("arch=%s address=%s action=%s source=%s", q.Arch, addr, action, dec.Source),
	})
	s.cfg.Metrics.Event()
	writeScript(w, script)
}

// artifactURL says where iPXE fetches a boot artifact: from pixie (and
// so from its cache) unless central names an artifact pixie does not
// have; a local file given to pixie always wins.
func (s *Server) artifactURL(base, name, respURL, docURL, local string) string {
	if local != "" || respURL == "" || respURL == docURL {
		return base + "/boot/" + name
	}
	return respURL
}

func (s *Server) artifact(docURL func(*agentv1.PixieDocument) string, local string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		path := local
		if path == "" {
			u := docURL(s.cfg.Document())
			if u == "" {
				http.Error(w, "no installer artifact known yet (no desired document from central)", http.StatusServiceUnavailable)
				return
			}
			p, err := s.cfg.Cache.Artifact(r.Context(), u)
			if err != nil {
				s.cfg.Log.Warn("boot artifact unavailable", "url", u, "err", err)
				http.Error(w, "boot artifact unavailable: "+err.Error(), http.StatusBadGateway)
				return
			}
			path = p
		}
		serveFile(w, r, path)
	}
}

func serveFile(w http.ResponseWriter, r *http.Request, path string) {
	f, err := os.Open(path)
	if err != nil {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		http.Error(w, "not found", http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeContent(w, r, "", fi.ModTime(), f)
}

func (s *Server) ipxe(w http.ResponseWriter, r *http.Request) {
	name, err := boot.FileName(r.PathValue("file"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	serveFile(w, r, filepath.Join(s.cfg.IPXEDir, name))
}

func (s *Server) ca(w http.ResponseWriter, r *http.Request) {
	if s.cfg.CAFile == "" {
		http.Error(w, "no CA configured", http.StatusNotFound)
		return
	}
	b, err := os.ReadFile(s.cfg.CAFile)
	if err != nil {
		s.cfg.Log.Error("read CA", "err", err)
		http.Error(w, "CA unavailable", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, _ = w.Write(b)
}

func (s *Server) bootToken(w http.ResponseWriter, r *http.Request) {
	q, err := boot.ParseQuery(r.URL.Query())
	if err == nil && q.MAC == "" {
		err = errors.New("mac missing")
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if !s.tokenGate(w, r, q.MAC) {
		return
	}
	tok, exp, err := s.cfg.Decider.BootToken(r.Context(), &agentv1.BootRequest{Mac: q.MAC, Arch: string(q.Arch), Address: s.address(r, q.MAC)})
	switch {
	case err == nil:
	case boot.Offline(err):
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	case errors.Is(err, boot.ErrNoToken):
		http.Error(w, err.Error(), http.StatusConflict)
		return
	default:
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(struct {
		BootToken string `json:"boot_token"`
		ExpiresAt string `json:"expires_at"`
	}{tok, exp.UTC().Format(time.RFC3339)})
}

func (s *Server) image(w http.ResponseWriter, r *http.Request) {
	sha := strings.ToLower(r.PathValue("sha"))
	if !cache.ValidSHA256(sha) {
		http.Error(w, "want /images/<sha256 as 64 hex digits>", http.StatusBadRequest)
		return
	}
	raw := r.URL.Query().Get("url")
	if raw != "" {
		if _, err := cache.CheckURL(raw); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if !s.allowed(raw) {
			http.Error(w, "url not under an allowed image prefix", http.StatusForbidden)
			return
		}
	}
	path, err := s.cfg.Cache.Image(r.Context(), sha, raw)
	if err != nil {
		if r.Context().Err() != nil {
			return
		}
		if raw == "" {
			http.Error(w, "image not cached and no url given", http.StatusNotFound)
			return
		}
		s.cfg.Log.Warn("image unavailable", "sha256", sha, "url", raw, "err", err)
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	serveFile(w, r, path)
}

func (s *Server) allowed(raw string) bool {
	if len(s.cfg.ImagePrefixes) == 0 {
		return true
	}
	for _, p := range s.cfg.ImagePrefixes {
		if strings.HasPrefix(raw, p) {
			return true
		}
	}
	return false
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	var h any = map[string]string{"status": "ok"}
	if s.cfg.Health != nil {
		h = s.cfg.Health()
	}
	_ = json.NewEncoder(w).Encode(h)
}
