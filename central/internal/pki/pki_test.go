package pki

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// epoch is a fixed, whole-second start time so validity arithmetic is exact.
func epoch() time.Time { return time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) }

func mustEnsure(t *testing.T, dir string, hosts []string, now time.Time) *Bundle {
	t.Helper()
	b, err := Ensure(context.Background(), dir, hosts, now)
	if err != nil {
		t.Fatalf("Ensure(%v, %s): %v", hosts, now, err)
	}
	return b
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func TestEnsureCreatesFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls") // also exercises MkdirAll
	b := mustEnsure(t, dir, []string{"central.example.com", "10.0.0.7", "[2001:db8::7]", "fe80::1%eth0"}, epoch())

	for _, tc := range []struct {
		name string
		mode os.FileMode
	}{
		{"ca.crt", 0o644},
		{"ca.key", 0o600},
		{"server.crt", 0o644},
		{"server.key", 0o600},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fi, err := os.Stat(filepath.Join(dir, tc.name))
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != tc.mode {
				t.Errorf("mode = %o, want %o", got, tc.mode)
			}
		})
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 4 {
		t.Errorf("dir has %d entries, want 4 (temp files left behind?)", len(entries))
	}

	if b.CA.Subject.CommonName != "Metalfleet CA" || !b.CA.IsCA {
		t.Errorf("CA subject %q IsCA %v", b.CA.Subject.CommonName, b.CA.IsCA)
	}
	if got, want := b.CA.NotAfter.Sub(epoch()), caValidity; got != want {
		t.Errorf("CA validity %s, want %s", got, want)
	}
	if got, want := b.Cert.NotAfter.Sub(epoch()), serverValidity; got != want {
		t.Errorf("server validity %s, want %s", got, want)
	}
	if !slices.Equal(b.Cert.ExtKeyUsage, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}) {
		t.Errorf("ExtKeyUsage = %v", b.Cert.ExtKeyUsage)
	}
	if b.IssueReason == "" {
		t.Error("IssueReason empty on first start")
	}

	wantDNS := []string{"localhost", "central.example.com"}
	if hn, err := os.Hostname(); err == nil && hn != "" {
		wantDNS = append(wantDNS, strings.ToLower(hn))
	}
	for _, d := range wantDNS {
		if !slices.Contains(b.Cert.DNSNames, d) {
			t.Errorf("DNS SANs %v lack %q", b.Cert.DNSNames, d)
		}
	}
	for _, s := range []string{"127.0.0.1", "::1", "10.0.0.7", "2001:db8::7", "fe80::1"} {
		if !slices.ContainsFunc(b.Cert.IPAddresses, net.ParseIP(s).Equal) {
			t.Errorf("IP SANs %v lack %s", b.Cert.IPAddresses, s)
		}
	}
	for _, d := range b.Cert.DNSNames {
		if net.ParseIP(d) != nil || strings.ContainsAny(d, "[]%") {
			t.Errorf("IP literal %q ended up as a DNS SAN", d)
		}
	}
}

func TestEnsureReuseAndReissue(t *testing.T) {
	// Each step runs Ensure in the same directory; steps build on each other.
	type step struct {
		name    string
		hosts   []string
		now     time.Time
		reissue bool
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"unchanged hosts reuse", []step{
			{"first", []string{"a.example"}, epoch(), true},
			{"same", []string{"a.example"}, epoch().Add(time.Hour), false},
			{"later, still >30d left", []string{"a.example"}, epoch().Add(serverValidity - 31*24*time.Hour), false},
		}},
		{"new host reissues", []step{
			{"first", []string{"a.example"}, epoch(), true},
			{"add IP", []string{"a.example", "10.1.2.3"}, epoch(), true},
			{"add DNS", []string{"a.example", "10.1.2.3", "B.example."}, epoch(), true},
			{"subset is covered", []string{"b.example"}, epoch(), false},
			{"case and brackets normalised", []string{"A.EXAMPLE", "[10.1.2.3]"}, epoch(), false},
		}},
		{"expiry within 30 days reissues", []step{
			{"first", nil, epoch(), true},
			{"29 days left", nil, epoch().Add(serverValidity - 29*24*time.Hour), true},
			{"fresh again", nil, epoch().Add(serverValidity - 28*24*time.Hour), false},
		}},
		{"expired reissues", []step{
			{"first", nil, epoch(), true},
			{"after NotAfter", nil, epoch().Add(serverValidity + time.Hour), true},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var first *Bundle
			var prevCert []byte
			for _, st := range tc.steps {
				b := mustEnsure(t, dir, st.hosts, st.now)
				cert := readFile(t, b.CertFile)
				if first == nil {
					first = b
				} else {
					if b.CA.SerialNumber.Cmp(first.CA.SerialNumber) != 0 {
						t.Fatalf("%s: CA was replaced", st.name)
					}
					if changed := !bytes.Equal(cert, prevCert); changed != st.reissue {
						t.Errorf("%s: server.crt changed = %v, want %v (reason %q)", st.name, changed, st.reissue, b.IssueReason)
					}
				}
				if (b.IssueReason != "") != st.reissue {
					t.Errorf("%s: IssueReason = %q, want reissue=%v", st.name, b.IssueReason, st.reissue)
				}
				if b.Cert.NotAfter.Sub(st.now) <= renewBefore {
					t.Errorf("%s: cert expires %s, within 30 days of %s", st.name, b.Cert.NotAfter, st.now)
				}
				prevCert = cert
			}
		})
	}
}

