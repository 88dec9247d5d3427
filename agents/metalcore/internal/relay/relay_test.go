package relay

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"io"
	"math/big"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/metalfleet/metalfleet/agents/agent/nettest"
)

// tenantPort is a switch port with a machine in its own network
// namespace behind it, and the relay's address as the machine sees it.
type tenantPort struct {
	link *nettest.Link
	// relay is the port's link-local address, zoned for the machine's
	// side of the link.
	relay netip.Addr
}

func newTenantPort(t *testing.T) tenantPort {
	t.Helper()
	l := nettest.NewLink(t, nil, nil)
	var ll netip.Addr
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		a, err := LinkLocal(l.Host)
		if err == nil {
			ll = a
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no link-local address on %s: %v", l.Host, err)
		}
	}
	return tenantPort{link: l, relay: ll.WithZone(l.Peer)}
}

// dial connects from the machine's namespace to the relay on port p.
func (tp tenantPort) dial(t *testing.T, port int) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	err := tp.link.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp6", net.JoinHostPort(tp.relay.String(), strconv.Itoa(port)), 2*time.Second)
		return err
	})
	return c, err
}

// echo is an upstream that answers each line with "central: <line>".
func echo(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
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
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := io.WriteString(c, "central: "+sc.Text()+"\n"); err != nil {
						return
					}
				}
			}()
		}
	}()
	return lis.Addr().String()
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func roundTrip(t *testing.T, c net.Conn, line string) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, line+"\n"); err != nil {
		t.Fatal(err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read back %q: %v", line, err)
	}
	return got
}

// TestRelayCarriesBytesOnlyToCentral: a machine behind a tenant port
// reaches the relay at the port's link-local address and through it only
// central's endpoint, whatever it sends; the port's bound of connections
// holds; a port the relay stops serving closes its connections; a port
// not in the relay's set answers nothing.
func TestRelayCarriesBytesOnlyToCentral(t *testing.T) {
	nettest.Skip(t)
	tp, other := newTenantPort(t), newTenantPort(t)
	port := freePort(t)
	reg := prometheus.NewRegistry()
	r, err := New(Config{Port: port, Upstreams: []string{echo(t)}, PerPort: 2, Metrics: NewMetrics(reg)})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Set(t.Context(), []string{tp.link.Host, "no-such-port"}); err == nil {
		t.Fatal("a port without an interface was accepted")
	}
	if got := r.Ports(); len(got) != 1 || got[0] != tp.link.Host {
		t.Fatalf("ports %v, want just %s", got, tp.link.Host)
	}

	c1, err := tp.dial(t, port)
	if err != nil {
		t.Fatal(err)
	}
	defer c1.Close()
	// Whatever the machine sends is bytes for central: no proxy protocol
	// to name another destination.
	for _, line := range []string{"hello", "CONNECT 127.0.0.1:22 HTTP/1.1", "\x16\x03\x01"} {
		if got := roundTrip(t, c1, line); got != "central: "+line+"\n" {
			t.Fatalf("sent %q, got %q", line, got)
		}
	}
	c2, err := tp.dial(t, port)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	roundTrip(t, c2, "second")
	// The third connection of the port is over its bound: closed at once.
	c3, err := tp.dial(t, port)
	if err != nil {
		t.Fatal(err)
	}
	_ = c3.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c3.Read(make([]byte, 1)); err == nil {
		t.Fatal("a connection over the port's bound was served")
	}
	c3.Close()

	// The other port is not served: nothing listens at its address.
	if c, err := other.dial(t, port); err == nil {
		c.Close()
		t.Fatal("a port outside the relay's set answered")
	}

	// The port leaves its tenant VRF: its connections end.
	if err := r.Set(t.Context(), nil); err != nil {
		t.Fatal(err)
	}
	_ = c1.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c1, "still there?\n"); err == nil {
		if _, err := bufio.NewReader(c1).ReadString('\n'); err == nil {
			t.Fatal("a connection of a port the relay no longer serves still reaches central")
		}
	}
	if c, err := tp.dial(t, port); err == nil {
		c.Close()
		t.Fatal("the relay still listens on a port it no longer serves")
	}
}

// TestRelayIsTLSEndToEnd: the machine's TLS handshake through the relay
// is with central itself (central's certificate, verified by the machine);
// the relay holds no key and carries only ciphertext.
func TestRelayIsTLSEndToEnd(t *testing.T) {
	nettest.Skip(t)
	tp := newTenantPort(t)
	srvCfg, pool := selfSigned(t, "central.example")
	lis, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.WriteString(c, "hello from central\n")
			}()
		}
	}()
	port := freePort(t)
	r, err := New(Config{Port: port, Upstreams: []string{lis.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Set(context.Background(), []string{tp.link.Host}); err != nil {
		t.Fatal(err)
	}
	raw, err := tp.dial(t, port)
	if err != nil {
		t.Fatal(err)
	}
	c := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: "central.example"})
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || line != "hello from central\n" {
		t.Fatalf("through the relay: %q, %v", line, err)
	}
	if got := c.ConnectionState().PeerCertificates[0].Subject.CommonName; got != "central.example" {
		t.Fatalf("handshake with %q, want central's certificate", got)
	}
}

func selfSigned(t *testing.T, name string) (*tls.Config, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}, pool
}
