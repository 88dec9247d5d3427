package agent

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// flappy welcomes every agent, sends one document, lets it heartbeat for a
// moment and ends the stream: the shape of a central replica going away.
type flappy struct {
	agentv1.UnimplementedAgentServiceServer
	streams atomic.Int64
}

func (f *flappy) Sync(s agentv1.AgentService_SyncServer) error {
	if _, err := s.Recv(); err != nil {
		return err
	}
	f.streams.Add(1)
	_ = s.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Welcome{Welcome: &agentv1.Welcome{AgentId: "a", HeartbeatInterval: durationpb.New(time.Millisecond)}}})
	_ = s.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Desired{Desired: &agentv1.Desired{Revision: 1}}})
	time.Sleep(5 * time.Millisecond)
	return status.Error(codes.Unavailable, "going away")
}

// TestSessionEndsWhenStreamEndsWhileSending: a stream that ends while the
// agent sends heartbeats must end the session every time; an earlier
// version could hang forever in a second Recv on the dead stream.
func TestSessionEndsWhenStreamEndsWhileSending(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	f := &flappy{}
	agentv1.RegisterAgentServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	a, err := New(Config{
		Kind: agentv1.Kind_KIND_BMC, Identity: "b", Centrals: []string{lis.Addr().String()}, Token: "mfa_x",
		Reconciler: ReconcilerFunc(func(context.Context, *agentv1.Desired) error { return nil }),
		MinBackoff: time.Millisecond, MaxBackoff: 2 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	deadline := time.Now().Add(30 * time.Second)
	for f.streams.Load() < 100 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d streams in 30s: the agent hangs after a stream ends (phase %s)", f.streams.Load(), a.Phase())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if a.Phase() != PhaseStopped {
		t.Fatalf("phase after Run %s, want stopped", a.Phase())
	}
}
