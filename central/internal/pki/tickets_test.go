package pki

import (
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// ticketServer serves TLS with a config from dir's bundle and ticket
// secret, on the clock *now; it returns the address.
func ticketServer(t *testing.T, b *Bundle, dir string, now *time.Time, mu *sync.Mutex) string {
	t.Helper()
	cfg, err := b.ServerTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return *now }
	if err := SessionTickets(cfg, dir, clock); err != nil {
		t.Fatal(err)
	}
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
				_, _ = c.Read(make([]byte, 1)) // handshake, then until the client closes
			}()
		}
	}()
	return lis.Addr().String()
}

// resumes handshakes with addr and reports whether it resumed a session,
// after letting the TLS 1.3 ticket arrive.
func resumes(t *testing.T, addr string, cfg *tls.Config) bool {
	t.Helper()
	c, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, _ = c.Read(make([]byte, 1))
	return c.ConnectionState().DidResume
}

// TestSessionTicketsOutliveTheProcess: a session made with one server
// config resumes on another config from the same data dir (a restarted
// central) on the same day and for six days after, not on the eighth,
// and not on a config from another data dir.
func TestSessionTicketsOutliveTheProcess(t *testing.T) {
	dir := t.TempDir()
	b := mustEnsure(t, dir, nil, time.Now())
	pool := x509.NewCertPool()
	pool.AddCert(b.CA)
	other := t.TempDir()
	for _, tc := range []struct {
		name    string
		dir     string
		later   time.Duration
		resumed bool
	}{
		{name: "same data dir, same day", dir: dir, resumed: true},
		{name: "same data dir, next day", dir: dir, later: 24 * time.Hour, resumed: true},
		{name: "same data dir, six days later", dir: dir, later: 6 * 24 * time.Hour, resumed: true},
		{name: "same data dir, eight days later", dir: dir, later: 8 * 24 * time.Hour, resumed: false},
		{name: "another data dir", dir: other, resumed: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var mu sync.Mutex
			now := time.Date(2026, 12, 4, 23, 0, 0, 0, time.UTC)
			first := ticketServer(t, b, dir, &now, &mu)
			cli := &tls.Config{RootCAs: pool, ServerName: "localhost", ClientSessionCache: tls.NewLRUClientSessionCache(1)}
			if resumes(t, first, cli) {
				t.Fatal("first handshake resumed")
			}
			restarted := time.Date(2026, 12, 4, 23, 0, 0, 0, time.UTC).Add(tc.later)
			second := ticketServer(t, b, tc.dir, &restarted, &mu)
			if got := resumes(t, second, cli); got != tc.resumed {
				t.Fatalf("resumed = %v, want %v", got, tc.resumed)
			}
		})
	}
}

func TestSessionTicketSecretFile(t *testing.T) {
	dir := t.TempDir()
	cfg := &tls.Config{}
	if err := SessionTickets(cfg, dir, time.Now); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, TicketKeyName)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	before := readFile(t, path)
	if err := SessionTickets(&tls.Config{}, dir, time.Now); err != nil {
		t.Fatal(err)
	}
	if after := readFile(t, path); string(after) != string(before) {
		t.Error("the secret was replaced on the second start")
	}
	for _, bad := range []string{"", "zz", "abcd\n"} {
		if err := os.WriteFile(path, []byte(bad), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := SessionTickets(&tls.Config{}, dir, time.Now); err == nil {
			t.Errorf("secret %q accepted", bad)
		}
	}
}
