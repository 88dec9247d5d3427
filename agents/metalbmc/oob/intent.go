package oob

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"sort"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/driver"
	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/journal"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Kinds of intents as the journal names them, in the order one machine's
// intents run: the boot device before the power action, so that "PXE and
// reset" boots PXE.
const (
	kindBoot     = "boot"
	kindIdentify = "identify"
	kindPower    = "power"
	kindFirmware = "firmware"
)

func kindOf(k string) agentv1.BmcIntentKind {
	switch k {
	case kindBoot:
		return agentv1.BmcIntentKind_BMC_INTENT_KIND_BOOT
	case kindIdentify:
		return agentv1.BmcIntentKind_BMC_INTENT_KIND_IDENTIFY
	case kindPower:
		return agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER
	case kindFirmware:
		return agentv1.BmcIntentKind_BMC_INTENT_KIND_FIRMWARE
	}
	return agentv1.BmcIntentKind_BMC_INTENT_KIND_UNSPECIFIED
}

// Outcomes as the journal records them.
const (
	outSucceeded   = "succeeded"
	outFailed      = "failed"
	outInterrupted = "interrupted"
)

func outcomeOf(s string) agentv1.BmcIntentOutcome {
	switch s {
	case outSucceeded:
		return agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED
	case outFailed:
		return agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_FAILED
	case outInterrupted:
		return agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_INTERRUPTED
	}
	return agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_UNSPECIFIED
}

// step is one intent of one machine to run.
type step struct {
	kind string
	gen  uint64
	// repeatable: running it twice leaves the machine as running it once
	// (a power state, a boot device, an LED), so an interrupted one runs
	// again; reset, cycle and firmware do not (docs/bmc.md).
	repeatable bool
	run        func(ctx context.Context, ep driver.Endpoint, c driver.Creds) error
	what       string
}

// steps lists m's intents in execution order.
func (s *Service) steps(m *machine) []step {
	var out []step
	if b := m.boot; b != nil {
		out = append(out, step{kind: kindBoot, gen: b.GetGeneration(), repeatable: true, what: bootWhat(b),
			run: func(ctx context.Context, ep driver.Endpoint, c driver.Creds) error {
				return s.drv.Boot(ctx, ep, c, b.GetDevice(), b.GetPersistent())
			}})
	}
	if l := m.identify; l != nil {
		out = append(out, step{kind: kindIdentify, gen: l.GetGeneration(), repeatable: true, what: fmt.Sprintf("identify on=%v", l.GetOn()),
			run: func(ctx context.Context, ep driver.Endpoint, c driver.Creds) error {
				return s.drv.Identify(ctx, ep, c, l.GetOn())
			}})
	}
	if p := m.power; p != nil {
		a := p.GetAction()
		out = append(out, step{kind: kindPower, gen: p.GetGeneration(), what: "power " + a.String(),
			repeatable: a == agentv1.BmcPowerAction_BMC_POWER_ACTION_ON || a == agentv1.BmcPowerAction_BMC_POWER_ACTION_OFF,
			run:        func(ctx context.Context, ep driver.Endpoint, c driver.Creds) error { return s.drv.Power(ctx, ep, c, a) }})
	}
	if f := m.firmware; f != nil {
		out = append(out, step{kind: kindFirmware, gen: f.GetGeneration(), what: "firmware " + f.GetComponent().String(),
			run: func(ctx context.Context, ep driver.Endpoint, c driver.Creds) error { return s.firmware(ctx, ep, c, f) }})
	}
	return out
}

// todo is what of st must run now: run it, or record it interrupted (a
// non-repeatable step found started by an earlier process), or nothing.
func (s *Service) todo(machineID string, st step) (run, interrupted bool) {
	rec, ok := s.journal.Get(journal.Key{Machine: machineID, Kind: st.kind})
	switch {
	case !ok || rec.Generation < st.gen:
		return true, false
	case rec.Generation > st.gen || rec.Phase == journal.Done:
		// Done, or the document went back (a generation never does):
		// nothing runs twice.
		return false, false
	case st.repeatable:
		return true, false
	}
	return false, true
}

