package console

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/pgtest"
	"github.com/metalfleet/metalfleet/central/internal/store"
	"github.com/metalfleet/metalfleet/central/internal/storetest"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m, &pg)) }

// pipe is one side of a fake gRPC stream: in is what Recv returns (closed:
// io.EOF, as a half-close), out what Send wrote.
type pipe[In, Out any] struct {
	ctx context.Context
	in  chan In
	out chan Out
}

func newPipe[In, Out any](ctx context.Context) *pipe[In, Out] {
	return &pipe[In, Out]{ctx: ctx, in: make(chan In, 16), out: make(chan Out, 16)}
}

func (p *pipe[In, Out]) Context() context.Context { return p.ctx }

func (p *pipe[In, Out]) Recv() (In, error) {
	var zero In
	select {
	case m, ok := <-p.in:
		if !ok {
			return zero, io.EOF
		}
		return m, nil
	case <-p.ctx.Done():
		return zero, p.ctx.Err()
	}
}

func (p *pipe[In, Out]) Send(m Out) error {
	select {
	case p.out <- m:
		return nil
	case <-p.ctx.Done():
		return p.ctx.Err()
	}
}

type people = pipe[*apiv1.MachineServiceConsoleRequest, *apiv1.MachineServiceConsoleResponse]

// echoBMC is metal-bmc for the broker: on an open it dials back (Attach)
// as agent, and answers every keystroke frame with "echo:" and the bytes.
type echoBMC struct {
	b       *Broker
	agent   string
	part    string
	opens   atomic.Int64
	windows chan *agentv1.ConsoleWindow
}

func (e *echoBMC) OpenConsole(ctx context.Context, agentID string, open *agentv1.ConsoleOpen) error {
	if agentID != e.agent {
		return fmt.Errorf("opened on agent %s, want %s", agentID, e.agent)
	}
	e.opens.Add(1)
	actx, cancel := context.WithCancel(context.Background())
	a := newPipe[*agentv1.ConsoleRequest, *agentv1.ConsoleResponse](actx)
	a.in <- &agentv1.ConsoleRequest{SessionId: open.GetSessionId()}
	go func() {
		defer cancel()
		_ = e.b.Attach(a, e.agent, e.part)
	}()
	go func() {
		for {
			select {
			case f := <-a.out:
				if f.GetEnd() != "" {
					return
				}
				if w := f.GetWindow(); w != nil && e.windows != nil {
					e.windows <- w
				}
				if len(f.GetData()) > 0 {
					a.in <- &agentv1.ConsoleRequest{Data: append([]byte("echo:"), f.GetData()...)}
				}
			case <-actx.Done():
				return
			}
		}
	}()
	return nil
}

type fixture struct {
	ctx     context.Context
	st      *store.Store
	b       *Broker
	bmc     *echoBMC
	machine string
}

// setup makes a partition, a metal-bmc agent, a project and a machine
// allocated to it whose BMC the agent reported.
func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := storetest.AdminCall(context.Background(), "/metalfleet.api.v1.MachineService/Console")
	st := storetest.Open(ctx, t, pg)
	id, agent := uuid.NewString(), uuid.NewString()
	for _, q := range []struct {
		sql  string
		args []any
	}{
		{`INSERT INTO partitions (id, spec) VALUES ('p1', '{}')`, nil},
		{`INSERT INTO tenants (id, spec) VALUES ('t1', '{}')`, nil},
		{`INSERT INTO projects (id, tenant_id, name, spec) VALUES ('pr1', 't1', 'pr1', '{}')`, nil},
		{`INSERT INTO agents (id, kind, identity, partition_id, token_hash, enrolled_by, desired_revision, desired, desired_at)
			VALUES ($1, 'bmc', 'bmc-p1', 'p1', $2, 'test', 1, '{"revision":"1"}', now())`, []any{agent, []byte(agent)}},
		{`INSERT INTO machines (id, partition_id, project_id, allocation_id, state, spec) VALUES ($1, 'p1', 'pr1', 'alloc-1', 'available', '{}')`, []any{id}},
		{`INSERT INTO machine_bmcs (machine_uuid, partition_id, agent_id, reachable, fact) VALUES ($1, 'p1', $2, true, $3)`,
			[]any{id, agent, `{"address":"https://192.0.2.1","protocol":"BMC_PROTOCOL_REDFISH","machineUuid":"` + id + `"}`}},
	} {
		if _, err := st.Pool().Exec(ctx, q.sql, q.args...); err != nil {
			t.Fatalf("%s: %v", q.sql, err)
		}
	}
	e := &echoBMC{agent: agent, part: "p1"}
	b := New(st, e, nil, Config{Watch: 20 * time.Millisecond, Join: 5 * time.Second, Buffer: 2})
	e.b = b
	return &fixture{ctx: ctx, st: st, b: b, bmc: e, machine: id}
}

// serve runs Serve for a person and returns the person's pipe and the
// channel of Serve's result.
func (f *fixture) serve(first *apiv1.MachineServiceConsoleRequest) (*people, context.CancelFunc, chan error) {
	ctx, cancel := context.WithCancel(f.ctx)
	p := newPipe[*apiv1.MachineServiceConsoleRequest, *apiv1.MachineServiceConsoleResponse](ctx)
	done := make(chan error, 1)
	go func() { done <- f.b.Serve(p, first) }()
	return p, cancel, done
}

