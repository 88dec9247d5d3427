// Package phonehome is metal-phonehome, the agent in every installed OS: it
// tells central "Phoned Home" once per allocation, keeps the machine alive
// in central's eyes through the shared agent runtime's stream, and reboots
// the machine into PXE when the machine document's reboot_generation grows
// (that is how free and reinstall take a machine back).
//
// Decisions:
//   - "Phoned Home" is sent once per allocation id: for the id in the
//     installer's record (/etc/metal/install.json) at start, so that it goes
//     out on the first connect even before any document, and for every new
//     allocation id a document brings. The id is remembered in the state
//     dir only after the event went out on a stream (at least once).
//   - The reboot generation baseline is the one the installer recorded,
//     when /etc/metal/install.json is a MachineDocument; otherwise the one
//     in the first machine document seen. A freshly installed machine thus
//     never reboots for an order older than its installation.
//   - A reboot order reports "Planned Reboot", waits at most FlushTimeout
//     for it to go out, records the generation and reboots. A document
//     that orders a reboot does not make the machine phone home.
package phonehome

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/agents/agent"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Event types the phone-home reports (the provisioning contract).
const (
	EventPhonedHome    = "Phoned Home"
	EventPlannedReboot = "Planned Reboot"
)

// DefaultFlushTimeout bounds how long a reboot waits for "Planned Reboot"
// to reach central: a machine that was freed must go back even when
// central is unreachable.
const DefaultFlushTimeout = 10 * time.Second

// Rebooter restarts the machine. The real one does not return on success.
type Rebooter interface {
	Reboot(ctx context.Context) error
}

// Options configure a Phonehome.
type Options struct {
	File *File
	// StateDir keeps the runtime's credential and document cache and the
	// phone-home's own state (/var/lib/metal-phonehome).
	StateDir string
	// InstallFile is the installer's record (/etc/metal/install.json);
	// empty or missing: none.
	InstallFile string
	Version     string
	Rebooter    Rebooter
	Log         *slog.Logger
	// LogLevel, when set, follows the document's settings.log_level.
	LogLevel *slog.LevelVar
	// Metrics and AgentMetrics may be nil.
	Metrics      *Metrics
	AgentMetrics *agent.Metrics
	// FlushTimeout defaults to DefaultFlushTimeout.
	FlushTimeout time.Duration
	// Facts default to agent.HostFacts(Version).
	Facts func(ctx context.Context) (*agentv1.Facts, error)
	// Hostname and Uptime describe the system in "Phoned Home"; they
	// default to os.Hostname and /proc/uptime.
	Hostname func() (string, error)
	Uptime   func() (time.Duration, error)
	// RoutesFile is the kernel's IPv6 routing table, where the leaves'
	// relays are found (default /proc/net/ipv6_route).
	RoutesFile string
	// MinBackoff, MaxBackoff and DialOptions go to the runtime.
	MinBackoff, MaxBackoff time.Duration
	DialOptions            []grpc.DialOption
}

// Phonehome is one running phone-home agent.
type Phonehome struct {
	opts      Options
	log       *slog.Logger
	agent     *agent.Agent
	installed Installed

	mu sync.Mutex
	st *state
	// runCtx and wg belong to Run: goroutines started on behalf of a
	// document outlive the stream that brought it, not the process.
	runCtx context.Context
	wg     *sync.WaitGroup
	// pending are allocation ids whose "Phoned Home" was emitted but not
	// yet known to be sent.
	pending map[string]bool
	// rebootWanted is the newest generation a reboot was asked for;
	// rebootWake tells the rebooting goroutine.
	rebootWanted uint64
	rebootWake   chan struct{}
}

