package agent

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

func TestBackoffIsBoundedFullJitter(t *testing.T) {
	b := backoff{min: 100 * time.Millisecond, max: 2 * time.Second}
	var sawSmall bool
	for i := range 200 {
		d := b.next(time.Hour)
		ceil := min(100*time.Millisecond<<min(i, 30), 2*time.Second)
		if d <= 0 || d > ceil {
			t.Fatalf("attempt %d: delay %v outside (0, %v]", i, d, ceil)
		}
		if i > 10 && d < 200*time.Millisecond {
			sawSmall = true // full jitter: small delays stay possible
		}
	}
	if !sawSmall {
		t.Error("no short delay after many attempts: jitter is not full")
	}
	b.reset()
	if d := b.next(time.Hour); d > 100*time.Millisecond {
		t.Fatalf("after reset: %v", d)
	}
}

// TestBackoffLimit: the limit caps the ceiling however many failures came
// before, but never below the minimum.
func TestBackoffLimit(t *testing.T) {
	for _, tc := range []struct {
		name     string
		failures int
		limit    time.Duration
		ceil     time.Duration
	}{
		{name: "limit below the grown ceiling", failures: 20, limit: 300 * time.Millisecond, ceil: 300 * time.Millisecond},
		{name: "limit above the ceiling", failures: 1, limit: time.Hour, ceil: 200 * time.Millisecond},
		{name: "limit below the minimum", failures: 20, limit: time.Millisecond, ceil: 100 * time.Millisecond},
		{name: "limit above the maximum", failures: 20, limit: time.Hour, ceil: 2 * time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := backoff{min: 100 * time.Millisecond, max: 2 * time.Second, n: tc.failures}
			var longest time.Duration
			for range 500 {
				d := b.next(tc.limit)
				b.n = tc.failures
				if d <= 0 || d > tc.ceil {
					t.Fatalf("delay %v outside (0, %v]", d, tc.ceil)
				}
				longest = max(longest, d)
			}
			if longest < tc.ceil*3/4 {
				t.Errorf("longest of 500 delays %v: the ceiling %v is not used", longest, tc.ceil)
			}
		})
	}
}

func TestSleep(t *testing.T) {
	for _, tc := range []struct {
		name   string
		d      time.Duration
		cancel time.Duration // after this long, -1: before the call, 0: never
		want   bool
	}{
		{name: "waits the whole delay", d: 10 * time.Millisecond, want: true},
		{name: "zero delay", d: 0, want: true},
		{name: "ctx ends during the wait", d: time.Hour, cancel: 10 * time.Millisecond, want: false},
		{name: "ctx already ended", d: time.Hour, cancel: -1, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			switch {
			case tc.cancel < 0:
				cancel()
			case tc.cancel > 0:
				time.AfterFunc(tc.cancel, cancel)
			}
			start := time.Now()
			if got := Sleep(ctx, tc.d); got != tc.want {
				t.Fatalf("Sleep = %v, want %v", got, tc.want)
			}
			// An early end must not wait out the delay.
			if took := time.Since(start); tc.want && took < tc.d || !tc.want && took > 10*time.Second {
				t.Errorf("took %v for a delay of %v", took, tc.d)
			}
		})
	}
}

func TestRefusedAndRetryDelay(t *testing.T) {
	st, _ := status.New(codes.Unavailable, "busy").WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(1500 * time.Millisecond)})
	for name, tc := range map[string]struct {
		err     error
		refused bool
		delay   time.Duration
	}{
		"shed":            {st.Err(), false, 1500 * time.Millisecond},
		"unauthenticated": {status.Error(codes.Unauthenticated, "x"), true, 0},
		"denied":          {status.Error(codes.PermissionDenied, "x"), true, 0},
		"malformed":       {status.Error(codes.InvalidArgument, "x"), true, 0},
		"superseded":      {status.Error(codes.Aborted, "x"), false, 0},
		"network":         {errors.New("connection refused"), false, 0},
	} {
		if got := refused(tc.err); got != tc.refused {
			t.Errorf("%s: refused %v, want %v", name, got, tc.refused)
		}
		if got := retryDelay(tc.err); got != tc.delay {
			t.Errorf("%s: retry delay %v, want %v", name, got, tc.delay)
		}
	}
}

func TestStateRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := openState(dir)
	if err != nil {
		t.Fatal(err)
	}
	d := &agentv1.Desired{Revision: 7, Settings: &agentv1.Settings{LogLevel: "debug", Labels: map[string]string{"a": "b"}}}
	if err := s.saveCredential("mfa_x"); err != nil {
		t.Fatal(err)
	}
	if err := s.saveDesired(d); err != nil {
		t.Fatal(err)
	}
	if err := s.saveFactsDone(3); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{credentialFile, desiredFile, intentsFile} {
		fi, err := os.Stat(filepath.Join(dir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v, want mode 0600", f, fi, err)
		}
	}
	back, err := openState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if back.credential != "mfa_x" || !proto.Equal(back.desired, d) || back.factsDone != 3 {
		t.Fatalf("reloaded %+v", back)
	}
	// A torn cache is ignored, not fatal: central sends the document again.
	if err := os.WriteFile(filepath.Join(dir, desiredFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if back, err = openState(dir); err != nil || back.desired != nil {
		t.Fatalf("damaged cache: %v, %v", back.desired, err)
	}
}

// TestOfflineStartAppliesCache: with every central unreachable the agent
// applies its cached document and keeps trying.
func TestOfflineStartAppliesCache(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := l.Addr().String()
	l.Close()
	dir := t.TempDir()
	s, _ := openState(dir)
	if err := s.saveDesired(&agentv1.Desired{Revision: 4, Settings: &agentv1.Settings{LogLevel: "warn"}}); err != nil {
		t.Fatal(err)
	}
	applied := make(chan uint64, 1)
	a, err := New(Config{
		Kind: agentv1.Kind_KIND_BMC, Identity: "bmc1", Centrals: []string{dead}, Token: "mfa_x", StateDir: dir,
		Reconciler: ReconcilerFunc(func(_ context.Context, d *agentv1.Desired) error { applied <- d.GetRevision(); return nil }),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case rev := <-applied:
		if rev != 4 {
			t.Fatalf("applied revision %d, want 4", rev)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cached document not applied")
	}
	if err := <-done; err != nil {
		t.Fatalf("Run: %v (an unreachable central is not an error)", err)
	}
	if a.Applied() != 4 || a.Connected() {
		t.Fatalf("applied %d connected %v", a.Applied(), a.Connected())
	}
}

func TestNewRejectsIncompleteConfig(t *testing.T) {
	ok := Config{Kind: agentv1.Kind_KIND_BMC, Identity: "b", Centrals: []string{"x:1"}, Token: "t", Reconciler: ReconcilerFunc(nil)}
	for name, mutate := range map[string]func(*Config){
		"kind":       func(c *Config) { c.Kind = 0 },
		"identity":   func(c *Config) { c.Identity = "" },
		"centrals":   func(c *Config) { c.Centrals = nil },
		"reconciler": func(c *Config) { c.Reconciler = nil },
		"credential": func(c *Config) { c.Token = "" },
	} {
		c := ok
		mutate(&c)
		if _, err := New(c); err == nil {
			t.Errorf("%s missing: no error", name)
		}
	}
	if _, err := New(ok); err != nil {
		t.Fatalf("complete config: %v", err)
	}
}

func TestNewLogger(t *testing.T) {
	tests := []struct {
		level, format string
		ok            bool
		json          bool
	}{
		{"info", "text", true, false},
		{"debug", "json", true, true},
		{"warn", "", true, false},
		{"loud", "text", false, false},
		{"info", "xml", false, false},
	}
	for _, tt := range tests {
		var buf strings.Builder
		log, lv, err := NewLogger(&buf, tt.level, tt.format)
		if (err == nil) != tt.ok {
			t.Fatalf("NewLogger(%q, %q) error %v, want ok=%v", tt.level, tt.format, err, tt.ok)
		}
		if !tt.ok {
			continue
		}
		log.Error("hello")
		if got := strings.HasPrefix(buf.String(), "{"); got != tt.json {
			t.Fatalf("NewLogger(%q, %q) wrote %q", tt.level, tt.format, buf.String())
		}
		lv.Set(slog.LevelError + 1)
		n := buf.Len()
		log.Error("hidden")
		if buf.Len() != n {
			t.Fatalf("level var does not govern the logger")
		}
	}
}
