// Package core assembles metal-core, the agent on every leaf switch (kind
// switch): it applies the switch's desired document to SONiC's CONFIG_DB
// and FRR's frr.conf, and reports the switch's ports, LLDP neighbours and
// BGP sessions to central whenever they change.
//
// Fail-static: the agent runtime keeps the last desired document on disk
// and applies it at start, before and regardless of reaching central. A
// re-apply of the document already in effect writes nothing, so a restart
// while central is away leaves the switch as it is.
package core

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/agents/metalcore/internal/frr"
	"github.com/metalfleet/metalfleet/agents/metalcore/internal/relay"
	"github.com/metalfleet/metalfleet/agents/metalcore/internal/sonic"
	"github.com/metalfleet/metalfleet/agents/metalcore/internal/spec"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Config of one metal-core.
type Config struct {
	// Name is the agent identity, as enrolled with `metalctl agent enroll
	// --kind switch --identity <name>`.
	Name     string
	Centrals []string
	// TLS pins central's CA; nil is plaintext.
	TLS *tls.Config
	// Token is the agent credential; empty: the one in StateDir.
	Token string
	// StateDir keeps the credential and the last desired document.
	StateDir string
	// Version is reported as agent_version.
	Version string

	// DBConfig is SONiC's database_config.json.
	DBConfig string
	// NamingSchema: default, swap, name or alias (sonic.Schema).
	NamingSchema string
	// ASICTimeout bounds the wait for the ASIC to let go of a port
	// (only where ASIC_DB has entries).
	ASICTimeout time.Duration

	// FRRFile is the live frr.conf; FRRTemplate a template file replacing
	// the built-in one.
	FRRFile     string
	FRRTemplate string
	// FRRValidate and FRRReload are the check and reload commands
	// (frr.DefaultValidate, frr.DefaultReload); "{file}" is the file.
	FRRValidate, FRRReload []string
	// VTYDir holds FRR's vty sockets, where bgpd is asked for the BGP
	// sessions ("" : through Vtysh only).
	VTYDir string
	// Vtysh is FRR's shell, for the BGP sessions when bgpd's socket cannot
	// be reached.
	Vtysh string
	// Runner runs vtysh and the reload (default: real processes).
	Runner frr.Runner

	// SONiCVersionFile holds build_version (/etc/sonic/sonic_version.yml).
	SONiCVersionFile string
	// ManagementInterface is where the management address is read when
	// CONFIG_DB's MGMT_INTERFACE has none.
	ManagementInterface string
	// Rack is the rack the switch stands in, reported with its facts;
	// central puts the machines linked to the switch in it.
	Rack string
	// Uplinks are the ports to the spines (as metal-stack's
	// SPINE_UPLINKS), reported with the facts: central makes them uplinks
	// in the switch's document.
	Uplinks []string

	// RelayPort is the port of the agent relay on each tenant port's
	// link-local address (docs/network.md, "The agent relay"); 0 turns
	// the relay off. RelayPerPort bounds a port's open connections.
	RelayPort, RelayPerPort int

	// FactsPoll is the slow poll of ports and LLDP behind the keyspace
	// notifications (default 30s); BGPPoll how often FRR is asked for
	// its sessions (default 5s); Resync how often the document in effect
	// is applied again, which heals drift and writes nothing otherwise
	// (default 60s; a failed apply is retried sooner, with backoff).
	FactsPoll, BGPPoll, Resync time.Duration

	Log *slog.Logger
	// LogLevel follows the document's settings.log_level when set.
	LogLevel *slog.LevelVar
	// Registry gets the metrics (default: a new one).
	Registry *prometheus.Registry
	// AgentBackoff bounds the agent's reconnect delay (tests).
	AgentBackoff time.Duration
}

// Core is a running metal-core.
type Core struct {
	cfg     Config
	log     *slog.Logger
	sw      *sonic.Switch
	schema  sonic.Schema
	tpl     *frr.Template
	frr     *frr.Applier
	runner  frr.Runner
	agent   *agent.Agent
	metrics *metrics
	reg     *prometheus.Registry

	// mu serialises applies: the runtime's and the resync's.
	mu      sync.Mutex
	last    *agentv1.Desired
	failing bool
	// changed tells the resync loop that an apply failed or recovered.
	changed chan struct{}

	facts factState
	relay *relay.Relay
}