func TestEnsureRepairs(t *testing.T) {
	tests := []struct {
		name     string
		damage   func(t *testing.T, dir string)
		newCA    bool
		reissue  bool
		wantErr  string
		checkErr func(error) bool
	}{
		{name: "server.crt missing", damage: remove("server.crt"), reissue: true},
		{name: "server.key missing", damage: remove("server.key"), reissue: true},
		{name: "server.crt garbage", damage: write("server.crt", "junk"), reissue: true},
		{name: "server.key from another pair", damage: swapServerKey, reissue: true},
		{name: "ca.crt missing creates new CA", damage: remove("ca.crt"), newCA: true, reissue: true},
		{name: "ca.key missing is an error", damage: remove("ca.key"), wantErr: "ca.key",
			checkErr: func(err error) bool { return errors.Is(err, os.ErrNotExist) }},
		{name: "ca.crt garbage is an error", damage: write("ca.crt", "junk"), wantErr: "ca.crt"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			first := mustEnsure(t, dir, nil, epoch())
			tc.damage(t, dir)
			b, err := Ensure(context.Background(), dir, nil, epoch())
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, tc.wantErr)) {
					t.Fatalf("err = %v, want one naming %s", err, tc.wantErr)
				}
				if tc.checkErr != nil && !tc.checkErr(err) {
					t.Errorf("err %v does not wrap the cause", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if gotNew := b.CA.SerialNumber.Cmp(first.CA.SerialNumber) != 0; gotNew != tc.newCA {
				t.Errorf("new CA = %v, want %v", gotNew, tc.newCA)
			}
			if (b.IssueReason != "") != tc.reissue {
				t.Errorf("IssueReason = %q, want reissue=%v", b.IssueReason, tc.reissue)
			}
			roots := x509.NewCertPool()
			roots.AppendCertsFromPEM(readFile(t, b.CAFile))
			if _, err := b.Cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: epoch()}); err != nil {
				t.Errorf("repaired cert does not verify against ca.crt: %v", err)
			}
		})
	}
}

func remove(name string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		if err := os.Remove(filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
}

func write(name, content string) func(*testing.T, string) {
	return func(t *testing.T, dir string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func swapServerKey(t *testing.T, dir string) {
	other := mustEnsure(t, t.TempDir(), nil, epoch())
	write("server.key", string(readFile(t, other.KeyFile)))(t, dir)
}

func TestEnsureErrors(t *testing.T) {
	dir := t.TempDir()
	if _, err := Ensure(context.Background(), dir, []string{"example.com:8443"}, epoch()); err == nil {
		t.Error("host with port accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Ensure(ctx, dir, nil, epoch()); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: err = %v", err)
	}
	mustEnsure(t, dir, nil, epoch())
	if _, err := Ensure(context.Background(), dir, nil, epoch().Add(caValidity+time.Hour)); err == nil || !strings.Contains(err.Error(), "expired") {
		t.Errorf("expired CA: err = %v", err)
	}
}

func hasIPv6Loopback() bool {
	ln, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		return false
	}
	ln.Close()
	return true
}

// handshake runs one TLS handshake against srv on addr with a client that
// trusts only caFile, and returns the client's error. mod, if set, adjusts
// the client config.
func handshake(t *testing.T, srv *tls.Config, addr, caFile, serverName string, mod func(*tls.Config)) (tls.ConnectionState, error) {
	t.Helper()
	ln, err := tls.Listen("tcp", addr, srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		// The server-side error is expected in the failing cases; the client's
		// error is what the test asserts on.
		_ = c.(*tls.Conn).Handshake()
	}()
	defer func() { <-done }()

	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(readFile(t, caFile)) {
		t.Fatal("ca.crt holds no certificates")
	}
	cfg := &tls.Config{RootCAs: roots, ServerName: serverName, NextProtos: []string{"h2"}}
	if mod != nil {
		mod(cfg)
	}
	d := tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: 10 * time.Second}}
	c, err := d.DialContext(context.Background(), "tcp", ln.Addr().String())
	if err != nil {
		return tls.ConnectionState{}, err
	}
	defer c.Close()
	return c.(*tls.Conn).ConnectionState(), nil
}

