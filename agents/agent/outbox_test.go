package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// collector welcomes the agent and records every reported event.
type collector struct {
	agentv1.UnimplementedAgentServiceServer
	mu     sync.Mutex
	events []string
	facts  int
	sizes  []int
}

func (c *collector) Sync(s agentv1.AgentService_SyncServer) error {
	if _, err := s.Recv(); err != nil {
		return err
	}
	_ = s.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Welcome{Welcome: &agentv1.Welcome{AgentId: "a", HeartbeatInterval: durationpb.New(time.Hour)}}})
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil // as central: the agent ended the stream in order
		}
		if err != nil {
			return err
		}
		r := m.GetReport()
		if r == nil {
			continue
		}
		c.mu.Lock()
		c.sizes = append(c.sizes, len(r.GetEvents()))
		for _, e := range r.GetEvents() {
			c.events = append(c.events, e.GetType())
		}
		if r.GetFacts() != nil {
			c.facts++
		}
		c.mu.Unlock()
	}
}

func (c *collector) snapshot() ([]string, int, []int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.events...), c.facts, append([]int(nil), c.sizes...)
}

// collectorAgent is an installer agent (not yet running) and the
// collector it reports to.
func collectorAgent(t *testing.T) (*collector, *Agent) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	c := &collector{}
	agentv1.RegisterAgentServiceServer(srv, c)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	a, err := New(Config{
		Kind: agentv1.Kind_KIND_INSTALLER, Identity: "m", Centrals: []string{lis.Addr().String()}, Token: "mfa_x",
		Reconciler: ReconcilerFunc(func(context.Context, *agentv1.Desired) error { return nil }),
	})
	if err != nil {
		t.Fatal(err)
	}
	return c, a
}

// TestEmitDeliversInOrderAcrossConnect: events emitted before the agent
// ever connected and while it is connected all reach central, in order, in
// reports of at most 64 events; Flush returns once they are out.
func TestEmitDeliversInOrderAcrossConnect(t *testing.T) {
	c, a := collectorAgent(t)
	var want []string
	for i := range 150 {
		want = append(want, fmt.Sprintf("e%d", i))
		a.Emit(nil, &agentv1.Event{Type: want[i]})
	}
	a.Emit(&agentv1.Facts{Hostname: "h"})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	fctx, fcancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer fcancel()
	if err := a.Flush(fctx); err != nil {
		t.Fatalf("flush before connect: %v", err)
	}
	for i := 150; i < 160; i++ {
		want = append(want, fmt.Sprintf("e%d", i))
		a.Emit(nil, &agentv1.Event{Type: want[i]})
	}
	if err := a.Flush(fctx); err != nil {
		t.Fatalf("flush while connected: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, facts, sizes := c.snapshot()
		if len(got) == len(want) {
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("event %d = %s, want %s", i, got[i], want[i])
				}
			}
			if facts != 1 {
				t.Fatalf("facts reported %d times, want 1", facts)
			}
			for _, n := range sizes {
				if n > 64 {
					t.Fatalf("report with %d events, central takes at most 64", n)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d events, want %d", len(got), len(want))
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestCloseAcknowledges: when Close returns, central has read every event
// emitted before it (no waiting in the test), and Run has stopped.
func TestCloseAcknowledges(t *testing.T) {
	c, a := collectorAgent(t)
	if a.Credential() != "mfa_x" {
		t.Fatalf("credential %q", a.Credential())
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(t.Context()) }()
	for i := range 100 {
		a.Emit(nil, &agentv1.Event{Type: fmt.Sprintf("e%d", i)})
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := a.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	if got, _, _ := c.snapshot(); len(got) != 100 || got[99] != "e99" {
		t.Fatalf("central had %d events when Close returned, want all 100", len(got))
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run after Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run still running after Close")
	}
}

// TestSilentCentralDoesNotHoldTheAgent: a central address that accepts
// TCP but never answers costs one HandshakeTimeout, not gRPC's 20 seconds,
// before the agent reaches the next central.
func TestSilentCentralDoesNotHoldTheAgent(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close() // held open, never a word
		}
	}()
	c, a := collectorAgent(t)
	a.cfg.HandshakeTimeout, a.hsTimeout = 500*time.Millisecond, 500*time.Millisecond
	a.cfg.Centrals = append([]string{silent.Addr().String()}, a.cfg.Centrals...)
	a.next = 0 // the silent one first
	a.Emit(nil, &agentv1.Event{Type: "hello"})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	fctx, fcancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer fcancel()
	if err := a.Flush(fctx); err != nil {
		t.Fatalf("not delivered through the second central within 10 s (gRPC's default connect timeout is 20 s): %v", err)
	}
	// Flush means sent; the collector reads it a moment later.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got, _, _ := c.snapshot()
		if len(got) == 1 && got[0] == "hello" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("central got %v, want [hello]", got)
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// ackingCentral acknowledges reports as central does. The first time it
// reads a report holding an event of type failOnce it stores nothing and
// ends the stream with Unavailable (central's answer when its database is
// away); reports holding an event of type reject are rejected for good.
type ackingCentral struct {
	agentv1.UnimplementedAgentServiceServer
	failOnce string
	mu       sync.Mutex
	failed   bool
	streams  int
	stored   []string // event types, in the order stored
	seen     map[string]bool
	rejected int
}

func (c *ackingCentral) Sync(s agentv1.AgentService_SyncServer) error {
	if _, err := s.Recv(); err != nil {
		return err
	}
	c.mu.Lock()
	c.streams++
	c.mu.Unlock()
	_ = s.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Welcome{Welcome: &agentv1.Welcome{AgentId: "a", HeartbeatInterval: durationpb.New(time.Hour), ReportAcks: true}}})
	for {
		m, err := s.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		r := m.GetReport()
		if r == nil {
			continue
		}
		c.mu.Lock()
		result := agentv1.AckResult_ACK_RESULT_STORED
		key := fmt.Sprintf("%s/%d", r.GetOutbox(), r.GetSeq())
		for _, e := range r.GetEvents() {
			switch {
			case e.GetType() == c.failOnce && !c.failed:
				c.failed = true
				c.mu.Unlock()
				return status.Error(codes.Unavailable, "central cannot store the report now; reconnect and report again")
			case e.GetType() == "reject":
				result = agentv1.AckResult_ACK_RESULT_REJECTED
			}
		}
		switch {
		case result == agentv1.AckResult_ACK_RESULT_REJECTED:
			c.rejected++
		case !c.seen[key]: // stored once, as central dedups by (agent, outbox, seq)
			c.seen[key] = true
			for _, e := range r.GetEvents() {
				c.stored = append(c.stored, e.GetType())
			}
		}
		c.mu.Unlock()
		if err := s.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Ack{Ack: &agentv1.Ack{Seq: r.GetSeq(), Result: result, Message: "malformed report"}}}); err != nil {
			return err
		}
	}
}

