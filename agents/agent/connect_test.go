package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// testTLS is a server config with a fresh self-signed certificate for
// 127.0.0.1 and a client config that trusts it.
func testTLS(t *testing.T) (server, client *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "central"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	server = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}, MinVersion: tls.VersionTLS12}
	return server, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
}

// tlsCollector serves a collector over TLS on lis until the test ends or
// the returned stop is called.
func tlsCollector(t *testing.T, lis net.Listener, cfg *tls.Config) (stop func()) {
	t.Helper()
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	agentv1.RegisterAgentServiceServer(srv, &collector{})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return srv.Stop
}

// TestReconnectResumesTLSSession: an agent that loses its stream comes
// back with an abbreviated handshake (its kept session), as long as
// central still accepts the session's ticket — as a restarted central
// with the same ticket keys does.
func TestReconnectResumesTLSSession(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)
	// Without keys of its own every server instance would make new ones,
	// as a restarted process does: no ticket would survive the restart.
	srvTLS.SetSessionTicketKeys([][32]byte{{1, 2, 3}})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	stop := tlsCollector(t, lis, srvTLS)
	m := NewMetrics(prometheus.NewRegistry())
	a, err := New(Config{
		Kind: agentv1.Kind_KIND_INSTALLER, Identity: "m", Centrals: []string{addr}, Token: "mfa_x", TLS: cliTLS,
		Reconciler: ReconcilerFunc(func(context.Context, *agentv1.Desired) error { return nil }),
		Metrics:    m, MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	waitFor(t, "first connection", func() bool { return a.Connected() })
	if got := m.Handshakes(); got.Full != 1 || got.Resumed != 0 {
		t.Fatalf("first connection: %+v, want one full handshake", got)
	}
	// "Restart" central: the same address and config, hence the same
	// ticket keys (central keeps its keys on disk for exactly this).
	stop()
	waitFor(t, "stream lost", func() bool { return !a.Connected() })
	lis, err = net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	tlsCollector(t, lis, srvTLS)
	waitFor(t, "reconnection", func() bool { return a.Connected() })
	got := m.Handshakes()
	if got.Full != 1 || got.Resumed != 1 {
		t.Fatalf("after the restart: %+v, want the one full handshake and one resumed", got)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestKeptSessionsSurviveFailedHandshakes: crypto/tls evicts the offered
// session when a handshake fails, so an agent central sheds once would
// pay a full handshake next time; the agent's cache keeps it. The same
// sequence with crypto/tls's plain cache shows what is at stake.
func TestKeptSessionsSurviveFailedHandshakes(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)
	good := tlsEcho(t, srvTLS)
	shed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer shed.Close()
	go func() {
		for {
			c, err := shed.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 512)
			_, _ = c.Read(buf) // the ClientHello, then closed unanswered: shed
			c.Close()
		}
	}()
	for _, tc := range []struct {
		name        string
		cache       tls.ClientSessionCache
		wantResumed bool
	}{
		{name: "agent's cache", cache: keptSessions{tls.NewLRUClientSessionCache(4)}, wantResumed: true},
		{name: "crypto/tls cache", cache: tls.NewLRUClientSessionCache(4), wantResumed: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := cliTLS.Clone()
			cfg.ClientSessionCache = tc.cache
			cfg.ServerName = "127.0.0.1"
			if resumedDial(t, good, cfg) {
				t.Fatal("first handshake resumed")
			}
			// Same cache key (the server name), another address: shed.
			c, err := tls.Dial("tcp", shed.Addr().String(), cfg)
			if err == nil {
				c.Close()
				t.Fatal("shed handshake succeeded")
			}
			if got := resumedDial(t, good, cfg); got != tc.wantResumed {
				t.Fatalf("handshake after a shed one resumed=%v, want %v", got, tc.wantResumed)
			}
		})
	}
}

// tlsEcho is a TLS server that reads until the client closes; it returns
// its address.
func tlsEcho(t *testing.T, cfg *tls.Config) string {
	t.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { lis.Close() })
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 64)
				for {
					if _, err := c.Read(buf); err != nil {
						return
					}
				}
			}()
		}
	}()
	return lis.Addr().String()
}

// resumedDial handshakes with addr, lets the TLS 1.3 session ticket
// arrive, and reports whether the handshake resumed a session.
func resumedDial(t *testing.T, addr string, cfg *tls.Config) bool {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// TLS 1.3 tickets come after the handshake; a read processes them.
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = c.Read(make([]byte, 1))
	return c.ConnectionState().DidResume
}

