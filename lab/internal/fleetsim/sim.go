// Package fleetsim runs a simulated agent fleet in one process against a real
// metal-central (a child process with its embedded PostgreSQL) over real gRPC
// and TLS, changes the agents' desired state through the public API and
// measures what docs/agent-protocol.md promises: propagation latency, memory
// per stream, and how fast the fleet is back after central restarts.
package fleetsim

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/lab/internal/client"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Config of one simulation run.
type Config struct {
	// CentralBin is the metal-central binary to run.
	CentralBin string
	// WorkDir holds central's data dir and logs; empty makes a temporary one.
	WorkDir string
	// CentralArgs are added to central's command line.
	CentralArgs []string
	// CentralEnv is added to central's environment (e.g. GOGC=50): the
	// operator's runtime choices, measured like flags.
	CentralEnv []string
	Agents     int
	Kind       agentv1.Kind
	// Rate of desired state changes per second during Duration.
	Rate     float64
	Duration time.Duration
	// Restart central after the change phase and time the fleet's return.
	Restart bool
	// Settle, when set, waits this long after the change phase and
	// measures central's RSS again: the Go runtime gives back memory and
	// shrinks goroutine stacks over a few garbage collections (it forces
	// one every two minutes), so this is the steady state.
	Settle time.Duration
	// Progress gets a line every couple of seconds; nil is quiet.
	Progress io.Writer
	Log      *slog.Logger
}

// Result of a run.
type Result struct {
	Agents int
	// Connect is the time from starting all agents until all hold a stream
	// and applied their first document.
	Connect time.Duration
	// RSS of central before the agents came, with all connected, and
	// after Settle.
	RSSIdle, RSSConnected, RSSSettled int64
	// Changes made and delivered during the change phase, with the
	// latency until the agent has the document, measured two ways that
	// bracket "from commit": from the document's changed_at, taken inside
	// the transaction before its commit (so it includes the commit and
	// overstates), and from the moment the API call that made the change
	// returned, after the commit (so it understates by the response's way
	// back; an agent that had the document before the caller counts 0).
	Changes, Delivered int
	P50, P99, Max      time.Duration
	// After* are the latencies from the API call's return.
	AfterP50, AfterP99, AfterMax time.Duration
	// Restart: SIGTERM to central until it serves again (Down), and until
	// every agent holds a stream and is at its newest revision (Converge).
	Down, Converge time.Duration
	RSSRestarted   int64
	// GaveUp counts agents whose runtime stopped with an error.
	GaveUp int
	// ConnectTLS and ReturnTLS are the agents' TLS handshakes during the
	// cold connect and during the return after the restart.
	ConnectTLS, ReturnTLS agent.HandshakeCounts
}

// Return is the time from central serving again after the restart until
// every agent is back: the fleet's own part of Converge.
func (r Result) Return() time.Duration { return r.Converge - r.Down }

// ReturnRatio is Return over the cold Connect of the same run: how much
// slower the fleet comes back than it came first (0 without a restart).
// Measured in one run, it does not depend on the machine's speed.
func (r Result) ReturnRatio() float64 {
	if r.Connect <= 0 || r.Converge <= 0 {
		return 0
	}
	return float64(r.Return()) / float64(r.Connect)
}

// ResumedShare is the share of the return's completed handshakes that
// resumed a session (0 without any).
func (r Result) ResumedShare() float64 {
	done := r.ReturnTLS.Full + r.ReturnTLS.Resumed
	if done == 0 {
		return 0
	}
	return float64(r.ReturnTLS.Resumed) / float64(done)
}

// PerStream is central's RSS growth per connected agent right after all
// connected, in bytes.
func (r Result) PerStream() float64 { return r.perStream(r.RSSConnected) }

// PerStreamSettled is PerStream after Settle (0 without).
func (r Result) PerStreamSettled() float64 {
	if r.RSSSettled == 0 {
		return 0
	}
	return r.perStream(r.RSSSettled)
}

func (r Result) perStream(rss int64) float64 {
	if r.Agents == 0 {
		return 0
	}
	return float64(rss-r.RSSIdle) / float64(r.Agents)
}

type sim struct {
	cfg     Config
	log     *slog.Logger
	ids     []string
	want    []atomic.Uint64 // newest desired revision per agent
	applied []atomic.Uint64
	agents  []*agent.Agent
	gaveUp  atomic.Int32
	// metrics are the agents' shared ones, for the handshake counts.
	metrics *agent.Metrics

	measuring atomic.Bool
	mu        sync.Mutex
	latencies []time.Duration
	// received and returned map a change's seq to when its agent had it
	// and when its API call returned.
	received, returned map[int]time.Time
}