// scheduleIntents starts the machines whose intents have something to do
// and whose BMC is known and reachable; the others are reported pending.
func (s *Service) scheduleIntents(ctx context.Context) {
	doc := s.currentDoc()
	byUUID := map[string]*target{}
	s.mu.Lock()
	// A BMC's reported UUID wins over another BMC's alias of the same.
	for _, t := range s.targets {
		for _, u := range t.fact.GetMachineUuidAliases() {
			byUUID[u] = t
		}
	}
	for _, t := range s.targets {
		if u := t.fact.GetMachineUuid(); u != "" {
			byUUID[u] = t
		}
	}
	s.mu.Unlock()
	pending := map[journal.Key]pendingIntent{}
	for _, m := range doc.machines {
		var work []step
		for _, st := range s.steps(m) {
			if run, interrupted := s.todo(m.id, st); run || interrupted {
				work = append(work, st)
			}
		}
		if len(work) == 0 {
			continue
		}
		var t *target
		s.mu.Lock()
		if m.bmc != nil {
			t = s.targets[m.bmc.Address]
		} else {
			t = byUUID[m.id]
		}
		why := ""
		switch {
		case t == nil:
			why = "the machine's BMC was not found yet"
		case t.fact == nil:
			why = "the machine's BMC was not polled yet"
		case !t.fact.GetReachable():
			why = "the machine's BMC is unreachable (" + t.fact.GetLastError() + "); waiting for it to answer a poll"
		case m.bmc != nil && !slices.Contains(machineNames(t.fact), m.id):
			why = fmt.Sprintf("the BMC at %s reports machine %s, not %s", t.Address, t.fact.GetMachineUuid(), m.id)
		}
		busy := s.running[m.id]
		if why != "" {
			for _, st := range work {
				pending[journal.Key{Machine: m.id, Kind: st.kind}] = pendingIntent{gen: st.gen, why: why}
			}
		}
		if why != "" || busy {
			s.mu.Unlock()
			continue
		}
		s.running[m.id] = true
		ep := driver.Endpoint{Address: t.Address, Protocol: t.Protocol}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.running, m.id)
				s.mu.Unlock()
				s.poke()
			}()
			select {
			case s.isem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-s.isem }()
			s.execute(ctx, m.id, ep, doc.creds, work)
		}()
	}
	s.mu.Lock()
	if !samePending(s.pending, pending) {
		s.changed = true
	}
	s.pending = pending
	s.mu.Unlock()
}

func samePending(a, b map[journal.Key]pendingIntent) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// execute runs one machine's steps in order, each journalled: "started"
// durably before the BMC is asked, "done" with the outcome after. A step
// whose journal line cannot be written does not run.
func (s *Service) execute(ctx context.Context, machineID string, ep driver.Endpoint, c driver.Creds, work []step) {
	for _, st := range work {
		k := journal.Key{Machine: machineID, Kind: st.kind}
		run, interrupted := s.todo(machineID, st)
		if interrupted {
			msg := fmt.Sprintf("%s (generation %d) was under way when metal-bmc stopped; it is not repeated, as running it twice is not the same as once: raise the generation to run it again", st.what, st.gen)
			s.finish(k, st, outInterrupted, msg)
			continue
		}
		if !run {
			continue
		}
		if err := s.journal.Start(k, st.gen); err != nil {
			s.log.Error("journal: intent not started", "machine", machineID, "intent", st.kind, "generation", st.gen, "err", err)
			return
		}
		s.log.Info("intent", "machine", machineID, "bmc", ep.Address, "intent", st.what, "generation", st.gen)
		start := time.Now()
		err := st.run(ctx, ep, c)
		s.metrics.intentSeconds.WithLabelValues(st.kind).Observe(time.Since(start).Seconds())
		if ctx.Err() != nil {
			// Stopped under way: whether the BMC acted is unknown, as
			// after a kill. The journal keeps "started"; the next start
			// decides (repeat it or report it interrupted).
			s.log.Warn("intent cut short by shutdown", "machine", machineID, "intent", st.kind, "generation", st.gen)
			return
		}
		if err != nil {
			s.finish(k, st, outFailed, err.Error())
			continue
		}
		s.finish(k, st, outSucceeded, "")
	}
}

