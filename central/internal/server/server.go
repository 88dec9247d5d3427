// Package server assembles metal-central: database (embedded or given),
// migrations, the people API with its auth interceptor, TLS, health,
// reflection and the Prometheus listener.
package server

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/bmc"
	"github.com/metalfleet/metalfleet/central/internal/console"
	"github.com/metalfleet/metalfleet/central/internal/fabric"
	"github.com/metalfleet/metalfleet/central/internal/file"
	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/machine"
	"github.com/metalfleet/metalfleet/central/internal/pgembed"
	"github.com/metalfleet/metalfleet/central/internal/pki"
	"github.com/metalfleet/metalfleet/central/internal/service"
	"github.com/metalfleet/metalfleet/central/internal/store"
	"github.com/metalfleet/metalfleet/central/internal/tenancy"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Config is metal-central's command line, parsed by main.
type Config struct {
	// Listen is the gRPC address, e.g. ":8443" or "[::]:8443".
	Listen string
	// MetricsListen serves /metrics and /healthz; empty disables it.
	MetricsListen string
	// DataDir holds the embedded database, CA, certificates and admin.token.
	DataDir string
	// DBURL selects an external PostgreSQL/CockroachDB; empty runs the embedded one.
	DBURL string
	// TLSCert and TLSKey replace the self-made serving certificate.
	TLSCert, TLSKey string
	// TLSHosts are extra names/addresses for the self-made certificate.
	TLSHosts []string
	// InsecurePlaintext serves gRPC without TLS (local experiments only).
	InsecurePlaintext bool
	// AdminTokenLifetime of the admin token written on first start.
	AdminTokenLifetime time.Duration
	// Service settings (VRF range).
	Service service.Config
	// DurableEmbedded turns fsync on in the embedded PostgreSQL (default true in main).
	DurableEmbedded bool
	// Replica names this replica to agents and in the agents table;
	// empty means "<hostname>:<port>".
	Replica string
	// Fleet tunes the agent hub (zero values: fleet.DefaultConfig).
	Fleet fleet.Config
	// Pprof serves /debug/pprof/ on the metrics listener.
	Pprof bool
	// Hints replaces the agent hub's change hints (tests); nil picks the
	// engine's default.
	Hints fleet.Hints
	// Transport tunes gRPC's HTTP/2 transport for the agent streams; nil
	// is DefaultTransport().
	Transport *Transport
	// TLSHandshakeSlots and TLSHandshakeWait tune the TLS admission gate
	// (zero: fleet.NewTLSGate's defaults).
	TLSHandshakeSlots int
	TLSHandshakeWait  time.Duration
	// ConsoleWatch is how often a console session re-reads its machine's
	// allocation (zero: console.DefaultConfig).
	ConsoleWatch time.Duration
	// StuckInterval is how often machines stuck past their state's timeout
	// are looked for and power-cycled (zero: machine.DefaultStuckInterval).
	StuckInterval time.Duration
}

// Transport is what grpc-go offers to size its HTTP/2 transport; the
// fields map one to one onto grpc server options (docs/agent-protocol.md
// says what each gave per stream).
type Transport struct {
	// ReadBuffer and WriteBuffer are per-connection buffer sizes (bytes;
	// 0 reads straight from the TLS connection, which buffers already).
	ReadBuffer, WriteBuffer int
	// SharedWriteBuffer releases a connection's write buffer between
	// writes, so that idle streams hold none.
	SharedWriteBuffer bool
	// StreamWindow and ConnWindow are HTTP/2 flow-control windows (bytes;
	// 0: grpc's dynamic default; below 64 KiB is raised to 64 KiB by grpc).
	StreamWindow, ConnWindow int32
	// HeaderTable is the HPACK dynamic table size (bytes; 0: 4096).
	HeaderTable uint32
	// KeepaliveTime and KeepaliveTimeout: pings on an idle connection and
	// how long an answer may take before it is closed.
	KeepaliveTime, KeepaliveTimeout time.Duration
}