// Run performs one simulation.
func Run(ctx context.Context, cfg Config) (res Result, err error) {
	if cfg.Agents <= 0 {
		return res, errors.New("agents must be positive")
	}
	if cfg.Kind == agentv1.Kind_KIND_UNSPECIFIED {
		cfg.Kind = agentv1.Kind_KIND_SWITCH
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	if err := raiseFileLimit(cfg.Agents + 1024); err != nil {
		return res, err
	}
	work := cfg.WorkDir
	if work == "" {
		if work, err = os.MkdirTemp("", "metal-lab-fleet-"); err != nil {
			return res, err
		}
		defer os.RemoveAll(work)
	}
	// PostgreSQL runs as its own user when we are root and must reach its
	// cluster under the data dir.
	if err := os.Chmod(work, 0o711); err != nil {
		return res, err
	}
	logf, err := os.Create(filepath.Join(work, "central.log"))
	if err != nil {
		return res, err
	}
	defer logf.Close()
	listen, err := freeAddr()
	if err != nil {
		return res, err
	}
	c := &central{bin: cfg.CentralBin, dataDir: filepath.Join(work, "central"), listen: listen, log: logf, args: cfg.CentralArgs, env: cfg.CentralEnv}
	fmt.Fprintf(cfg.Progress, "starting metal-central on %s (log: %s)\n", listen, logf.Name())
	if err := c.start(ctx); err != nil {
		return res, err
	}
	defer func() {
		if serr := c.stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	res.Agents = cfg.Agents
	s := &sim{cfg: cfg, received: map[int]time.Time{}, returned: map[int]time.Time{}, log: cfg.Log, want: make([]atomic.Uint64, cfg.Agents), applied: make([]atomic.Uint64, cfg.Agents),
		metrics: agent.NewMetrics(prometheus.NewRegistry())}
	tlsCfg, err := agent.PinnedTLS(filepath.Join(c.dataDir, "ca.crt"))
	if err != nil {
		return res, err
	}
	cc, err := client.Dial(listen, filepath.Join(c.dataDir, "ca.crt"), filepath.Join(c.dataDir, "admin.token"))
	if err != nil {
		return res, err
	}
	defer cc.Close()
	api := apiv1.NewAgentServiceClient(cc)

	secrets, err := s.enroll(ctx, cc, api)
	if err != nil {
		return res, err
	}
	runtime.GC()
	time.Sleep(2 * time.Second) // let central settle after the enrolment burst
	if res.RSSIdle, err = c.rss(); err != nil {
		return res, err
	}

	fmt.Fprintf(cfg.Progress, "connecting %d agents\n", cfg.Agents)
	actx, stopAgents := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		stopAgents()
		wg.Wait()
	}()
	start := time.Now()
	if err := s.startAgents(actx, &wg, listen, tlsCfg, secrets); err != nil {
		return res, err
	}
	if err := s.waitConverged(ctx, "connected"); err != nil {
		return res, err
	}
	res.Connect = time.Since(start)
	res.ConnectTLS = s.metrics.Handshakes()
	time.Sleep(2 * time.Second)
	if res.RSSConnected, err = c.rss(); err != nil {
		return res, err
	}
	fmt.Fprintf(cfg.Progress, "all %d agents connected in %s; central RSS %d MiB idle, %d MiB connected\n",
		cfg.Agents, res.Connect.Round(time.Millisecond), res.RSSIdle>>20, res.RSSConnected>>20)

	if cfg.Rate > 0 && cfg.Duration > 0 {
		res.Changes, err = s.change(ctx, api)
		if err != nil {
			return res, err
		}
		if err := s.waitConverged(ctx, "changes delivered"); err != nil {
			return res, err
		}
		s.measuring.Store(false)
		s.mu.Lock()
		lat := slices.Clone(s.latencies)
		var after []time.Duration
		for seq, got := range s.received {
			if ret, ok := s.returned[seq]; ok {
				after = append(after, max(got.Sub(ret), 0))
			}
		}
		s.mu.Unlock()
		res.Delivered = len(lat)
		res.P50, res.P99, res.Max = percentiles(lat)
		res.AfterP50, res.AfterP99, res.AfterMax = percentiles(after)
		fmt.Fprintf(cfg.Progress, "%d changes, %d delivered: from changed_at p50 %s p99 %s max %s; from API return p50 %s p99 %s max %s\n",
			res.Changes, res.Delivered, res.P50, res.P99, res.Max, res.AfterP50, res.AfterP99, res.AfterMax)
	}

	if cfg.Settle > 0 {
		fmt.Fprintf(cfg.Progress, "settling for %s\n", cfg.Settle)
		select {
		case <-time.After(cfg.Settle):
		case <-ctx.Done():
			return res, ctx.Err()
		}
		if res.RSSSettled, err = c.rss(); err != nil {
			return res, err
		}
	}

	if cfg.Restart {
		fmt.Fprintln(cfg.Progress, "restarting metal-central")
		before := s.metrics.Handshakes()
		t0 := time.Now()
		if err := c.stop(); err != nil {
			return res, err
		}
		if err := c.start(ctx); err != nil {
			return res, err
		}
		res.Down = time.Since(t0)
		// Agents still holding their old state must hold a new stream.
		if err := s.waitReconnected(ctx, t0); err != nil {
			return res, err
		}
		res.Converge = time.Since(t0)
		res.ReturnTLS = s.metrics.Handshakes().Sub(before)
		time.Sleep(2 * time.Second)
		if res.RSSRestarted, err = c.rss(); err != nil {
			return res, err
		}
		fmt.Fprintf(cfg.Progress, "restart: serving again after %s, all agents back after %s\n", res.Down.Round(time.Millisecond), res.Converge.Round(time.Millisecond))
	}
	res.GaveUp = int(s.gaveUp.Load())
	return res, nil
}

func (s *sim) identity(i int) string { return fmt.Sprintf("sim-%06d", i) }

// enroll creates the partition and the agents through the public API.
func (s *sim) enroll(ctx context.Context, cc *grpc.ClientConn, api apiv1.AgentServiceClient) ([]string, error) {
	_, err := apiv1.NewPartitionServiceClient(cc).Create(ctx, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "sim"}})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		return nil, fmt.Errorf("create partition: %w", err)
	}
	n := s.cfg.Agents
	s.ids = make([]string, n)
	secrets := make([]string, n)
	kind := s.cfg.Kind
	if kind == agentv1.Kind_KIND_INSTALLER || kind == agentv1.Kind_KIND_PHONEHOME {
		// Their credentials come from boot tokens in real life; enrolment
		// as a switch gives the same stream with the same cost.
		kind = agentv1.Kind_KIND_SWITCH
	}
	s.cfg.Kind = kind
	fmt.Fprintf(s.cfg.Progress, "enrolling %d agents\n", n)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				out, err := api.Enroll(ctx, &apiv1.AgentServiceEnrollRequest{Kind: kind, Identity: s.identity(i), PartitionId: "sim"})
				if err != nil {
					once.Do(func() { firstErr = fmt.Errorf("enroll %s: %w", s.identity(i), err) })
					return
				}
				s.ids[i], secrets[i] = out.GetAgent().GetId(), out.GetSecret()
				s.want[i].Store(out.GetAgent().GetDesiredRevision())
			}
		})
	}
	wg.Wait()
	return secrets, firstErr
}