// TestReportKeptUntilStored: a report central fails to store (it ends the
// stream instead of acknowledging it) is sent again on the next stream,
// with everything after it, in order; a rejected one is dropped, not sent
// forever; Flush returns only once everything is answered. Issue 11 item
// 13: the runtime used to forget a report once Send returned, so the
// failed one never arrived.
func TestReportKeptUntilStored(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	c := &ackingCentral{failOnce: "Registering", seen: map[string]bool{}}
	agentv1.RegisterAgentServiceServer(srv, c)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	a, err := New(Config{
		Kind: agentv1.Kind_KIND_INSTALLER, Identity: "m", Centrals: []string{lis.Addr().String()}, Token: "mfa_x",
		Reconciler: ReconcilerFunc(func(context.Context, *agentv1.Desired) error { return nil }),
		MinBackoff: time.Millisecond, MaxBackoff: 10 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(t.Context()) }()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	// One report each: events emitted together may share a report.
	for _, typ := range []string{"Preparing", "reject"} {
		a.Emit(nil, &agentv1.Event{Type: typ})
		if err := a.Flush(ctx); err != nil {
			t.Fatal(err)
		}
	}
	a.Emit(nil, &agentv1.Event{Type: "Registering"})
	a.Emit(nil, &agentv1.Event{Type: "Waiting"})
	if err := a.Flush(ctx); err != nil {
		t.Fatalf("flush: %v (a report central failed to store was not sent again)", err)
	}
	if err := a.Close(ctx); err != nil {
		t.Fatalf("close: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if got, want := fmt.Sprint(c.stored), "[Preparing Registering Waiting]"; got != want {
		t.Errorf("central stored %s, want %s", got, want)
	}
	if c.rejected != 1 {
		t.Errorf("the rejected report arrived %d times, want once", c.rejected)
	}
	if c.streams < 2 {
		t.Errorf("%d streams: the failed report cannot have been sent again", c.streams)
	}
}