// TestHandshakeTimeoutGrows: against a central that accepts TCP and never
// answers, each attempt is held for the handshake timeout, which doubles
// per attempt up to its maximum; each is counted.
func TestHandshakeTimeoutGrows(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	var mu sync.Mutex
	var held []time.Duration
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				start := time.Now()
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						break // the agent gave the attempt up
					}
				}
				mu.Lock()
				held = append(held, time.Since(start))
				mu.Unlock()
			}()
		}
	}()
	_, cliTLS := testTLS(t)
	m := NewMetrics(prometheus.NewRegistry())
	a, err := New(Config{
		Kind: agentv1.Kind_KIND_INSTALLER, Identity: "m", Centrals: []string{silent.Addr().String()}, Token: "mfa_x", TLS: cliTLS,
		Reconciler: ReconcilerFunc(func(context.Context, *agentv1.Desired) error { return nil }),
		Metrics:    m,
		MinBackoff: time.Millisecond, MaxBackoff: 5 * time.Millisecond,
		HandshakeTimeout: 100 * time.Millisecond, MaxHandshakeTimeout: 400 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	waitFor(t, "five attempts", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(held) >= 5
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []time.Duration{100, 200, 400, 400, 400}
	for i, w := range want {
		w *= time.Millisecond
		// Held from accept to close: the timeout less the TCP setup, plus
		// scheduling; generous above, tight below.
		if held[i] < w*8/10 || held[i] > w+300*time.Millisecond {
			t.Errorf("attempt %d held %v, want about %v (all: %v)", i+1, held[i], w, held[:5])
		}
	}
	if got := m.Handshakes().TimedOut; got < 5 {
		t.Errorf("timeouts counted %d, want ≥ 5", got)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 10 s", what)
		}
	}
}

// TestSessionRefresh: while it holds its stream, the agent renews its
// session ticket with short resumed handshakes beside the stream, which
// stays up; with refreshes off it makes none.
func TestSessionRefresh(t *testing.T) {
	for _, tc := range []struct {
		name    string
		refresh time.Duration
		want    bool
	}{
		{name: "every 100ms", refresh: 100 * time.Millisecond, want: true},
		{name: "off", refresh: -1, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srvTLS, cliTLS := testTLS(t)
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			tlsCollector(t, lis, srvTLS)
			m := NewMetrics(prometheus.NewRegistry())
			a, err := New(Config{
				Kind: agentv1.Kind_KIND_INSTALLER, Identity: "m", Centrals: []string{lis.Addr().String()}, Token: "mfa_x", TLS: cliTLS,
				Reconciler: ReconcilerFunc(func(context.Context, *agentv1.Desired) error { return nil }),
				Metrics:    m, SessionRefresh: tc.refresh,
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(t.Context())
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			waitFor(t, "connection", a.Connected)
			time.Sleep(500 * time.Millisecond)
			got := m.Handshakes()
			if !a.Connected() || got.Full != 1 || got.Failed != 0 {
				t.Errorf("connected %v, handshakes %+v: want the stream's one full handshake, nothing failed", a.Connected(), got)
			}
			if refreshed := got.Resumed >= 2; refreshed != tc.want {
				t.Errorf("%d resumed refreshes in 500ms, want them: %v", got.Resumed, tc.want)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestEndpointsAskedPerAttempt: the addresses come from Endpoints before
// every attempt, so an agent started before its way to central existed (an
// installed machine before its leaves' router advertisements) connects
// once it appears, without a restart.
func TestEndpointsAskedPerAttempt(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsCollector(t, lis, srvTLS)
	dead, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := dead.Addr().String()
	dead.Close()
	var mu sync.Mutex
	var live []string
	var asked int
	a, err := New(Config{
		Kind: agentv1.Kind_KIND_PHONEHOME, Identity: "m", Centrals: []string{deadAddr}, Token: "mfa_x", TLS: cliTLS,
		Endpoints: func() []string {
			mu.Lock()
			defer mu.Unlock()
			asked++
			return live
		},
		Reconciler: ReconcilerFunc(func(context.Context, *agentv1.Desired) error { return nil }),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	waitFor(t, "attempts at the fallback", func() bool { mu.Lock(); defer mu.Unlock(); return asked >= 3 })
	if a.Connected() {
		t.Fatal("connected through a closed port")
	}
	mu.Lock()
	live = []string{lis.Addr().String()}
	mu.Unlock()
	waitFor(t, "connection once the endpoint appeared", func() bool { return a.Connected() })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestZonedLinkLocalEndpoint: a leaf's agent relay is a link-local address
// with its zone; gRPC reads targets as URLs, where a bare "%" is an error,
// so the attempt must still reach the dialer with the zone intact.
func TestZonedLinkLocalEndpoint(t *testing.T) {
	srvTLS, cliTLS := testTLS(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsCollector(t, lis, srvTLS)
	cliTLS = cliTLS.Clone()
	cliTLS.ServerName = "127.0.0.1" // as metal-phonehome names central through a relay
	const relay = "[fe80::5054:ff:fefa:101%eth0]:4443"
	var mu sync.Mutex
	var dialled []string
	a, err := New(Config{
		Kind: agentv1.Kind_KIND_PHONEHOME, Identity: "m", Centrals: []string{relay}, Token: "mfa_x", TLS: cliTLS,
		Reconciler: ReconcilerFunc(func(context.Context, *agentv1.Desired) error { return nil }),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			mu.Lock()
			dialled = append(dialled, addr)
			mu.Unlock()
			var d net.Dialer
			return d.DialContext(ctx, "tcp", lis.Addr().String())
		})},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	waitFor(t, "a connection through the zoned address", func() bool { return a.Connected() })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(dialled) == 0 || dialled[0] != relay {
		t.Fatalf("dialled %q, want %q", dialled, relay)
	}
}