func TestHandshake(t *testing.T) {
	dir := t.TempDir()
	// now = real time: the handshake verifies against the wall clock.
	b := mustEnsure(t, dir, nil, time.Now())
	srv, err := b.ServerTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name       string
		listen     string
		serverName string
		ok         bool
		v6         bool
	}{
		{"v4 localhost", "127.0.0.1:0", "localhost", true, false},
		{"v4 IP", "127.0.0.1:0", "127.0.0.1", true, false},
		{"v4 unknown name", "127.0.0.1:0", "not-in-sans.example", false, false},
		{"v4 unknown IP", "127.0.0.1:0", "192.0.2.1", false, false},
		{"v6 localhost", "[::1]:0", "localhost", true, true},
		{"v6 IP", "[::1]:0", "::1", true, true},
		{"v6 unknown name", "[::1]:0", "not-in-sans.example", false, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.v6 && !hasIPv6Loopback() {
				t.Skip("no IPv6 loopback on this machine")
			}
			st, err := handshake(t, srv, tc.listen, b.CAFile, tc.serverName, nil)
			if !tc.ok {
				var hostErr x509.HostnameError
				if !errors.As(err, &hostErr) {
					t.Fatalf("err = %v, want x509.HostnameError", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if st.Version != tls.VersionTLS13 {
				t.Errorf("version %x, want TLS 1.3", st.Version)
			}
			if st.NegotiatedProtocol != "h2" {
				t.Errorf("ALPN %q, want h2", st.NegotiatedProtocol)
			}
		})
	}

	for _, tc := range []struct {
		name string
		max  uint16
		ok   bool
	}{
		{"TLS 1.2 client accepted", tls.VersionTLS12, true},
		{"TLS 1.1 client refused", tls.VersionTLS11, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := handshake(t, srv, "127.0.0.1:0", b.CAFile, "localhost", func(c *tls.Config) {
				c.MinVersion, c.MaxVersion = tls.VersionTLS10, tc.max
			})
			if (err == nil) != tc.ok {
				t.Fatalf("err = %v, want ok=%v", err, tc.ok)
			}
			if tc.ok && st.Version != tc.max {
				t.Errorf("version %x", st.Version)
			}
		})
	}
}

func TestClientCert(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	b := mustEnsure(t, dir, nil, now)
	certPEM, keyPEM, err := b.IssueClientCert("agent-7", 0, now)
	if err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "agent-7" {
		t.Errorf("CN %q", leaf.Subject.CommonName)
	}
	// Certificates carry whole seconds only.
	if got := leaf.NotAfter.Sub(now.Truncate(time.Second)); got != clientValidity {
		t.Errorf("validity %s, want %s", got, clientValidity)
	}
	roots := x509.NewCertPool()
	roots.AddCert(b.CA)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client cert does not verify for client auth: %v", err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now}); err == nil {
		t.Error("client cert verifies for server auth")
	}

	// Validity is capped at the CA's own expiry.
	certPEM, _, err = b.IssueClientCert("long", 20*caValidity, now)
	if err != nil {
		t.Fatal(err)
	}
	if c, _ := parseCert(certPEM); !c.NotAfter.Equal(b.CA.NotAfter) {
		t.Errorf("NotAfter %s, want capped at CA %s", c.NotAfter, b.CA.NotAfter)
	}
	if _, _, err := b.IssueClientCert(" ", 0, now); err == nil {
		t.Error("empty name accepted")
	}

	// mTLS: the server sees the verified agent identity.
	srv, err := b.ServerTLSConfig()
	if err != nil {
		t.Fatal(err)
	}
	if err := AddClientCA(srv, b.CAFile); err != nil {
		t.Fatal(err)
	}
	var gotCN string
	srv.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) > 0 {
			gotCN = cs.PeerCertificates[0].Subject.CommonName
		}
		return nil
	}
	if _, err := handshake(t, srv, "127.0.0.1:0", b.CAFile, "localhost", func(c *tls.Config) {
		c.Certificates = []tls.Certificate{pair}
	}); err != nil {
		t.Fatal(err)
	}
	if gotCN != "agent-7" {
		t.Errorf("server saw client CN %q", gotCN)
	}
	if _, err := handshake(t, srv, "127.0.0.1:0", b.CAFile, "localhost", nil); err != nil {
		t.Errorf("client without cert refused: %v", err)
	}
}

