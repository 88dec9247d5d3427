// Package oob is metal-bmc as a library: out-of-band control of one
// partition's BMCs (docs/bmc.md). A Service takes the agent's desired
// document (it is the agent runtime's Reconciler), finds the BMCs (the
// document's static list and the BMC network's DHCP leases), polls them
// with bounded parallelism and exponential backoff for the unreachable
// ones, reports their facts on change and periodically, and executes the
// document's intents exactly once per generation, journalled so that a
// restart does not repeat them.
//
// cmd/metal-bmc wires it to the agent runtime; the lab's tests drive it
// against the lab's Redfish BMC.
package oob

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/discover"
	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/driver"
	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/journal"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Config describes one metal-bmc.
type Config struct {
	// StateDir holds the intent journal (required: without it an intent
	// could run twice after a restart).
	StateDir string
	// LeaseFile is the BMC network's DHCP lease file (metal-pixie's
	// leases.json); empty: static BMCs only.
	LeaseFile string
	// Parallel bounds the BMCs polled at once, and separately the intents
	// executed at once; default DefaultParallel.
	Parallel int
	// PollInterval is how often a reachable BMC is read when the document
	// does not say; default 60 s.
	PollInterval time.Duration
	// ReportInterval is how often the facts are reported although nothing
	// changed (contact, last_seen); default 5 min. Changes are reported
	// within Tick.
	ReportInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait before polling an
	// unreachable BMC again, doubling per failure; defaults 10 s and 10 min.
	MinBackoff, MaxBackoff time.Duration
	// Tick is how often the service looks for due polls, pending intents
	// and changes to report; default 1 s.
	Tick time.Duration
	// Timeout bounds one call to a BMC; default 30 s.
	Timeout time.Duration
	// RedfishSessions logs in with Redfish sessions instead of HTTP Basic.
	RedfishSessions bool
	// IpmitoolPath and IpmiCipherSuite configure bmclib's ipmitool provider.
	IpmitoolPath, IpmiCipherSuite string
	// HTTPClient, when set, carries Redfish (a client trusting a lab CA).
	HTTPClient *http.Client
	// MaxFirmware bounds a firmware image downloaded for an intent;
	// default 512 MiB.
	MaxFirmware int64
	// Report sends facts and events to central (the agent runtime's
	// Emit). Required.
	Report func(facts *agentv1.Facts, events ...*agentv1.Event)
	// Base, when set, gives the facts every report starts from (agent
	// version, host name, addresses).
	Base    func() *agentv1.Facts
	Log     *slog.Logger
	Metrics prometheus.Registerer // nil: none

	// driver replaces the real BMC driver (this package's tests).
	driver driver.Driver
}

// Service is one running metal-bmc; see the package doc.
type Service struct {
	cfg     Config
	log     *slog.Logger
	drv     driver.Driver
	journal *journal.Journal
	metrics *metrics

	mu sync.Mutex
	// doc is the document in effect (validated), nil before the first.
	doc *document
	// targets are the BMCs known, by address.
	targets map[string]*target
	// running are the machines whose intents execute now.
	running map[string]bool
	// pending holds why an intent waits, by machine and kind.
	pending map[journal.Key]pendingIntent
	// changed is set when the facts changed since the last report.
	changed    bool
	lastReport time.Time
	leaseErr   string
	// leaseCache is the last parse of the lease file (read every tick
	// otherwise: a large file would cost a parse per second).
	leaseCache leaseCache

	wake chan struct{}
	// psem and isem bound polls and intent executions.
	psem, isem chan struct{}
	wg         sync.WaitGroup
}

type pendingIntent struct {
	gen uint64
	why string
}

// JournalFile is the intent journal's name in StateDir.
const JournalFile = "intents.journal"

// DefaultParallel is Config.Parallel when not set and metal-bmc's
// --parallel default, named so that the poll benchmark measures the
// bound metal-bmc really runs with.
const DefaultParallel = 64