func (s *sim) startAgents(ctx context.Context, wg *sync.WaitGroup, addr string, tlsCfg *tls.Config, secrets []string) error {
	s.agents = make([]*agent.Agent, s.cfg.Agents)
	for i := range s.cfg.Agents {
		a, err := agent.New(agent.Config{
			Kind: s.cfg.Kind, Identity: s.identity(i), Centrals: []string{addr}, TLS: tlsCfg, Token: secrets[i],
			Reconciler: agent.ReconcilerFunc(func(_ context.Context, d *agentv1.Desired) error { s.apply(i, d); return nil }),
			Metrics:    s.metrics,
			// The simulator's own side of each stream; central's side is
			// what is measured.
			DialOptions: []grpc.DialOption{grpc.WithReadBufferSize(4 << 10), grpc.WithWriteBufferSize(4 << 10)},
		})
		if err != nil {
			return err
		}
		s.agents[i] = a
		wg.Go(func() {
			if err := a.Run(ctx); err != nil {
				s.gaveUp.Add(1)
				s.log.Error("agent gave up", "agent", s.identity(i), "err", err)
			}
		})
	}
	return nil
}

// apply is every simulated agent's reconciler: it records when a measured
// change arrived.
func (s *sim) apply(i int, d *agentv1.Desired) {
	prev := s.applied[i].Swap(d.GetRevision())
	if !s.measuring.Load() || d.GetRevision() <= prev || d.GetSettings().GetLabels()["seq"] == "" || d.GetChangedAt() == nil {
		return
	}
	now := time.Now()
	seq, _ := strconv.Atoi(d.GetSettings().GetLabels()["seq"])
	s.mu.Lock()
	s.latencies = append(s.latencies, now.Sub(d.GetChangedAt().AsTime()))
	s.received[seq] = now
	s.mu.Unlock()
}

