// Package redfish is the lab's BMC: a DMTF Redfish service, the subset
// bmclib's redfish provider and gofish use, for one computer system
// whose power and boot override it drives (a QEMU machine in the lab).
//
// Resources: the service root, one ComputerSystem with
// #ComputerSystem.Reset, a PATCHable Boot override and identify LED
// (IndicatorLED) and its Bios, one Manager (the BMC), one Chassis with
// its Power (draw and two PSUs), and a SessionService. Clients
// authenticate with a session (X-Auth-Token) or HTTP Basic.
package redfish

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/metalfleet/metalfleet/lab/internal/vm"
)

// System is the machine a BMC drives; *vm.Machine is one.
type System interface {
	PowerState(ctx context.Context) (vm.PowerState, error)
	PowerOn(ctx context.Context) error
	PowerOff(ctx context.Context, graceful bool) error
	// Reset restarts a running system; vm.ErrPoweredOff when it is off.
	Reset(ctx context.Context) error
	PowerCycle(ctx context.Context) error
	SetBootDevice(dev vm.BootDevice, persistent bool) error
	BootDevice() (vm.BootDevice, bool)
}

// Config describes one BMC.
type Config struct {
	ID           string // the system's and chassis' Redfish Id; default "1"
	UUID         string // the system's UUID (SMBIOS)
	Name         string
	SerialNumber string
	User         string
	Password     string
	// BootMode is the firmware's, "UEFI" (default) or "Legacy"; it is
	// the only BootSourceOverrideMode a PATCH may ask for.
	BootMode string
	// BIOSVersion and BMCVersion are the firmware versions served
	// (System.BiosVersion, Manager.FirmwareVersion); defaults
	// "metal-lab-bios 1.0" and "metal-lab".
	BIOSVersion, BMCVersion string
	// SSHPort is the port of the BMC's SSH serial console, as its
	// manager's NetworkProtocol says (where metal-bmc looks); 0: the BMC
	// serves no SSH.
	SSHPort int
	// SessionTimeout ends idle sessions; default 30 minutes.
	SessionTimeout time.Duration
	Log            *slog.Logger
	Metrics        prometheus.Registerer // nil: no metrics
}

// Paths of the resources.
const (
	rootPath           = "/redfish/v1"
	systemsPath        = rootPath + "/Systems"
	managersPath       = rootPath + "/Managers"
	chassisPath        = rootPath + "/Chassis"
	sessionServicePath = rootPath + "/SessionService"
	sessionsPath       = sessionServicePath + "/Sessions"
	managerID          = "BMC"
	maxSessions        = 64
	maxBody            = 64 << 10
	// actionTimeout bounds a synchronous power action; graceful ones run
	// in the background, bounded by the machine's own shutdown timeout.
	actionTimeout = 2 * time.Minute
)

// Server is a Redfish BMC; it is an http.Handler.
type Server struct {
	cfg         Config
	sys         System
	log         *slog.Logger
	metrics     *metrics
	serviceUUID string
	userHash    [32]byte
	passHash    [32]byte

	mu       sync.Mutex
	sessions map[[32]byte]*session // by the token's SHA-256
	led      string                // IndicatorLED: Off, Lit or Blinking
	now      func() time.Time

	bgCtx    context.Context // graceful actions; cancelled by Close (they then force)
	bgCancel context.CancelFunc
	bg       sync.WaitGroup
}

// New returns a BMC for sys.
func New(cfg Config, sys System) (*Server, error) {
	if cfg.ID == "" {
		cfg.ID = "1"
	}
	if cfg.Name == "" {
		cfg.Name = cfg.ID
	}
	if cfg.BootMode == "" {
		cfg.BootMode = "UEFI"
	}
	if cfg.BIOSVersion == "" {
		cfg.BIOSVersion = "metal-lab-bios 1.0"
	}
	if cfg.BMCVersion == "" {
		cfg.BMCVersion = "metal-lab"
	}
	if cfg.SessionTimeout == 0 {
		cfg.SessionTimeout = 30 * time.Minute
	}
	switch {
	case cfg.BootMode != "UEFI" && cfg.BootMode != "Legacy":
		return nil, fmt.Errorf("redfish: boot mode %q: want UEFI or Legacy", cfg.BootMode)
	case cfg.User == "" || cfg.Password == "":
		return nil, errors.New("redfish: user and password are required")
	case strings.ContainsAny(cfg.ID, "/?#"):
		return nil, fmt.Errorf("redfish: id %q must be one path segment", cfg.ID)
	case sys == nil:
		return nil, errors.New("redfish: no system")
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg: cfg, sys: sys, log: log, metrics: m,
		// The service's UUID is stable per machine but not the machine's.
		serviceUUID: uuid.NewSHA1(uuid.NameSpaceOID, []byte("metal-lab-bmc:"+cfg.UUID+":"+cfg.ID)).String(),
		userHash:    sha256.Sum256([]byte(cfg.User)),
		passHash:    sha256.Sum256([]byte(cfg.Password)),
		sessions:    map[[32]byte]*session{},
		led:         "Off",
		now:         time.Now,
	}
	s.bgCtx, s.bgCancel = context.WithCancel(context.Background())
	return s, nil
}

