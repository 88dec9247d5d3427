package oob

import (
	"context"
	"math/rand/v2"
	"sort"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/discover"
	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/driver"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// target is one BMC and what its polls found.
type target struct {
	discover.Target
	fact     *agentv1.BmcFact
	failures int
	next     time.Time // when it is polled next
	polling  bool
	seen     bool // in the last refresh
}

// refresh merges the document's static BMCs, the machines' own BMC
// addresses and the leases into the targets; BMCs no longer listed are
// forgotten (their facts with them).
func (s *Service) refresh(_ context.Context) {
	doc := s.currentDoc()
	static := append([]discover.Target(nil), doc.static...)
	for _, m := range doc.machines {
		if m.bmc != nil {
			static = append(static, *m.bmc)
		}
	}
	leased, err := s.leases(doc)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		if msg := err.Error(); msg != s.leaseErr {
			s.log.Error("lease file", "file", s.cfg.LeaseFile, "err", err)
			s.leaseErr = msg
		}
		// Keep the leased BMCs known so far rather than forget them all
		// because of one unreadable file.
		for _, t := range s.targets {
			if t.Source == discover.Lease {
				leased = append(leased, t.Target)
			}
		}
	} else {
		s.leaseErr = ""
	}
	all := discover.Merge(static, leased)
	for _, t := range s.targets {
		t.seen = false
	}
	now := time.Now()
	for _, d := range all {
		t, ok := s.targets[d.Address]
		if !ok {
			t = &target{Target: d, next: now}
			s.targets[d.Address] = t
			s.changed = true
		}
		t.Target, t.seen = d, true
	}
	for a, t := range s.targets {
		if !t.seen && !t.polling {
			delete(s.targets, a)
			s.changed = true
		}
	}
	down := 0
	for _, t := range s.targets {
		if t.fact != nil && !t.fact.GetReachable() {
			down++
		}
	}
	s.metrics.targets.Set(float64(len(s.targets)))
	s.metrics.unreachable.Set(float64(down))
}

// schedulePolls starts a poll of every due target; at most Parallel run
// at once, the others wait for a slot in their own goroutine.
func (s *Service) schedulePolls(ctx context.Context) {
	doc := s.currentDoc()
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, t := range s.targets {
		if t.polling || now.Before(t.next) {
			continue
		}
		t.polling = true
		tg := t.Target
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			select {
			case s.psem <- struct{}{}:
			case <-ctx.Done():
				s.mu.Lock()
				t.polling = false
				s.mu.Unlock()
				return
			}
			defer func() { <-s.psem }()
			s.poll(ctx, doc, t, tg)
		}()
	}
}

// poll reads one BMC and records the outcome.
func (s *Service) poll(ctx context.Context, doc *document, t *target, tg discover.Target) {
	start := time.Now()
	f, err := s.drv.Facts(ctx, driver.Endpoint{Address: tg.Address, Protocol: tg.Protocol}, doc.creds)
	s.metrics.pollSeconds.Observe(time.Since(start).Seconds())
	if ctx.Err() != nil {
		s.mu.Lock()
		t.polling = false
		s.mu.Unlock()
		return
	}
	interval := s.cfg.PollInterval
	if doc.pollInterval > 0 {
		interval = doc.pollInterval
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	t.polling = false
	old := t.fact
	nf := &agentv1.BmcFact{Address: tg.Address, Protocol: tg.Protocol, Source: tg.Source, Mac: tg.MAC}
	if old != nil {
		nf = proto.Clone(old).(*agentv1.BmcFact)
		nf.Address, nf.Protocol, nf.Source, nf.Mac = tg.Address, tg.Protocol, tg.Source, tg.MAC
	}
	now := time.Now()
	if err != nil {
		s.metrics.polls.WithLabelValues("error").Inc()
		t.failures++
		t.next = now.Add(s.backoff(t.failures))
		nf.Reachable, nf.LastError, nf.Failures = false, text(err.Error(), maxError), uint32(t.failures)
		if t.failures == 1 || old == nil || old.GetLastError() != nf.LastError {
			s.log.Warn("BMC unreachable", "address", tg.Address, "failures", t.failures, "retry_in", t.next.Sub(now).Round(time.Millisecond), "err", err)
		}
	} else {
		s.metrics.polls.WithLabelValues("ok").Inc()
		if t.failures > 0 {
			s.log.Info("BMC reachable again", "address", tg.Address, "uuid", f.UUID, "after_failures", t.failures)
		}
		t.failures = 0
		t.next = now.Add(interval)
		nf.MachineUuid, nf.Vendor, nf.Model, nf.Serial = text(f.UUID, maxText), text(f.Vendor, maxText), text(f.Model, maxText), text(f.Serial, maxText)
		nf.MachineUuidAliases = nil
		for i, a := range f.UUIDAliases {
			if i == maxAliases {
				break
			}
			nf.MachineUuidAliases = append(nf.MachineUuidAliases, text(a, maxText))
		}
		nf.BmcVersion, nf.BiosVersion, nf.PowerState, nf.PowerWatts = text(f.BMCVersion, maxText), text(f.BIOSVersion, maxText), f.Power, f.Watts
		nf.PowerSupplies, nf.IdentifyLed = nil, f.LED
		for i, p := range f.PSUs {
			if i == maxPSUs {
				break
			}
			nf.PowerSupplies = append(nf.PowerSupplies, &agentv1.BmcPowerSupply{Id: text(p.GetId(), maxText), Health: text(p.GetHealth(), maxText), CapacityWatts: p.GetCapacityWatts()})
		}
		nf.Reachable, nf.LastError, nf.Failures = true, "", 0
		nf.LastSeen = timestamppb.New(now)
	}
	nf.NextPoll = timestamppb.New(t.next)
	if !sameFact(old, nf) {
		s.changed = true
	}
	t.fact = nf
}

// Bounds of what a BMC says, so that one broken or hostile BMC cannot
// make the partition's report too large or unstorable.
const (
	maxText  = 256
	maxError = 1024
	maxPSUs  = 16
	// maxAliases: a GUID has three byte orders, two besides the reported.
	maxAliases = 2
)

// text makes a string a BMC returned fit for a report: valid UTF-8 (proto
// refuses anything else, which would drop the whole report), no NUL or
// other control characters (central refuses a NUL: PostgreSQL cannot
// store it), at most n bytes.
func text(s string, n int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			if r == '\n' || r == '\t' {
				return ' '
			}
			return -1
		}
		return r
	}, s)
	if len(s) > n {
		s = s[:n]
		s = strings.ToValidUTF8(s, "")
	}
	return s
}