func TestHostsFromListen(t *testing.T) {
	mustCIDR := func(s string) net.Addr {
		ip, n, err := net.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		n.IP = ip
		return n
	}
	addrs := []net.Addr{
		mustCIDR("127.0.0.1/8"),
		mustCIDR("::1/128"),
		mustCIDR("10.0.0.5/24"),
		mustCIDR("fe80::1/64"),
		mustCIDR("169.254.9.9/16"),
		mustCIDR("2001:db8::5/64"),
		&net.IPAddr{IP: net.ParseIP("192.168.1.7")},
		mustCIDR("10.0.0.5/24"), // same address on a second interface
	}
	machine := []string{"10.0.0.5", "2001:db8::5", "192.168.1.7"}
	fake := func() ([]net.Addr, error) { return addrs, nil }

	for _, tc := range []struct {
		listen  string
		want    []string
		wantErr bool
	}{
		{listen: ":8443", want: machine},
		{listen: "0.0.0.0:8443", want: machine},
		{listen: "[::]:8443", want: machine},
		{listen: "10.0.0.1:8443", want: []string{"10.0.0.1"}},
		{listen: "[2001:db8::1]:8443", want: []string{"2001:db8::1"}},
		{listen: "[fe80::1%eth0]:8443", want: []string{"fe80::1"}},
		{listen: "central.example.com:8443", want: []string{"central.example.com"}},
		{listen: "127.0.0.1:8443", want: []string{"127.0.0.1"}},
		{listen: "8443", wantErr: true},
		{listen: "", wantErr: true},
	} {
		t.Run(tc.listen, func(t *testing.T) {
			got, err := hostsFromListen(tc.listen, fake)
			if tc.wantErr {
				if err == nil {
					t.Fatalf("got %v, want error", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("got %v, want %v", got, tc.want)
			}
		})
	}

	t.Run("interface error", func(t *testing.T) {
		boom := errors.New("boom")
		_, err := hostsFromListen(":8443", func() ([]net.Addr, error) { return nil, boom })
		if !errors.Is(err, boom) {
			t.Errorf("err = %v", err)
		}
	})
	t.Run("real interfaces", func(t *testing.T) {
		got, err := HostsFromListen(":0")
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range got {
			if ip := net.ParseIP(h); ip == nil || ip.IsLoopback() || !ip.IsGlobalUnicast() {
				t.Errorf("unexpected host %q", h)
			}
		}
		// Whatever the machine has must be acceptable to Ensure.
		mustEnsure(t, t.TempDir(), got, time.Now())
	})
}

func TestLoadGiven(t *testing.T) {
	dir := t.TempDir()
	b := mustEnsure(t, dir, nil, time.Now())
	other := mustEnsure(t, t.TempDir(), nil, time.Now())
	missing := filepath.Join(dir, "nope.crt")
	junk := filepath.Join(dir, "junk.pem")
	if err := os.WriteFile(junk, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name, cert, key string
		errNames        string // "" means success
	}{
		{"ok", b.CertFile, b.KeyFile, ""},
		{"missing cert", missing, b.KeyFile, missing},
		{"missing key", b.CertFile, missing, missing},
		{"garbage cert", junk, b.KeyFile, junk},
		{"mismatched key", b.CertFile, other.KeyFile, other.KeyFile},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := LoadGiven(tc.cert, tc.key)
			if tc.errNames != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errNames) {
					t.Fatalf("err = %v, want one naming %s", err, tc.errNames)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.MinVersion != tls.VersionTLS12 || !slices.Equal(cfg.NextProtos, []string{"h2"}) || len(cfg.Certificates) != 1 {
				t.Errorf("config: min %x protos %v certs %d", cfg.MinVersion, cfg.NextProtos, len(cfg.Certificates))
			}
			if _, err := handshake(t, cfg, "127.0.0.1:0", b.CAFile, "localhost", nil); err != nil {
				t.Errorf("handshake: %v", err)
			}
		})
	}
	if _, err := os.Stat(missing); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("test setup")
	}
	if err := AddClientCA(&tls.Config{}, junk); err == nil || !strings.Contains(err.Error(), junk) {
		t.Errorf("AddClientCA(junk) err = %v", err)
	}
}