// Close cuts background graceful actions short (they force the machine
// off) and waits for them, or for ctx.
func (s *Server) Close(ctx context.Context) error {
	s.bgCancel()
	done := make(chan struct{})
	go func() { s.bg.Wait(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Server) systemPath() string  { return systemsPath + "/" + s.cfg.ID }
func (s *Server) resetPath() string   { return s.systemPath() + "/Actions/ComputerSystem.Reset" }
func (s *Server) chassisPath() string { return chassisPath + "/" + s.cfg.ID }
func (s *Server) biosPath() string    { return s.systemPath() + "/Bios" }
func (s *Server) powerPath() string   { return s.chassisPath() + "/Power" }
func (s *Server) managerPath() string { return managersPath + "/" + managerID }
func (s *Server) networkProtocolPath() string {
	return s.managerPath() + "/NetworkProtocol"
}

type handler func(http.ResponseWriter, *http.Request)

// route finds the resource at path: its name (for metrics) and its
// handlers by method. HEAD is served as GET.
func (s *Server) route(path string) (string, map[string]handler) {
	switch path {
	case rootPath:
		return "service_root", map[string]handler{http.MethodGet: s.getRoot}
	case systemsPath:
		return "systems", map[string]handler{http.MethodGet: s.getSystems}
	case s.systemPath():
		return "system", map[string]handler{http.MethodGet: s.getSystem, http.MethodPatch: s.patchSystem}
	case s.biosPath():
		return "bios", map[string]handler{http.MethodGet: s.getBios}
	case s.powerPath():
		return "power", map[string]handler{http.MethodGet: s.getPower}
	case s.resetPath():
		return "reset", map[string]handler{http.MethodPost: s.postReset}
	case managersPath:
		return "managers", map[string]handler{http.MethodGet: s.getManagers}
	case s.managerPath():
		return "manager", map[string]handler{http.MethodGet: s.getManager}
	case s.networkProtocolPath():
		return "network_protocol", map[string]handler{http.MethodGet: s.getNetworkProtocol}
	case chassisPath:
		return "chassis_collection", map[string]handler{http.MethodGet: s.getChassisCollection}
	case s.chassisPath():
		return "chassis", map[string]handler{http.MethodGet: s.getChassis}
	case sessionServicePath:
		return "session_service", map[string]handler{http.MethodGet: s.getSessionService}
	case sessionsPath:
		return "sessions", map[string]handler{http.MethodGet: s.getSessions, http.MethodPost: s.postSession}
	}
	if id, ok := strings.CutPrefix(path, sessionsPath+"/"); ok && id != "" && !strings.Contains(id, "/") {
		return "session", map[string]handler{
			http.MethodGet:    func(w http.ResponseWriter, r *http.Request) { s.getSession(w, r, id) },
			http.MethodDelete: func(w http.ResponseWriter, r *http.Request) { s.deleteSession(w, r, id) },
		}
	}
	return "unknown", nil
}

// public reports whether a request needs no credentials: the service
// root (clients discover the service before they log in) and login.
func public(path, method string) bool {
	switch {
	case path == "/redfish" || path == rootPath:
		return method == http.MethodGet || method == http.MethodHead
	case path == sessionsPath:
		return method == http.MethodPost
	}
	return false
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec := &recorder{ResponseWriter: w, code: http.StatusOK}
	path := strings.TrimSuffix(r.URL.Path, "/")
	resource, handlers := s.route(path)
	defer func() { s.metrics.request(r.Method, resource, rec.code) }()

	if path == "/redfish" && (r.Method == http.MethodGet || r.Method == http.MethodHead) {
		resource = "version"
		s.writeJSON(rec, http.StatusOK, map[string]string{"v1": rootPath + "/"})
		return
	}
	if !public(path, r.Method) && !s.authenticate(r) {
		rec.Header().Set("WWW-Authenticate", `Basic realm="metal-lab BMC"`)
		s.fail(rec, http.StatusUnauthorized, msg("NoValidSession", "There is no valid session established with the implementation.", "Establish a session with POST "+sessionsPath+" or send HTTP Basic credentials."))
		return
	}
	if handlers == nil {
		s.fail(rec, http.StatusNotFound, msg("ResourceMissingAtURI", fmt.Sprintf("The resource at the URI %s was not found.", r.URL.Path), "Place a valid resource at the URI or correct the URI and resubmit the request.", r.URL.Path))
		return
	}
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet
	}
	h, ok := handlers[method]
	if !ok {
		allowed := allow(handlers)
		rec.Header().Set("Allow", allowed)
		s.fail(rec, http.StatusMethodNotAllowed, msg("OperationNotAllowed", fmt.Sprintf("The HTTP method %s is not allowed on %s; allowed: %s.", r.Method, r.URL.Path, allowed), "Use one of the allowed methods."))
		return
	}
	h(rec, r)
}

func allow(h map[string]handler) string {
	var out []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPatch, http.MethodDelete} {
		key := m
		if m == http.MethodHead {
			key = http.MethodGet
		}
		if _, ok := h[key]; ok {
			out = append(out, m)
		}
	}
	return strings.Join(out, ", ")
}

// recorder keeps the status code for the metrics.
type recorder struct {
	http.ResponseWriter
	code int
}

func (r *recorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}