// New loads the state and prepares the agent; Run starts it.
func New(opts Options) (*Phonehome, error) {
	if opts.File == nil {
		return nil, errors.New("phonehome: config required")
	}
	if opts.Rebooter == nil {
		return nil, errors.New("phonehome: rebooter required")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.FlushTimeout <= 0 {
		opts.FlushTimeout = DefaultFlushTimeout
	}
	if opts.RoutesFile == "" {
		opts.RoutesFile = "/proc/net/ipv6_route"
	}
	if opts.Facts == nil {
		opts.Facts = agent.HostFacts(opts.Version)
	}
	if opts.Hostname == nil {
		opts.Hostname = os.Hostname
	}
	if opts.Uptime == nil {
		opts.Uptime = procUptime
	}
	p := &Phonehome{opts: opts, log: opts.Log, pending: map[string]bool{}, rebootWake: make(chan struct{}, 1)}
	st, err := loadState(opts.StateDir)
	switch {
	case errors.Is(err, errDamagedState):
		p.log.Warn("phone-home state", "err", err)
	case err != nil:
		return nil, err
	}
	p.st = st
	if p.installed, err = ReadInstalled(opts.InstallFile); err != nil {
		// The record only helps; the documents from central are the truth.
		p.log.Warn("ignoring install record", "err", err)
	}
	if p.st.RebootGeneration == nil && p.installed.RebootGeneration != nil {
		// The generation at install time is the baseline: a free ordered
		// between install and the first contact still reboots.
		gen := *p.installed.RebootGeneration
		p.st.RebootGeneration = &gen
		if err := p.st.save(opts.StateDir); err != nil {
			return nil, err
		}
	}
	p.opts.Metrics.setGeneration(p.st.RebootGeneration)
	a, err := agent.New(agent.Config{
		Kind:     agentv1.Kind_KIND_PHONEHOME,
		Identity: opts.File.MachineID,
		Centrals: opts.File.Centrals,
		// Read again before every attempt: the leaves' router
		// advertisements (and so their relays) may come after the start,
		// and a restarted leaf comes back with its relay.
		Endpoints:   func() []string { return opts.File.Endpoints(opts.RoutesFile) },
		TLS:         opts.File.TLS(),
		Token:       opts.File.Token,
		StateDir:    opts.StateDir,
		Reconciler:  agent.ReconcilerFunc(p.apply),
		Facts:       opts.Facts,
		Log:         opts.Log,
		LogLevel:    opts.LogLevel,
		Metrics:     opts.AgentMetrics,
		MinBackoff:  opts.MinBackoff,
		MaxBackoff:  opts.MaxBackoff,
		DialOptions: opts.DialOptions,
	})
	if err != nil {
		return nil, fmt.Errorf("phonehome: %w", err)
	}
	p.agent = a
	return p, nil
}

// Agent is the runtime underneath (connection state, Flush).
func (p *Phonehome) Agent() *agent.Agent { return p.agent }

// Run holds the stream to central until ctx ends. It returns nil when ctx
// ends and an error when central refuses the machine's credential.
func (p *Phonehome) Run(ctx context.Context) error {
	parent := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	p.mu.Lock()
	p.runCtx, p.wg = ctx, &wg
	if id := p.installed.AllocationID; id != "" {
		// Before any document: the system installed for this allocation is
		// up, whether or not central can be reached yet. The outbox sends
		// it on the first connect.
		p.phoneHomeLocked(id)
	}
	p.mu.Unlock()
	wg.Go(func() { p.rebootLoop(ctx, parent) })
	err := p.agent.Run(ctx)
	cancel()
	return err
}

// apply is the Reconciler: it only decides and signals, as it runs on the
// stream's goroutine and Flush needs that goroutine to send.
func (p *Phonehome) apply(_ context.Context, d *agentv1.Desired) error {
	md := d.GetMachine()
	if md == nil {
		// No machine document (yet): nothing to decide, and no baseline —
		// a later real generation must not look like a reboot order.
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	gen := md.GetRebootGeneration()
	if p.st.RebootGeneration == nil {
		p.st.RebootGeneration = &gen
		p.log.Info("reboot generation baseline", "generation", gen)
		p.opts.Metrics.setGeneration(&gen)
		if err := p.st.save(p.opts.StateDir); err != nil {
			return err
		}
	}
	if gen > *p.st.RebootGeneration {
		// A machine about to go back to PXE does not phone home for the
		// allocation that replaces its installation.
		if gen > p.rebootWanted {
			p.rebootWanted = gen
			select {
			case p.rebootWake <- struct{}{}:
			default:
			}
		}
		return nil
	}
	if id := md.GetAllocation().GetId(); id != "" {
		p.phoneHomeLocked(id)
	}
	return nil
}

// phoneHomeLocked emits "Phoned Home" for an allocation once, and records
// it once the event went out, so that a restart before that sends it again.
func (p *Phonehome) phoneHomeLocked(id string) {
	if p.st.phonedHome(id) || p.pending[id] {
		return
	}
	p.pending[id] = true
	p.agent.Emit(nil, &agentv1.Event{Time: timestamppb.Now(), Type: EventPhonedHome, Message: p.describe(id)})
	p.opts.Metrics.phonedHome()
	p.log.Info("phoned home", "allocation", id)
	ctx := p.runCtx
	p.wg.Go(func() {
		// Flush returns once everything emitted so far is out; the state
		// dir then remembers the id across restarts.
		if err := p.agent.Flush(ctx); err != nil {
			return
		}
		p.mu.Lock()
		defer p.mu.Unlock()
		delete(p.pending, id)
		p.st.addPhonedHome(id)
		if err := p.st.save(p.opts.StateDir); err != nil {
			p.log.Error("remember phoned home", "allocation", id, "err", err)
		}
	})
}

// describe is the message of "Phoned Home": what a person looking at the
// event log wants to know about the installed system.
func (p *Phonehome) describe(allocation string) string {
	parts := []string{"allocation " + allocation}
	if h, err := p.opts.Hostname(); err == nil && h != "" {
		parts = append(parts, "hostname "+h)
	}
	if up, err := p.opts.Uptime(); err == nil {
		parts = append(parts, "up "+up.Round(time.Second).String())
	}
	if p.opts.Version != "" {
		parts = append(parts, "metal-phonehome "+p.opts.Version)
	}
	return strings.Join(parts, ", ")
}

// rebootLoop executes reboot orders: report, flush (bounded), remember the
// generation, reboot. The generation is stored only right before the
// reboot: dying earlier repeats the order rather than dropping it.
//
// Closing the stream ends Run; the reboot under way still happens (Run
// waits for it): only the caller's context (parent) calls it off.
func (p *Phonehome) rebootLoop(ctx, parent context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.rebootWake:
		}
		p.mu.Lock()
		gen := p.rebootWanted
		var done uint64
		if p.st.RebootGeneration != nil {
			done = *p.st.RebootGeneration
		}
		p.mu.Unlock()
		if gen <= done {
			continue
		}
		p.log.Info("planned reboot", "generation", gen, "previous", done)
		p.agent.Emit(nil, &agentv1.Event{Time: timestamppb.Now(), Type: EventPlannedReboot,
			Message: fmt.Sprintf("reboot generation %d (executed %d): rebooting into PXE", gen, done)})
		// Close, not Flush: it returns once central stored the event (the
		// stream ended in order), where Flush means only "sent" and the
		// reboot could cut it off. Run returns with the stream: if the
		// reboot fails, the process ends and systemd starts it again.
		fctx, cancel := context.WithTimeout(ctx, p.opts.FlushTimeout)
		if err := p.agent.Close(fctx); err != nil {
			p.log.Warn("rebooting without confirmation that central got the event", "err", err)
		}
		cancel()
		if parent.Err() != nil {
			return
		}
		p.mu.Lock()
		p.st.RebootGeneration = &gen
		err := p.st.save(p.opts.StateDir)
		p.mu.Unlock()
		if err != nil {
			// Rebooting without the record would reboot again for the same
			// generation when the machine comes back from disk; better to
			// reboot than to keep a freed machine running a tenant's OS.
			p.log.Error("remember reboot generation", "err", err)
		}
		p.opts.Metrics.setGeneration(&gen)
		p.opts.Metrics.reboot()
		if err := p.opts.Rebooter.Reboot(ctx); err != nil {
			p.opts.Metrics.rebootFailed()
			p.log.Error("reboot", "generation", gen, "err", err)
		}
	}
}

// procUptime reads the system's uptime from /proc/uptime.
func procUptime() (time.Duration, error) {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, errors.New("/proc/uptime: empty")
	}
	sec, err := strconv.ParseFloat(f[0], 64)
	if err != nil {
		return 0, fmt.Errorf("/proc/uptime: %w", err)
	}
	return time.Duration(sec * float64(time.Second)), nil
}