// DefaultTransport suits thousands of mostly idle, long-lived agent
// streams: small per-connection buffers (the defaults are 32 KiB each way
// per connection), write buffers shared between connections, and
// keepalives that find dead peers without punishing agents that ping.
func DefaultTransport() *Transport {
	return &Transport{
		ReadBuffer:        0,
		WriteBuffer:       8 << 10,
		SharedWriteBuffer: true,
		KeepaliveTime:     time.Minute,
		KeepaliveTimeout:  20 * time.Second,
	}
}

func (t *Transport) options() []grpc.ServerOption {
	if t == nil {
		t = DefaultTransport()
	}
	opts := []grpc.ServerOption{
		grpc.ReadBufferSize(t.ReadBuffer),
		grpc.WriteBufferSize(t.WriteBuffer),
		grpc.SharedWriteBuffer(t.SharedWriteBuffer),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: t.KeepaliveTime, Timeout: t.KeepaliveTimeout}),
		// Agents ping every 45 s, with or without a stream.
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 10 * time.Second, PermitWithoutStream: true}),
	}
	if t.StreamWindow > 0 {
		opts = append(opts, grpc.InitialWindowSize(t.StreamWindow))
	}
	if t.ConnWindow > 0 {
		opts = append(opts, grpc.InitialConnWindowSize(t.ConnWindow))
	}
	if t.HeaderTable > 0 {
		opts = append(opts, grpc.HeaderTableSize(t.HeaderTable))
	}
	return opts
}

// AdminTokenFile is where the first admin token is written.
const AdminTokenFile = "admin.token"

// Server is a running metal-central.
type Server struct {
	cfg      Config
	log      *slog.Logger
	pg       *pgembed.Server
	store    *store.Store
	hub      *fleet.Hub
	consoles *console.Broker
	grpc     *grpc.Server
	health   *health.Server
	lis      net.Listener
	metrics  *http.Server
	mlis     net.Listener
	caFile   string
	serveErr chan error
	// stopSweep ends the background loops (housekeeping, stuck machines);
	// sweeps waits for them.
	stopSweep context.CancelFunc
	sweeps    sync.WaitGroup
}

// DefaultStuckInterval is how often a replica looks for stuck machines
// unless Config.StuckInterval says otherwise.
const DefaultStuckInterval = machine.DefaultStuckInterval

// Housekeeping: expired boot tokens are kept for a day (for an operator
// reading why a boot failed), then deleted, checked every sweepEvery.
const (
	sweepEvery    = 10 * time.Minute
	bootTokenKeep = 24 * time.Hour
)