// New checks cfg and opens the switch's databases (connections are made on
// first use, so New does not wait for SONiC's Redis).
func New(cfg Config) (*Core, error) {
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Name == "" {
		return nil, errors.New("core: name required")
	}
	if cfg.DBConfig == "" {
		cfg.DBConfig = sonic.DefaultDBConfig
	}
	if cfg.FRRFile == "" {
		cfg.FRRFile = "/etc/sonic/frr/frr.conf"
	}
	if cfg.SONiCVersionFile == "" {
		cfg.SONiCVersionFile = "/etc/sonic/sonic_version.yml"
	}
	if cfg.ManagementInterface == "" {
		cfg.ManagementInterface = "eth0"
	}
	if cfg.FactsPoll <= 0 {
		cfg.FactsPoll = 30 * time.Second
	}
	if cfg.BGPPoll <= 0 {
		cfg.BGPPoll = 5 * time.Second
	}
	if cfg.Resync <= 0 {
		cfg.Resync = time.Minute
	}
	if cfg.Runner == nil {
		cfg.Runner = frr.Exec{}
	}
	if cfg.Registry == nil {
		cfg.Registry = agent.NewRegistry()
	}
	schema, err := sonic.ParseSchema(cfg.NamingSchema)
	if err != nil {
		return nil, fmt.Errorf("core: %w", err)
	}
	var tplText string
	if cfg.FRRTemplate != "" {
		b, err := os.ReadFile(cfg.FRRTemplate)
		if err != nil {
			return nil, fmt.Errorf("core: %w", err)
		}
		tplText = string(b)
	}
	tpl, err := frr.ParseTemplate(tplText)
	if err != nil {
		return nil, fmt.Errorf("core: %w", err)
	}
	applier, err := frr.NewApplier(frr.Config{File: cfg.FRRFile, Validate: cfg.FRRValidate, Reload: cfg.FRRReload, Runner: cfg.Runner})
	if err != nil {
		return nil, fmt.Errorf("core: %w", err)
	}
	dbc, err := sonic.LoadDBConfig(cfg.DBConfig)
	if err != nil {
		return nil, fmt.Errorf("core: %w", err)
	}
	opts := []sonic.Option{sonic.WithLogger(cfg.Log.With("part", "sonic"))}
	if cfg.ASICTimeout > 0 {
		opts = append(opts, sonic.WithASICTimeout(cfg.ASICTimeout))
	}
	sw, err := sonic.Open(dbc, opts...)
	if err != nil {
		return nil, fmt.Errorf("core: %w", err)
	}
	c := &Core{cfg: cfg, log: cfg.Log, sw: sw, schema: schema, tpl: tpl, frr: applier, runner: cfg.Runner, reg: cfg.Registry, changed: make(chan struct{}, 1)}
	c.metrics = newMetrics(c.reg)
	if cfg.RelayPort > 0 {
		// The relay forwards to the endpoints metal-core itself uses.
		c.relay, err = relay.New(relay.Config{Port: cfg.RelayPort, PerPort: cfg.RelayPerPort, Upstreams: cfg.Centrals,
			Log: cfg.Log.With("part", "relay"), Metrics: relay.NewMetrics(c.reg)})
		if err != nil {
			sw.Close()
			return nil, fmt.Errorf("core: %w", err)
		}
	}
	c.facts.init()
	backoff := cfg.AgentBackoff
	c.agent, err = agent.New(agent.Config{
		Kind: agentv1.Kind_KIND_SWITCH, Identity: cfg.Name, Centrals: cfg.Centrals, TLS: cfg.TLS, Token: cfg.Token,
		StateDir: cfg.StateDir, Reconciler: c, Facts: c.reportFacts, Log: c.log.With("part", "agent"),
		LogLevel: cfg.LogLevel, Metrics: agent.NewMetrics(c.reg), MinBackoff: backoff / 4, MaxBackoff: backoff,
	})
	if err != nil {
		sw.Close()
		return nil, fmt.Errorf("core: %w", err)
	}
	return c, nil
}

// Registry is where the metrics are registered (served on /metrics).
func (c *Core) Registry() *prometheus.Registry { return c.reg }

// Agent is the fleet agent (its applied revision, connection state).
func (c *Core) Agent() *agent.Agent { return c.agent }

// Apply implements agent.Reconciler: CONFIG_DB first, then frr.conf.
func (c *Core) Apply(ctx context.Context, d *agentv1.Desired) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last = d
	err := c.sync(ctx, d.GetSwitch())
	if c.failing != (err != nil) {
		c.failing = err != nil
		select {
		case c.changed <- struct{}{}:
		default:
		}
	}
	return err
}