func next(t *testing.T, p *people) *apiv1.MachineServiceConsoleResponse {
	t.Helper()
	select {
	case m := <-p.out:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no answer from the broker")
		return nil
	}
}

// TestConsoleBytesAndAllocationEnd: bytes go both ways (the echo), a
// window change reaches metal-bmc, and changing the machine's allocation
// ends the session with the reason; the record holds end and bytes.
func TestConsoleBytesAndAllocationEnd(t *testing.T) {
	f := setup(t)
	f.bmc.windows = make(chan *agentv1.ConsoleWindow, 4)
	p, cancel, done := f.serve(&apiv1.MachineServiceConsoleRequest{Id: f.machine, Window: &agentv1.ConsoleWindow{Rows: 24, Cols: 80}})
	defer cancel()
	started := next(t, p).GetStarted()
	if started.GetSessionId() == "" || started.GetProtocol() != agentv1.BmcProtocol_BMC_PROTOCOL_REDFISH {
		t.Fatalf("first answer: %v, want started over Redfish", started)
	}
	p.in <- &apiv1.MachineServiceConsoleRequest{Data: []byte("hello")}
	if got := string(next(t, p).GetData()); got != "echo:hello" {
		t.Fatalf("data %q, want echo:hello", got)
	}
	p.in <- &apiv1.MachineServiceConsoleRequest{Window: &agentv1.ConsoleWindow{Rows: 40, Cols: 120}}
	select {
	case w := <-f.bmc.windows:
		if w.GetRows() != 40 || w.GetCols() != 120 {
			t.Errorf("window at metal-bmc %v, want 40x120", w)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the window change did not reach metal-bmc")
	}
	// The machine is freed (as machine.Free writes it).
	if _, err := f.st.Pool().Exec(f.ctx, `UPDATE machines SET allocation_id = NULL, project_id = NULL WHERE id = $1`, f.machine); err != nil {
		t.Fatal(err)
	}
	end := next(t, p).GetEnd()
	if end.GetReason() != ReasonAllocation {
		t.Fatalf("end %v, want %q", end, ReasonAllocation)
	}
	if err := <-done; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	var reason string
	var in, out int64
	var ended bool
	if err := f.st.Pool().QueryRow(f.ctx, `SELECT reason, bytes_in, bytes_out, ended_at IS NOT NULL FROM console_sessions WHERE id = $1`,
		started.GetSessionId()).Scan(&reason, &in, &out, &ended); err != nil {
		t.Fatal(err)
	}
	if reason != ReasonAllocation || in != 5 || out != 10 || !ended {
		t.Errorf("record: reason %q, in %d, out %d, ended %v; want the allocation, 5, 10, ended", reason, in, out, ended)
	}
	var audits int
	if err := f.st.Pool().QueryRow(f.ctx, `SELECT count(*) FROM audit WHERE target = $1 AND method LIKE '%/Console'`, "machine/"+f.machine).Scan(&audits); err != nil {
		t.Fatal(err)
	}
	if audits != 1 {
		t.Errorf("%d audit rows, want 1", audits)
	}
}

// TestConsoleOnePerMachine races many people for one machine's console:
// exactly one gets it, the others are refused; after it ends, the next
// one gets it.
func TestConsoleOnePerMachine(t *testing.T) {
	f := setup(t)
	const racers = 24
	type result struct {
		p      *people
		cancel context.CancelFunc
		done   chan error
		first  *apiv1.MachineServiceConsoleResponse
	}
	results := make([]result, racers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range racers {
		wg.Go(func() {
			<-start
			p, cancel, done := f.serve(&apiv1.MachineServiceConsoleRequest{Id: f.machine})
			r := result{p: p, cancel: cancel, done: done}
			select {
			case m := <-p.out:
				r.first = m
			case err := <-done:
				r.done = make(chan error, 1)
				r.done <- err
			}
			results[i] = r
		})
	}
	close(start)
	wg.Wait()
	var winner *result
	for i := range results {
		r := &results[i]
		if r.first.GetStarted() != nil {
			if winner != nil {
				t.Fatal("two consoles of one machine started")
			}
			winner = r
			continue
		}
		err := <-r.done
		if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "already has a console") {
			t.Errorf("loser: %v, want FailedPrecondition", err)
		}
		r.cancel()
	}
	if winner == nil {
		t.Fatal("no console started")
	}
	if n := f.bmc.opens.Load(); n != 1 {
		t.Errorf("metal-bmc asked %d times, want once", n)
	}
	// The user ends it (half-close); the machine is free for the next.
	close(winner.p.in)
	if end := next(t, winner.p).GetEnd(); end.GetReason() != ReasonUser {
		t.Errorf("end %v, want %q", end, ReasonUser)
	}
	if err := <-winner.done; err != nil {
		t.Fatal(err)
	}
	winner.cancel()
	p, cancel, _ := f.serve(&apiv1.MachineServiceConsoleRequest{Id: f.machine})
	defer cancel()
	if next(t, p).GetStarted() == nil {
		t.Error("the console after the first ended did not start")
	}
}

// TestConsoleRefusals: hostile input and foreign agents get clear statuses
// naming the field.
func TestConsoleRefusals(t *testing.T) {
	f := setup(t)
	for _, tc := range []struct {
		name string
		req  *apiv1.MachineServiceConsoleRequest
		code codes.Code
		text string
	}{
		{"unknown machine", &apiv1.MachineServiceConsoleRequest{Id: uuid.NewString()}, codes.NotFound, "id: machine"},
		{"zero rows", &apiv1.MachineServiceConsoleRequest{Id: f.machine, Window: &agentv1.ConsoleWindow{Cols: 80}}, codes.InvalidArgument, "window.rows"},
		{"huge cols", &apiv1.MachineServiceConsoleRequest{Id: f.machine, Window: &agentv1.ConsoleWindow{Rows: 2, Cols: MaxWindow + 1}}, codes.InvalidArgument, "window.cols"},
		{"too much data", &apiv1.MachineServiceConsoleRequest{Id: f.machine, Data: make([]byte, MaxData+1)}, codes.InvalidArgument, "data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, cancel, done := f.serve(tc.req)
			defer cancel()
			err := <-done
			if status.Code(err) != tc.code || !strings.Contains(err.Error(), tc.text) {
				t.Errorf("%v, want %s naming %q", err, tc.code, tc.text)
			}
		})
	}
	// A stream of metal-bmc for a session that does not exist, or that
	// another agent was asked to open, is refused.
	for _, tc := range []struct{ name, session, agent, part string }{
		{"unknown session", uuid.NewString(), f.bmc.agent, "p1"},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		a := newPipe[*agentv1.ConsoleRequest, *agentv1.ConsoleResponse](ctx)
		a.in <- &agentv1.ConsoleRequest{SessionId: tc.session}
		if err := f.b.Attach(a, tc.agent, tc.part); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "session_id") {
			t.Errorf("%s: %v, want PermissionDenied naming session_id", tc.name, err)
		}
		cancel()
	}
}