// backoff is how long to wait after n failures in a row: MinBackoff
// doubling up to MaxBackoff, with equal jitter so that a rack that went
// away together is not polled again together.
func (s *Service) backoff(n int) time.Duration {
	d := s.cfg.MinBackoff
	for i := 1; i < n && d < s.cfg.MaxBackoff; i++ {
		d *= 2
	}
	d = min(d, s.cfg.MaxBackoff)
	return d/2 + rand.N(d/2+1)
}

// sameFact compares facts without the times every poll moves and the
// power draw, which follows the machine's load all the time: a change is
// what central should hear about at once; the draw goes with the periodic
// report.
func sameFact(a, b *agentv1.BmcFact) bool {
	if a == nil || b == nil {
		return a == b
	}
	a, b = proto.Clone(a).(*agentv1.BmcFact), proto.Clone(b).(*agentv1.BmcFact)
	a.LastSeen, a.NextPoll, b.LastSeen, b.NextPoll = nil, nil, nil, nil
	a.PowerWatts, b.PowerWatts = 0, 0
	return proto.Equal(a, b)
}

// Facts returns what metal-bmc knows now: every BMC, sorted by address,
// and the intent results of the document's machines.
func (s *Service) Facts() *agentv1.BmcFacts {
	doc := s.currentDoc()
	s.mu.Lock()
	out := &agentv1.BmcFacts{}
	for _, t := range s.targets {
		if t.fact != nil {
			out.Bmcs = append(out.Bmcs, proto.Clone(t.fact).(*agentv1.BmcFact))
		} else {
			out.Bmcs = append(out.Bmcs, &agentv1.BmcFact{Address: t.Address, Protocol: t.Protocol, Source: t.Source, Mac: t.MAC})
		}
	}
	pending := make(map[string][]*agentv1.BmcIntentResult)
	for k, p := range s.pending {
		pending[k.Machine] = append(pending[k.Machine], &agentv1.BmcIntentResult{Kind: kindOf(k.Kind), Generation: p.gen, Outcome: agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_PENDING, Message: p.why})
	}
	s.mu.Unlock()
	sort.Slice(out.Bmcs, func(i, j int) bool { return out.Bmcs[i].Address < out.Bmcs[j].Address })
	out.Machines = s.results(doc, pending)
	return out
}

// maybeReport reports the facts when they changed, when ReportInterval
// passed, or when forced.
func (s *Service) maybeReport(force bool) {
	s.mu.Lock()
	due := force || s.changed || time.Since(s.lastReport) >= s.cfg.ReportInterval
	if due {
		s.changed = false
		s.lastReport = time.Now()
	}
	s.mu.Unlock()
	if !due {
		return
	}
	f := &agentv1.Facts{}
	if s.cfg.Base != nil {
		if b := s.cfg.Base(); b != nil {
			f = proto.Clone(b).(*agentv1.Facts)
		}
	}
	f.Bmc = s.Facts()
	s.metrics.reports.Inc()
	s.cfg.Report(f)
}
