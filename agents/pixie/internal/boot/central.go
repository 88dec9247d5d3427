package boot

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Central calls central's Boot RPC with pixie's own agent credential,
// moving on to the next central address when one is unreachable.
type Central struct {
	addrs []string
	creds credentials.TransportCredentials
	token string

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
	next  int
}

// NewCentral prepares calls to addrs (host:port). tlsCfg nil means
// plaintext (a central run with --insecure-plaintext).
func NewCentral(addrs []string, tlsCfg *tls.Config, token string) (*Central, error) {
	if len(addrs) == 0 {
		return nil, errors.New("boot: at least one central address required")
	}
	if token == "" {
		return nil, errors.New("boot: pixie's agent credential required for the Boot RPC")
	}
	creds := insecure.NewCredentials()
	if tlsCfg != nil {
		creds = credentials.NewTLS(tlsCfg)
	}
	return &Central{addrs: addrs, creds: creds, token: token, conns: map[string]*grpc.ClientConn{}}, nil
}

func (c *Central) conn(addr string) (*grpc.ClientConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cc, ok := c.conns[addr]; ok {
		return cc, nil
	}
	// gRPC's default reconnect backoff grows to two minutes; pixie must
	// notice a returning central within seconds, as machines wait.
	cc, err := grpc.NewClient(addr,
		grpc.WithTransportCredentials(c.creds),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 200 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 3 * time.Second},
			MinConnectTimeout: time.Second,
		}))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	c.conns[addr] = cc
	return cc, nil
}

// Boot implements Booter. Each address gets an equal share of what is
// left of ctx's deadline, so one black-holed central does not use up the
// whole question.
func (c *Central) Boot(ctx context.Context, req *agentv1.BootRequest) (*agentv1.BootResponse, error) {
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token)
	c.mu.Lock()
	start := c.next
	c.mu.Unlock()
	var lastErr error
	for i := range c.addrs {
		idx := (start + i) % len(c.addrs)
		cc, err := c.conn(c.addrs[idx])
		if err != nil {
			lastErr = err
			continue
		}
		actx, cancel := ctx, context.CancelFunc(func() {})
		if dl, ok := ctx.Deadline(); ok {
			actx, cancel = context.WithTimeout(ctx, time.Until(dl)/time.Duration(len(c.addrs)-i))
		}
		resp, err := agentv1.NewAgentServiceClient(cc).Boot(actx, req)
		cancel()
		if err == nil {
			c.mu.Lock()
			c.next = idx
			c.mu.Unlock()
			return resp, nil
		}
		if !Offline(err) {
			return nil, err
		}
		lastErr = err
		if ctx.Err() != nil {
			break
		}
	}
	return nil, lastErr
}

// Close ends the connections.
func (c *Central) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cc := range c.conns {
		cc.Close()
	}
	c.conns = map[string]*grpc.ClientConn{}
}