// heldBMC records opens and never dials back: the test plays metal-bmc.
type heldBMC struct{ opens chan *agentv1.ConsoleOpen }

func (h *heldBMC) OpenConsole(_ context.Context, _ string, open *agentv1.ConsoleOpen) error {
	h.opens <- open
	return nil
}

// TestAttachOnlyForItsAgent: a session is joined only by the metal-bmc it
// was opened on, of its partition, once.
func TestAttachOnlyForItsAgent(t *testing.T) {
	f := setup(t)
	held := &heldBMC{opens: make(chan *agentv1.ConsoleOpen, 1)}
	f.b.opener = held
	p, cancel, _ := f.serve(&apiv1.MachineServiceConsoleRequest{Id: f.machine})
	defer cancel()
	var open *agentv1.ConsoleOpen
	select {
	case open = <-held.opens:
	case <-time.After(10 * time.Second):
		t.Fatal("metal-bmc was not asked")
	}
	if open.GetMachineId() != f.machine || open.GetAddress() != "https://192.0.2.1" || open.GetProtocol() != agentv1.BmcProtocol_BMC_PROTOCOL_REDFISH {
		t.Errorf("open %v, want the machine's BMC", open)
	}
	attach := func(agent, part string) (*pipe[*agentv1.ConsoleRequest, *agentv1.ConsoleResponse], context.CancelFunc, error) {
		ctx, cancel := context.WithCancel(context.Background())
		a := newPipe[*agentv1.ConsoleRequest, *agentv1.ConsoleResponse](ctx)
		a.in <- &agentv1.ConsoleRequest{SessionId: open.GetSessionId()}
		errc := make(chan error, 1)
		go func() { errc <- f.b.Attach(a, agent, part) }()
		select {
		case err := <-errc:
			return a, cancel, err
		case <-time.After(500 * time.Millisecond):
			return a, cancel, nil // joined: Attach runs until the session ends
		}
	}
	for _, tc := range []struct{ name, agent, part string }{
		{"another agent", uuid.NewString(), "p1"},
		{"another partition", f.bmc.agent, "p2"},
	} {
		_, cancel, err := attach(tc.agent, tc.part)
		cancel()
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "session_id") {
			t.Errorf("%s: %v, want PermissionDenied naming session_id", tc.name, err)
		}
	}
	a, cancelJoined, err := attach(f.bmc.agent, "p1")
	defer cancelJoined()
	if err != nil {
		t.Fatalf("the session's own metal-bmc: %v", err)
	}
	if next(t, p).GetStarted() == nil {
		t.Fatal("not started after the join")
	}
	_, cancel2, err := attach(f.bmc.agent, "p1")
	cancel2()
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a second join: %v, want FailedPrecondition", err)
	}
	// metal-bmc's output reaches the person.
	a.in <- &agentv1.ConsoleRequest{Data: []byte("boot log")}
	if got := string(next(t, p).GetData()); got != "boot log" {
		t.Errorf("data %q, want boot log", got)
	}
}