// sweepLoop deletes what nobody needs any more until ctx ends. Every
// replica runs it; the deletes are idempotent.
func (s *Server) sweepLoop(ctx context.Context) {
	t := time.NewTicker(sweepEvery)
	defer t.Stop()
	for {
		n, err := s.hub.SweepBootTokens(ctx, time.Now().Add(-bootTokenKeep))
		switch {
		case err != nil && ctx.Err() == nil:
			s.log.Error("sweep expired boot tokens", "err", err)
		case n > 0:
			s.log.Info("expired boot tokens deleted", "count", n)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Start brings everything up and begins serving. Stop undoes it.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (_ *Server, err error) {
	if cfg.DataDir == "" {
		return nil, errors.New("--data-dir is required")
	}
	// Parents we create are 0755 like any /var/lib path, so that the
	// embedded PostgreSQL's own user can walk to its cluster; the data
	// dir itself stays private.
	if err := os.MkdirAll(filepath.Dir(filepath.Clean(cfg.DataDir)), 0o755); err != nil {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	if err := os.Mkdir(cfg.DataDir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return nil, fmt.Errorf("create data dir: %w", err)
	}
	s := &Server{cfg: cfg, log: log, serveErr: make(chan error, 2)}
	defer func() {
		if err != nil {
			s.Stop(context.WithoutCancel(ctx))
		}
	}()
	dbURL := cfg.DBURL
	if dbURL == "" {
		if dbURL, err = s.startEmbedded(ctx); err != nil {
			return nil, err
		}
	}
	if s.store, err = store.Open(ctx, dbURL, log); err != nil {
		return nil, err
	}
	if err = s.store.Migrate(ctx); err != nil {
		return nil, fmt.Errorf("migrate: %w", err)
	}
	if s.lis, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("listen %s: %w", cfg.Listen, err)
	}
	fcfg := cfg.Fleet
	fcfg.Replica = replicaName(cfg.Replica, s.lis.Addr())
	if s.hub, err = fleet.New(s.store, log, fcfg, cfg.Hints); err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	var gate *fleet.TLSGate
	if !cfg.InsecurePlaintext {
		tlsCfg, err := s.tlsConfig(ctx)
		if err != nil {
			return nil, err
		}
		// Returning agents resume their sessions, also after a restart.
		if err := pki.SessionTickets(tlsCfg, cfg.DataDir, time.Now); err != nil {
			return nil, err
		}
		creds = credentials.NewTLS(tlsCfg)
		gate = fleet.NewTLSGate(cfg.TLSHandshakeSlots, cfg.TLSHandshakeWait)
	}
	scfg := cfg.Service
	if scfg.CAPin == "" && s.caFile != "" {
		if scfg.CAPin, err = caPin(s.caFile); err != nil {
			return nil, err
		}
	}
	if len(scfg.Centrals) == 0 {
		scfg.Centrals = []string{defaultAdvertise(s.lis.Addr())}
	}
	if scfg.AliveWithin == 0 {
		scfg.AliveWithin = fcfg.Liveliness.Alive
	}
	// The console broker joins people's console streams with metal-bmc's,
	// which the hub authenticates.
	consoles := console.New(s.store, s.hub, log, console.Config{Watch: cfg.ConsoleWatch})
	s.hub.AttachConsole(consoles)
	s.consoles = consoles
	api, err := service.New(ctx, s.store, log, scfg, service.WithFleet(s.hub), service.WithConsole(consoles))
	if err != nil {
		return nil, err
	}
	s.hub.Attach(api.Provisioning())
	s.hub.AttachKind(agentv1.Kind_KIND_SWITCH, fleet.ReporterFunc(func(ctx context.Context, tx pgx.Tx, a fleet.Agent, r *agentv1.Report) error {
		return fabric.Report(ctx, tx, s.hub, a.Identity, a.Partition, r)
	}))
	s.hub.AttachKind(agentv1.Kind_KIND_BMC, fleet.ReporterFunc(func(ctx context.Context, tx pgx.Tx, a fleet.Agent, r *agentv1.Report) error {
		return bmc.Report(ctx, tx, s.hub, machine.NoteIfKnown, a.ID, a.Partition, r)
	}))
	// A metal-bmc gets its partition's BMC settings as it is enrolled.
	s.hub.AttachEnrol(agentv1.Kind_KIND_BMC, func(ctx context.Context, tx pgx.Tx, id, partition string) error {
		return bmc.DeriveFor(ctx, tx, s.hub, partition, []string{id})
	})
	if err := api.RefreshPixies(ctx); err != nil {
		return nil, fmt.Errorf("refresh PXE service documents: %w", err)
	}
	look := tenancy.NewLookup(s.store)
	tokenPath, err := s.ensureAdminToken(ctx, look)
	if err != nil {
		return nil, err
	}
	// Machines stuck past their state's timeout are power-cycled through
	// their BMC; every replica looks, row locks keep it once per episode.
	stuck := machine.NewStuck(s.store, s.hub, log, cfg.StuckInterval)
	metrics := newMetrics()
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), metrics, s.hub.Collector(), consoles.Collector(),
		stuck.Collector())
	if gate != nil {
		reg.MustRegister(gate)
	}
	authz := auth.New(look, look, log)
	opts := []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(metrics.unary(log), recoverUnary(log), authz.Unary()),
		grpc.ChainStreamInterceptor(authz.Stream()),
	}
	opts = append(opts, cfg.Transport.options()...)
	opts = append(opts, grpc.Creds(fleet.Creds(creds, gate)), grpc.ForceServerCodecV2(newLenientCodec()))
	s.grpc = grpc.NewServer(opts...)
	api.Register(s.grpc)
	s.hub.Register(s.grpc)
	s.health = health.NewServer()
	healthpb.RegisterHealthServer(s.grpc, s.health)
	reflection.Register(s.grpc)
	s.hub.Start(ctx)
	sweepCtx, stopSweep := context.WithCancel(context.WithoutCancel(ctx))
	s.stopSweep = stopSweep
	s.sweeps.Go(func() { s.sweepLoop(sweepCtx) })
	s.sweeps.Go(func() { stuck.Run(sweepCtx) })
	// A free's reset and a reinstall's cycle wait for the machine's
	// switches to move its ports back to the PXE VLAN.
	reboots := machine.NewReboots(s.store, s.hub, log, 0)
	s.sweeps.Go(func() { reboots.Run(sweepCtx) })
	go func() { s.serveErr <- s.grpc.Serve(s.lis) }()
	if cfg.MetricsListen != "" {
		if s.mlis, err = net.Listen("tcp", cfg.MetricsListen); err != nil {
			return nil, fmt.Errorf("listen metrics %s: %w", cfg.MetricsListen, err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		if cfg.Pprof {
			mux.HandleFunc("/debug/pprof/", pprof.Index)
			mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
			mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
			mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		}
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
			if err := s.store.Pool().Ping(r.Context()); err != nil {
				http.Error(w, "database unreachable", http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		})
		s.metrics = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { s.serveErr <- s.metrics.Serve(s.mlis) }()
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for svc := range s.grpc.GetServiceInfo() {
		s.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
	}
	log.Info("metal-central serving", "grpc", s.lis.Addr().String(), "replica", fcfg.Replica, "tls", !cfg.InsecurePlaintext,
		"ca", s.caFile, "metrics", s.MetricsAddr(), "admin_token_file", tokenPath)
	return s, nil
}

// Addr is the gRPC listen address.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// MetricsAddr is the metrics listen address, or "".
func (s *Server) MetricsAddr() string {
	if s.mlis == nil {
		return ""
	}
	return s.mlis.Addr().String()
}

// CAFile is the CA clients must trust ("" with given certificates or plaintext).
func (s *Server) CAFile() string { return s.caFile }

// AdminTokenPath is where the admin token is.
func (s *Server) AdminTokenPath() string { return filepath.Join(s.cfg.DataDir, AdminTokenFile) }

// Done reports a serve failure or the embedded database dying.
func (s *Server) Done() <-chan error { return s.serveErr }

// Stop drains RPCs (up to ctx's deadline), then stops the database.
func (s *Server) Stop(ctx context.Context) {
	if s.health != nil {
		s.health.Shutdown()
	}
	// Stop accepting first: agents whose streams are closed below reconnect
	// at once, and must find another replica, not this one again.
	var drained chan struct{}
	if s.grpc != nil {
		drained = make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(drained) }()
	}
	if s.stopSweep != nil {
		s.stopSweep()
		s.sweeps.Wait()
	}
	if s.consoles != nil {
		// Console streams never end by themselves either.
		s.consoles.EndAll(console.ReasonShutdown)
	}
	if s.hub != nil {
		// Agent streams never end by themselves; close them so that the
		// graceful stop only waits for people's calls.
		start := time.Now()
		s.hub.Shutdown(ctx)
		s.log.Info("agent streams closed", "took", time.Since(start))
	}
	if drained != nil {
		// People's calls had the time the streams took to close; what is
		// left after a short grace are agent connections waiting for their
		// peers to acknowledge the GOAWAY, which only delays the restart.
		t := time.NewTimer(time.Second)
		select {
		case <-drained:
		case <-t.C:
			s.grpc.Stop()
		case <-ctx.Done():
			s.grpc.Stop()
		}
		t.Stop()
	}
	if s.metrics != nil {
		_ = s.metrics.Shutdown(ctx)
	}
	if s.lis != nil && s.grpc == nil {
		_ = s.lis.Close()
	}
	if s.store != nil {
		s.store.Close()
	}
	if s.pg != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := s.pg.Stop(sctx); err != nil {
			s.log.Error("stop embedded postgres", "err", err)
		}
	}
}

func (s *Server) startEmbedded(ctx context.Context) (string, error) {
	if os.Geteuid() == 0 {
		// PostgreSQL runs as its own user and must traverse the data dir to
		// reach its cluster; 0711 lets it pass without listing. Secrets in
		// the dir (keys, admin.token) are 0600 themselves.
		if err := os.Chmod(s.cfg.DataDir, 0o711); err != nil {
			return "", fmt.Errorf("data dir: %w", err)
		}
	}
	pg, err := pgembed.Start(ctx, pgembed.Options{
		DataDir: filepath.Join(s.cfg.DataDir, "postgres"),
		Durable: s.cfg.DurableEmbedded,
		Logger:  s.log,
	})
	if err != nil {
		return "", fmt.Errorf("embedded postgres: %w", err)
	}
	s.pg = pg
	go func() {
		<-pg.Done()
		s.serveErr <- errors.New("embedded postgres exited")
	}()
	if err := pg.CreateDatabase(ctx, "metalfleet"); err != nil {
		return "", fmt.Errorf("embedded postgres: %w", err)
	}
	s.log.Info("embedded postgres running", "dir", filepath.Join(s.cfg.DataDir, "postgres"))
	return pg.ConnString("metalfleet"), nil
}

// ensureAdminToken writes an admin token on first start, and again when the
// stored one no longer works (expired, revoked, or the database was replaced).
func (s *Server) ensureAdminToken(ctx context.Context, look *tenancy.Lookup) (string, error) {
	path := s.AdminTokenPath()
	if b, err := os.ReadFile(path); err == nil {
		if _, err := look.Principal(ctx, strings.TrimSpace(string(b))); err == nil {
			return path, nil
		} else if !errors.Is(err, auth.ErrUnauthenticated) {
			return "", err
		}
		s.log.Warn("admin token no longer valid: writing a new one", "file", path)
	}
	life := s.cfg.AdminTokenLifetime
	if life == 0 {
		life = 365 * 24 * time.Hour
	}
	var secret string
	err := s.store.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		secret, err = tenancy.MintToken(ctx, tx, &apiv1.Token{Description: "admin token written on first start", AdminRole: apiv1.Level_LEVEL_EDITOR}, life)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("mint admin token: %w", err)
	}
	if err := file.WriteAtomic(path, []byte(secret+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("write admin token: %w", err)
	}
	return path, nil
}

func (s *Server) tlsConfig(ctx context.Context) (*tls.Config, error) {
	if s.cfg.TLSCert != "" || s.cfg.TLSKey != "" {
		if s.cfg.TLSCert == "" || s.cfg.TLSKey == "" {
			return nil, errors.New("--tls-cert and --tls-key go together")
		}
		return pki.LoadGiven(s.cfg.TLSCert, s.cfg.TLSKey)
	}
	hosts, err := pki.HostsFromListen(s.cfg.Listen)
	if err != nil {
		return nil, err
	}
	b, err := pki.Ensure(ctx, s.cfg.DataDir, append(hosts, s.cfg.TLSHosts...), time.Now())
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	if b.IssueReason != "" {
		s.log.Info("serving certificate issued", "reason", b.IssueReason, "cert", b.CertFile)
	}
	s.caFile = b.CAFile
	return b.ServerTLSConfig()
}

// caPin is the lower-case hex sha256 of the CA certificate's DER, which
// installers check the CA they fetch from the PXE service against.
func caPin(caFile string) (string, error) {
	b, err := os.ReadFile(caFile)
	if err != nil {
		return "", fmt.Errorf("read CA: %w", err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return "", fmt.Errorf("CA %s: no PEM block", caFile)
	}
	sum := sha256.Sum256(blk.Bytes)
	return hex.EncodeToString(sum[:]), nil
}

// defaultAdvertise is the agent endpoint installers are told when none is
// configured: this host's name and the listening port.
func defaultAdvertise(addr net.Addr) string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "localhost"
	}
	_, port, _ := net.SplitHostPort(addr.String())
	return net.JoinHostPort(host, port)
}

// replicaName defaults to "<hostname>:<port>": unique per process on a host
// and recognisable for an operator.
func replicaName(given string, addr net.Addr) string {
	if given != "" {
		return given
	}
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "central"
	}
	if ta, ok := addr.(*net.TCPAddr); ok {
		return fmt.Sprintf("%s:%d", host, ta.Port)
	}
	return host
}
