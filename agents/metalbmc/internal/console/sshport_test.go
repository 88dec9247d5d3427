package console

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/driver"
)

// TestSSHPortOfTheBMC: the port the BMC names wins; a BMC that says
// nothing, fails or does not answer in time gets the configured port; a
// BMC that says SSH is off is an error.
func TestSSHPortOfTheBMC(t *testing.T) {
	const timeout = 600 * time.Millisecond
	hang := make(chan struct{})
	t.Cleanup(func() { close(hang) })
	for _, tc := range []struct {
		name    string
		of      func(context.Context, string) (int, error)
		want    int
		wantErr error
	}{
		{"named", func(context.Context, string) (int, error) { return 2222, nil }, 2222, nil},
		{"says nothing", func(context.Context, string) (int, error) { return 0, nil }, 22, nil},
		{"cannot be asked", func(context.Context, string) (int, error) { return 0, errors.New("connect: refused") }, 22, nil},
		{"SSH off", func(context.Context, string) (int, error) { return 0, driver.ErrSSHDisabled }, 0, driver.ErrSSHDisabled},
		{"does not answer", func(context.Context, string) (int, error) { <-hang; return 2222, nil }, 22, nil},
		{"no lookup", nil, 22, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(Config{Creds: func() driver.Creds { return driver.Creds{} }, SSHPort: 22, SSHPortOf: tc.of, Timeout: timeout})
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			got, err := s.sshPort(context.Background(), "https://10.0.0.1")
			if got != tc.want || !errors.Is(err, tc.wantErr) || (tc.wantErr == nil && err != nil) {
				t.Errorf("sshPort = %d, %v; want %d, %v", got, err, tc.want, tc.wantErr)
			}
			if d := time.Since(start); d > timeout {
				t.Errorf("sshPort took %v, more than the console's whole timeout %v", d, timeout)
			}
		})
	}
	// A person who leaves ends the wait.
	s, err := New(Config{Creds: func() driver.Creds { return driver.Creds{} }, SSHPortOf: func(context.Context, string) (int, error) { <-hang; return 0, nil }, Timeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.sshPort(ctx, "https://10.0.0.1"); !errors.Is(err, context.Canceled) {
		t.Errorf("sshPort after the person left: %v", err)
	}
}