// change changes random agents' labels at the configured rate.
func (s *sim) change(ctx context.Context, api apiv1.AgentServiceClient) (int, error) {
	s.measuring.Store(true)
	total := int(s.cfg.Rate * s.cfg.Duration.Seconds())
	fmt.Fprintf(s.cfg.Progress, "changing desired state: %d changes at %.0f/s\n", total, s.cfg.Rate)
	jobs := make(chan int, 1024)
	var wg sync.WaitGroup
	var failed atomic.Int64
	var firstErr error
	var once sync.Once
	// Agents are changed in a random order, each again only after all had
	// a change, so that changes do not coalesce: every change is one
	// delivered document to measure.
	perm := rand.Perm(s.cfg.Agents)
	for range 16 {
		wg.Go(func() {
			for seq := range jobs {
				i := perm[seq%len(perm)]
				out, err := api.Configure(ctx, &apiv1.AgentServiceConfigureRequest{Id: s.ids[i], ReplaceLabels: true,
					Labels: map[string]string{"seq": strconv.Itoa(seq)}})
				if err != nil {
					failed.Add(1)
					once.Do(func() { firstErr = err })
					continue
				}
				s.mu.Lock()
				s.returned[seq] = time.Now()
				s.mu.Unlock()
				rev := out.GetAgent().GetDesiredRevision()
				for {
					cur := s.want[i].Load()
					if rev <= cur || s.want[i].CompareAndSwap(cur, rev) {
						break
					}
				}
			}
		})
	}
	interval := time.Duration(float64(time.Second) / s.cfg.Rate)
	next := time.Now()
	for seq := range total {
		next = next.Add(interval)
		if d := time.Until(next); d > 0 {
			time.Sleep(d)
		}
		select {
		case jobs <- seq:
		case <-ctx.Done():
			close(jobs)
			wg.Wait()
			return seq, ctx.Err()
		}
	}
	close(jobs)
	wg.Wait()
	if failed.Load() > 0 {
		return total, fmt.Errorf("%d of %d changes failed, first: %w", failed.Load(), total, firstErr)
	}
	return total, nil
}

// waitConverged waits until every agent holds a stream and applied its
// newest revision.
func (s *sim) waitConverged(ctx context.Context, what string) error {
	return s.wait(ctx, what, func(i int) bool {
		return s.agents[i].Connected() && s.applied[i].Load() >= s.want[i].Load() && s.want[i].Load() > 0
	})
}

// waitReconnected is waitConverged for after a restart: the agent must
// also have applied a document sent after t0 (a new stream).
func (s *sim) waitReconnected(ctx context.Context, t0 time.Time) error {
	return s.wait(ctx, "back after restart", func(i int) bool {
		return s.agents[i].Connected() && s.agents[i].LastDocument().After(t0) && s.applied[i].Load() >= s.want[i].Load()
	})
}

func (s *sim) wait(ctx context.Context, what string, ok func(int) bool) error {
	last := time.Now()
	deadline := time.Now().Add(10 * time.Minute)
	for {
		n := 0
		for i := range s.cfg.Agents {
			if ok(i) {
				n++
			}
		}
		if n == s.cfg.Agents {
			return nil
		}
		if time.Since(last) > 2*time.Second {
			// Where the agents still missing are, to see what holds them.
			phases := map[agent.Phase]int{}
			for i := range s.cfg.Agents {
				if !ok(i) {
					phases[s.agents[i].Phase()]++
				}
			}
			fmt.Fprintf(s.cfg.Progress, "  %s: %d/%d (gave up: %d; missing by phase: %v)\n", what, n, s.cfg.Agents, s.gaveUp.Load(), phases)
			last = time.Now()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: only %d of %d agents after 10 minutes", what, n, s.cfg.Agents)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// raiseFileLimit makes room for one socket per agent here and in central
// (which inherits the limit, and needs a few more for its database).
func raiseFileLimit(need int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= uint64(need) {
		return nil
	}
	want := lim
	want.Cur = uint64(need)
	if want.Max < want.Cur {
		want.Max = want.Cur // needs CAP_SYS_RESOURCE
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		return fmt.Errorf("%d agents need %d open files per process; the limit is %d (hard %d) and cannot be raised here (%w): use fewer agents or raise the hard limit (ulimit -Hn, LimitNOFILE)",
			need-1024, need, lim.Cur, lim.Max, err)
	}
	return nil
}

// percentiles returns p50, p99 and max of ds (sorting it).
func percentiles(ds []time.Duration) (p50, p99, maxd time.Duration) {
	if len(ds) == 0 {
		return 0, 0, 0
	}
	slices.Sort(ds)
	return ds[len(ds)/2], ds[min(len(ds)-1, len(ds)*99/100)], ds[len(ds)-1]
}