// finish journals the outcome of a step, counts it, and tells central in
// an event about the machine and in the next facts.
func (s *Service) finish(k journal.Key, st step, outcome, msg string) {
	// The message may quote the BMC: made fit for a report first.
	msg = text(msg, maxError)
	if err := s.journal.Finish(k, st.gen, outcome, msg); err != nil {
		s.log.Error("journal: outcome not recorded", "machine", k.Machine, "intent", st.kind, "generation", st.gen, "err", err)
	}
	s.metrics.intents.WithLabelValues(st.kind, outcome).Inc()
	text := fmt.Sprintf("%s (generation %d) %s", st.what, st.gen, outcome)
	if msg != "" {
		text += ": " + msg
	}
	if outcome == outSucceeded {
		s.log.Info("intent done", "machine", k.Machine, "intent", st.what, "generation", st.gen)
	} else {
		s.log.Warn("intent "+outcome, "machine", k.Machine, "intent", st.what, "generation", st.gen, "err", msg)
	}
	s.mu.Lock()
	s.changed = true
	s.mu.Unlock()
	s.cfg.Report(nil, &agentv1.Event{Time: timestamppb.Now(), Type: "BMC " + st.kind + " " + outcome, Message: truncate(text, 4000), Subject: k.Machine})
}

// results are the journal's outcomes and the pending intents of the
// document's machines, sorted.
func (s *Service) results(doc *document, pending map[string][]*agentv1.BmcIntentResult) []*agentv1.BmcMachineResults {
	all := s.journal.All()
	var out []*agentv1.BmcMachineResults
	for _, m := range doc.machines {
		mr := &agentv1.BmcMachineResults{MachineId: m.id}
		waiting := map[agentv1.BmcIntentKind]bool{}
		for _, p := range pending[m.id] {
			mr.Results = append(mr.Results, p)
			waiting[p.Kind] = true
		}
		for _, kind := range []string{kindBoot, kindIdentify, kindPower, kindFirmware} {
			rec, ok := all[journal.Key{Machine: m.id, Kind: kind}]
			if !ok || waiting[kindOf(kind)] {
				continue
			}
			r := &agentv1.BmcIntentResult{Kind: kindOf(kind), Generation: rec.Generation, Message: rec.Message}
			if rec.Phase == journal.Done {
				r.Outcome, r.FinishedAt = outcomeOf(rec.Outcome), timestamppb.New(rec.Time)
			} else {
				// Started and under way (or cut short and about to be
				// decided on).
				r.Outcome = agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_PENDING
				r.Message = "under way"
			}
			mr.Results = append(mr.Results, r)
		}
		if len(mr.Results) > 0 {
			sort.Slice(mr.Results, func(i, j int) bool { return mr.Results[i].Kind < mr.Results[j].Kind })
			out = append(out, mr)
		}
	}
	return out
}

// firmwareDownload bounds the download of one firmware image.
const firmwareDownload = 30 * time.Minute

// firmware downloads the image (bounded, checked against its sha256 when
// given) into the state dir and hands it to the driver.
func (s *Service) firmware(ctx context.Context, ep driver.Endpoint, c driver.Creds, f *agentv1.BmcFirmwareIntent) error {
	// The download is bounded in time as the BMC calls are in size.
	dctx, cancel := context.WithTimeout(ctx, firmwareDownload)
	defer cancel()
	req, err := http.NewRequestWithContext(dctx, http.MethodGet, f.GetUrl(), nil)
	if err != nil {
		return fmt.Errorf("firmware image: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("firmware image: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("firmware image: %s answered %s", f.GetUrl(), resp.Status)
	}
	tmp, err := os.CreateTemp(s.cfg.StateDir, "firmware-*")
	if err != nil {
		return fmt.Errorf("firmware image: %w", err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), io.LimitReader(resp.Body, s.cfg.MaxFirmware+1))
	switch {
	case err != nil:
		return fmt.Errorf("firmware image: %w", err)
	case n > s.cfg.MaxFirmware:
		return fmt.Errorf("firmware image larger than %d bytes", s.cfg.MaxFirmware)
	case f.GetSha256() != "" && hex.EncodeToString(h.Sum(nil)) != f.GetSha256():
		return errors.New("firmware image: sha256 mismatch, nothing sent to the BMC")
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("firmware image: %w", err)
	}
	return s.drv.Firmware(ctx, ep, c, f.GetComponent(), tmp)
}

// bootWhat names a boot intent in logs and events.
func bootWhat(b *agentv1.BmcBootIntent) string {
	if b.GetPersistent() {
		return "boot " + b.GetDevice().String() + " (persistent)"
	}
	return "boot " + b.GetDevice().String()
}

// machineNames are the UUIDs a BMC's machine goes by: the one it reports
// and, for IPMI, the same GUID in the other byte orders (central names
// the machine by whichever the installer reported).
func machineNames(f *agentv1.BmcFact) []string {
	if f.GetMachineUuid() == "" {
		return nil
	}
	return append([]string{f.GetMachineUuid()}, f.GetMachineUuidAliases()...)
}