// New checks cfg and opens the journal.
func New(cfg Config) (*Service, error) {
	if cfg.StateDir == "" {
		return nil, errors.New("oob: a state dir is required (the intent journal lives there)")
	}
	if cfg.Report == nil {
		return nil, errors.New("oob: Report is required")
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = DefaultParallel
	}
	if cfg.PollInterval <= 0 {
		cfg.PollInterval = time.Minute
	}
	if cfg.ReportInterval <= 0 {
		cfg.ReportInterval = 5 * time.Minute
	}
	if cfg.MinBackoff <= 0 {
		cfg.MinBackoff = 10 * time.Second
	}
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = max(10*time.Minute, cfg.MinBackoff)
	}
	if cfg.Tick <= 0 {
		cfg.Tick = time.Second
	}
	if cfg.MaxFirmware <= 0 {
		cfg.MaxFirmware = 512 << 20
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	m, err := newMetrics(cfg.Metrics)
	if err != nil {
		return nil, err
	}
	drv := cfg.driver
	if drv == nil {
		drv = &driver.Bmclib{Timeout: cfg.Timeout, RedfishSessions: cfg.RedfishSessions, IpmitoolPath: cfg.IpmitoolPath,
			IpmiCipherSuite: cfg.IpmiCipherSuite, HTTPClient: cfg.HTTPClient, Log: cfg.Log}
	}
	j, err := journal.Open(filepath.Join(cfg.StateDir, JournalFile))
	if err != nil {
		return nil, err
	}
	return &Service{
		cfg: cfg, log: cfg.Log, drv: drv, journal: j, metrics: m,
		targets: map[string]*target{}, running: map[string]bool{}, pending: map[journal.Key]pendingIntent{},
		wake: make(chan struct{}, 1),
		psem: make(chan struct{}, cfg.Parallel), isem: make(chan struct{}, cfg.Parallel),
	}, nil
}

// Apply takes a desired document (agent.Reconciler). A document that is
// not valid changes nothing and says what is wrong; a valid one replaces
// the one in effect and wakes the intents.
func (s *Service) Apply(_ context.Context, d *agentv1.Desired) error {
	doc, err := parseDocument(d.GetBmc())
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.doc = doc
	s.mu.Unlock()
	s.log.Info("document applied", "revision", d.GetRevision(), "static_bmcs", len(doc.static), "machines", len(doc.machines), "credentials", doc.creds)
	s.poke()
	return nil
}

func (s *Service) poke() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// Run polls, executes intents and reports until ctx ends, then waits for
// the calls under way (each bounded by the call timeout; an intent cut
// short by ctx is left "started" in the journal, as a kill would).
func (s *Service) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.Tick)
	defer t.Stop()
	defer s.wg.Wait()
	for {
		s.refresh(ctx)
		s.schedulePolls(ctx)
		s.scheduleIntents(ctx)
		s.maybeReport(false)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-s.wake:
		}
	}
}

// Close closes the journal; call it after Run returned.
func (s *Service) Close() error { return s.journal.Close() }

// ReportNow reports the facts now, changed or not (a report_facts intent).
func (s *Service) ReportNow() { s.maybeReport(true) }

// Credentials are the partition's BMC credentials of the document in
// effect (the console uses them).
func (s *Service) Credentials() driver.Creds { return s.currentDoc().creds }

// SSHPort is the port of the SSH serial console of the Redfish BMC at
// address, as the BMC says (driver.Bmclib.SSHPort): 0 when it does not
// say or the driver cannot ask.
func (s *Service) SSHPort(ctx context.Context, address string) (int, error) {
	d, ok := s.drv.(interface {
		SSHPort(context.Context, driver.Endpoint, driver.Creds) (int, error)
	})
	if !ok {
		return 0, nil
	}
	return d.SSHPort(ctx, driver.Endpoint{Address: address, Protocol: agentv1.BmcProtocol_BMC_PROTOCOL_REDFISH}, s.Credentials())
}

// currentDoc returns the document in effect or an empty one.
func (s *Service) currentDoc() *document {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.doc == nil {
		return &document{}
	}
	return s.doc
}

type leaseCache struct {
	mod     time.Time
	size    int64
	cidrs   string
	at      time.Time
	targets []discover.Target
}

// leaseReparse is how often an unchanged lease file is parsed again:
// leases expire with time, not only with writes.
const leaseReparse = 10 * time.Second

// leases reads the lease file when it changed (or leaseReparse passed);
// on an error the caller keeps the BMCs it knew.
func (s *Service) leases(doc *document) ([]discover.Target, error) {
	if s.cfg.LeaseFile == "" {
		return nil, nil
	}
	fi, err := os.Stat(s.cfg.LeaseFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lease file: %w", err)
	}
	cidrs := fmt.Sprint(doc.leaseCIDRs)
	now := time.Now()
	c := &s.leaseCache
	if c.at.IsZero() || !fi.ModTime().Equal(c.mod) || fi.Size() != c.size || cidrs != c.cidrs || now.Sub(c.at) >= leaseReparse {
		t, err := discover.ReadLeases(s.cfg.LeaseFile, now, doc.leaseCIDRs)
		if err != nil {
			return nil, err
		}
		*c = leaseCache{mod: fi.ModTime(), size: fi.Size(), cidrs: cidrs, at: now, targets: t}
	}
	return c.targets, nil
}

// String keeps a Service out of logs as a whole.
func (s *Service) String() string { return fmt.Sprintf("oob.Service{state=%s}", s.cfg.StateDir) }
