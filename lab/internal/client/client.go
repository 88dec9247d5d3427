// Package client connects the lab's tools to metal-central's API as the
// admin: TLS pinned to central's CA, the admin token as bearer.
package client

import (
	"context"
	"fmt"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/metalfleet/metalfleet/agents/agent"
)

// Dial connects to central at addr with the CA and token files of its
// data directory.
func Dial(addr, caFile, tokenFile string) (*grpc.ClientConn, error) {
	tlsCfg, err := agent.PinnedTLS(caFile)
	if err != nil {
		return nil, err
	}
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		return nil, fmt.Errorf("admin token: %w", err)
	}
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
		grpc.WithPerRPCCredentials(bearer(strings.TrimSpace(string(token)))))
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	return cc, nil
}

type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}

func (bearer) RequireTransportSecurity() bool { return true }
