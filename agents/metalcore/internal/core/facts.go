package core

import (
	"bufio"
	"context"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/agents/metalcore/internal/frr"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// factState is what metal-core last told central, and what it knows of
// BGP between polls.
type factState struct {
	mu       sync.Mutex
	reported *agentv1.Facts
	// sessions are the last BGP sessions read, under SONiC's port names.
	sessions []*agentv1.BgpSessionFact
	// wake asks the facts loop to look again (a notification, a BGP
	// change).
	wake chan struct{}
}

func (f *factState) init() { f.wake = make(chan struct{}, 1) }

func (f *factState) poke() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// collect reads every fact now: the host's, the switch's, and the BGP
// sessions of the last poll.
func (c *Core) collect(ctx context.Context) (*agentv1.Facts, error) {
	f, _ := agent.HostFacts(c.cfg.Version)(ctx)
	if f == nil {
		f = &agentv1.Facts{AgentVersion: c.cfg.Version}
	}
	ports, naming, err := c.sw.Ports(ctx, c.schema)
	if err != nil {
		return nil, err
	}
	dev, err := c.sw.Device(ctx)
	if err != nil {
		return nil, err
	}
	sf := &agentv1.SwitchFacts{Name: dev.Hostname, NamingSchema: string(c.schema), Ports: ports, SonicVersion: sonicVersion(c.cfg.SONiCVersionFile), Rack: c.cfg.Rack, Uplinks: c.cfg.Uplinks}
	if sf.Name == "" {
		sf.Name = c.cfg.Name
	}
	if dev.ManagementAddress.IsValid() {
		sf.ManagementAddress = dev.ManagementAddress.String()
	} else {
		sf.ManagementAddress = interfaceAddress(c.cfg.ManagementInterface)
	}
	c.facts.mu.Lock()
	for _, s := range c.facts.sessions {
		s = proto.CloneOf(s)
		s.Port = naming.Name(s.Port)
		sf.BgpSessions = append(sf.BgpSessions, s)
	}
	c.facts.mu.Unlock()
	f.Switch = sf
	return f, nil
}

// reportFacts is the runtime's Facts: what goes into hello and into the
// answer to a report-facts intent. What it returns counts as reported.
func (c *Core) reportFacts(ctx context.Context) (*agentv1.Facts, error) {
	f, err := c.collect(ctx)
	if err != nil {
		c.metrics.fail(opFacts)
		return nil, err
	}
	c.facts.mu.Lock()
	c.facts.reported = f
	c.facts.mu.Unlock()
	return f, nil
}

// factsLoop reports the facts whenever they change: woken by keyspace
// notifications and BGP changes, and by a slow poll that stands in for
// notifications that are lost or not available.
func (c *Core) factsLoop(ctx context.Context) {
	poll := time.NewTicker(c.cfg.FactsPoll)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
		case <-c.facts.wake:
			// A change rarely comes alone (a port going up writes
			// several tables): let the burst settle.
			if !agent.Sleep(ctx, 200*time.Millisecond) {
				return
			}
		}
		f, err := c.collect(ctx)
		if err != nil {
			if ctx.Err() == nil {
				c.metrics.fail(opFacts)
				c.log.Warn("collect facts", "err", err)
			}
			continue
		}
		c.facts.mu.Lock()
		same := proto.Equal(f, c.facts.reported)
		if !same {
			c.facts.reported = f
		}
		c.facts.mu.Unlock()
		if same {
			continue
		}
		c.metrics.reported()
		c.log.Debug("facts changed; reporting", "ports", len(f.GetSwitch().GetPorts()), "bgp_sessions", len(f.GetSwitch().GetBgpSessions()))
		c.agent.Emit(f)
	}
}

// bgpLoop reads FRR's BGP sessions every BGPPoll and wakes the facts loop
// when they changed.
func (c *Core) bgpLoop(ctx context.Context) {
	failing := false
	bgp := frr.BGP{VTY: frr.VTY{Dir: c.cfg.VTYDir}, Vtysh: c.cfg.Vtysh, Runner: c.runner}
	lastVia := ""
	for {
		s, via, err := bgp.Sessions(ctx)
		if err == nil && via != lastVia {
			c.log.Info("reading BGP sessions", "via", via, "vty_dir", c.cfg.VTYDir)
			lastVia = via
		}
		switch {
		case err != nil && ctx.Err() == nil:
			c.metrics.fail(opBGP)
			if !failing {
				// Logged once per outage: bgpd restarting is no news
				// every few seconds.
				c.log.Warn("read BGP sessions", "err", err)
			}
			failing = true
		case err == nil:
			failing = false
			c.facts.mu.Lock()
			changed := !equalSessions(s, c.facts.sessions)
			c.facts.sessions = s
			c.facts.mu.Unlock()
			if changed {
				c.facts.poke()
			}
		}
		if !agent.Sleep(ctx, c.cfg.BGPPoll) {
			return
		}
	}
}

func equalSessions(a, b []*agentv1.BgpSessionFact) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !proto.Equal(a[i], b[i]) {
			return false
		}
	}
	return true
}

// sonicVersion reads build_version from SONiC's sonic_version.yml, a flat
// YAML file ("build_version: 'SONiC.202311.0'"); "" when there is none.
func sonicVersion(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "build_version" {
			return strings.Trim(strings.TrimSpace(v), `'"`)
		}
	}
	return ""
}

// interfaceAddress is the first IPv4 (else global IPv6) address of an
// interface; "" when it has none.
func interfaceAddress(name string) string {
	ifi, err := net.InterfaceByName(name)
	if err != nil {
		return ""
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return ""
	}
	v6 := ""
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLinkLocalUnicast() {
			continue
		}
		if ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
		if v6 == "" {
			v6 = ipn.IP.String()
		}
	}
	return v6
}