// sync applies one switch document. A document that fails its checks
// changes nothing; otherwise both parts are applied, each collecting its
// errors, so that a bad port or a refused frr.conf blocks nothing else.
func (c *Core) sync(ctx context.Context, doc *agentv1.SwitchDocument) error {
	start := time.Now()
	defer func() { c.metrics.observe("total", time.Since(start).Seconds()) }()
	naming, err := c.sw.Naming(ctx, c.schema)
	if err != nil {
		c.metrics.fail(opSONiC)
		return fmt.Errorf("read ports: %w", err)
	}
	sp, err := spec.Build(doc, naming.Resolve)
	if err != nil {
		c.metrics.fail(opDocument)
		return err
	}
	var errs []error
	for _, name := range slices.Sorted(mapKeys(sp.Bad)) {
		errs = append(errs, fmt.Errorf("port %s: %w", name, sp.Bad[name]))
	}
	res, err := c.sw.Apply(ctx, sp)
	c.metrics.observe("sonic", res.Duration.Seconds())
	c.metrics.wrote(res.Writes)
	if err != nil {
		c.metrics.fail(opSONiC)
		errs = append(errs, fmt.Errorf("CONFIG_DB: %w", err))
	}
	fstart := time.Now()
	changed, err := c.applyFRR(ctx, sp)
	c.metrics.observe("frr", time.Since(fstart).Seconds())
	if err != nil {
		c.metrics.fail(opFRR)
		errs = append(errs, err)
	}
	if changed {
		c.metrics.reloaded()
	}
	if c.relay != nil {
		// After the ports moved: a tenant port is in its VRF now, with
		// its link-local address.
		var tenant []string
		for _, p := range sp.Ports {
			if p.Role == agentv1.SwitchPortRole_SWITCH_PORT_ROLE_TENANT {
				tenant = append(tenant, p.Name)
			}
		}
		if err := c.relay.Set(ctx, tenant); err != nil {
			errs = append(errs, err)
		}
	}
	c.log.Debug("switch document applied", "writes", res.Writes, "frr_reloaded", changed, "ports", len(sp.Ports), "vrfs", len(sp.VRFs), "took", time.Since(start))
	if res.Writes > 0 || changed {
		c.log.Info("switch changed", "configdb_writes", res.Writes, "frr_reloaded", changed, "took", time.Since(start))
	}
	return errors.Join(errs...)
}

func (c *Core) applyFRR(ctx context.Context, sp *spec.Spec) (bool, error) {
	conf, err := c.tpl.Render(sp)
	if err != nil {
		return false, err
	}
	if err := os.MkdirAll(filepath.Dir(c.frr.File()), 0o755); err != nil {
		return false, fmt.Errorf("frr: %w", err)
	}
	return c.frr.Apply(ctx, conf)
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// Run runs the agent, the watch of the switch's state, the BGP poll and
// the resync until ctx ends. It returns the agent's error (central
// refusing the agent) or nil.
func (c *Core) Run(ctx context.Context) error {
	defer c.sw.Close()
	if c.relay != nil {
		defer c.relay.Close()
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, part := range []func(context.Context){c.watch, c.factsLoop, c.bgpLoop, c.resyncLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			part(ctx)
		}()
	}
	err := c.agent.Run(ctx)
	cancel()
	wg.Wait()
	return err
}

// resyncLoop applies the document in effect again every Resync, and
// retries a failed apply sooner (1s doubling up to Resync): the runtime
// only applies documents when they come.
func (c *Core) resyncLoop(ctx context.Context) {
	retry := time.Second
	for {
		c.mu.Lock()
		failing := c.failing
		c.mu.Unlock()
		wait := c.cfg.Resync
		if failing {
			wait = min(retry, c.cfg.Resync)
			retry = min(2*retry, c.cfg.Resync)
		} else {
			retry = time.Second
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-c.changed:
			// An apply of the runtime failed or recovered: wait anew.
			t.Stop()
			continue
		case <-t.C:
		}
		c.mu.Lock()
		d, was := c.last, c.failing
		if d == nil {
			c.mu.Unlock()
			continue
		}
		err := c.sync(ctx, d.GetSwitch())
		c.failing = err != nil
		c.mu.Unlock()
		switch {
		case err != nil && ctx.Err() == nil:
			c.log.Warn("resync failed", "revision", d.GetRevision(), "err", err)
		case err == nil && was:
			c.log.Info("switch converged after a failed apply", "revision", d.GetRevision())
			c.agent.Emit(nil, &agentv1.Event{Time: timestamppb.Now(), Type: "Synced",
				Message: fmt.Sprintf("revision %d applied after a failed attempt", d.GetRevision())})
		}
	}
}
