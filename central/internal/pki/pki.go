// Package pki gives metal-central TLS by default: a self-managed CA plus a
// serving certificate kept on disk, so a fresh install speaks TLS without the
// operator first having to run a certificate authority of their own.
package pki

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/central/internal/file"
)

const (
	caValidity     = 10 * 365 * 24 * time.Hour
	serverValidity = 365 * 24 * time.Hour
	clientValidity = 30 * 24 * time.Hour
	renewBefore    = 30 * 24 * time.Hour
	// Backdating NotBefore tolerates peers whose clocks run a little behind
	// ours; without it a freshly issued cert can be "not yet valid" to them.
	clockSkew = time.Hour

	caCertName     = "ca.crt"
	caKeyName      = "ca.key"
	serverCertName = "server.crt"
	serverKeyName  = "server.key"

	certMode fs.FileMode = 0o644
	keyMode  fs.FileMode = 0o600
)

// Bundle is the on-disk CA and serving certificate produced by Ensure.
type Bundle struct {
	CAFile   string // ca.crt: what clients must trust
	CertFile string // server.crt
	KeyFile  string // server.key

	CA   *x509.Certificate
	Cert *x509.Certificate // the serving leaf

	// IssueReason says why this Ensure call wrote a new serving certificate,
	// so the caller can log it; empty when the existing one was reused.
	IssueReason string

	caKey   crypto.Signer
	tlsCert tls.Certificate
}

// Ensure loads or creates, in dir, ca.crt (0644), ca.key (0600), server.crt
// (0644) and server.key (0600).
//
// The CA is created once and then only reused: agents pin ca.crt, so
// silently replacing it would cut every one of them off. The serving
// certificate is cheap to replace and is re-issued whenever it is missing,
// unreadable, not signed by the CA, expires within 30 days, or does not cover
// every entry of hosts plus localhost, 127.0.0.1, ::1 and os.Hostname().
// now is the reference time (zero means time.Now()); tests use it to age
// certificates without waiting.
func Ensure(ctx context.Context, dir string, hosts []string, now time.Time) (*Bundle, error) {
	if now.IsZero() {
		now = time.Now()
	}
	want, err := wantedSANs(hosts)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// 0700 because the directory holds private keys.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("pki: create %s: %w", dir, err)
	}

	b := &Bundle{
		CAFile:   filepath.Join(dir, caCertName),
		CertFile: filepath.Join(dir, serverCertName),
		KeyFile:  filepath.Join(dir, serverKeyName),
	}
	caKeyFile := filepath.Join(dir, caKeyName)

	// Only a missing ca.crt means "no CA yet": nobody can trust a CA whose
	// certificate was never written, so creating one (over any orphaned
	// ca.key) is safe. A present ca.crt with a bad or missing key is an error
	// instead, because agents may already trust it.
	if _, err := os.Stat(b.CAFile); errors.Is(err, fs.ErrNotExist) {
		b.CA, b.caKey, err = createCA(b.CAFile, caKeyFile, now)
		if err != nil {
			return nil, err
		}
	} else if b.CA, b.caKey, err = loadCA(b.CAFile, caKeyFile); err != nil {
		return nil, err
	}
	if !now.Before(b.CA.NotAfter) {
		return nil, fmt.Errorf("pki: CA %s expired on %s; move it and %s aside to create a new CA (agents must then trust the new ca.crt)",
			b.CAFile, b.CA.NotAfter.Format(time.DateOnly), caKeyFile)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	cert, reason := loadServerCert(b.CertFile, b.KeyFile, b.CA, want, now)
	if reason == "" {
		b.tlsCert, b.Cert = cert, cert.Leaf
		return b, nil
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.tlsCert, err = b.issueServerCert(want, now)
	if err != nil {
		return nil, err
	}
	b.Cert = b.tlsCert.Leaf
	b.IssueReason = reason
	return b, nil
}

// ServerTLSConfig returns a fresh server config for the bundle's serving cert.
// TLS 1.3 is preferred without configuration because Go always negotiates the
// highest mutually supported version; 1.2 remains for older clients.
func (b *Bundle) ServerTLSConfig() (*tls.Config, error) {
	if b == nil || len(b.tlsCert.Certificate) == 0 {
		return nil, errors.New("pki: bundle has no serving certificate (use Ensure)")
	}
	return serverConfig(b.tlsCert), nil
}

// LoadGiven builds a server TLS config from operator-supplied PEM files, for
// --tls-cert/--tls-key. certFile may hold the full chain. To also verify
// client certificates, pass the result to AddClientCA.
func LoadGiven(certFile, keyFile string) (*tls.Config, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("pki: read TLS certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("pki: read TLS key: %w", err)
	}
	// tls.X509KeyPair's errors do not say which file is at fault.
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pki: load TLS key pair %s / %s: %w", certFile, keyFile, err)
	}
	return serverConfig(cert), nil
}

// AddClientCA makes cfg verify client certificates against the CA(s) in
// caFile. Certificates stay optional (VerifyClientCertIfGiven) so clients that
// authenticate some other way keep working; handlers decide what a verified
// certificate is worth.
func AddClientCA(cfg *tls.Config, caFile string) error {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return fmt.Errorf("pki: read client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		return fmt.Errorf("pki: client CA %s: no PEM certificates found", caFile)
	}
	cfg.ClientCAs = pool
	cfg.ClientAuth = tls.VerifyClientCertIfGiven
	return nil
}

// HostsFromListen derives the SAN hosts for a listen address such as ":8443",
// "0.0.0.0:8443", "[::]:8443" or "10.0.0.1:8443". A wildcard listen is
// reachable on every interface, so every non-loopback unicast address of the
// machine is returned so that clients dialing any of them can verify.
func HostsFromListen(listen string) ([]string, error) {
	return hostsFromListen(listen, net.InterfaceAddrs)
}

func hostsFromListen(listen string, interfaceAddrs func() ([]net.Addr, error)) ([]string, error) {
	host, _, err := net.SplitHostPort(listen)
	if err != nil {
		return nil, fmt.Errorf("pki: listen address %q: %w", listen, err)
	}
	host = stripZone(host)
	ip := net.ParseIP(host)
	if host != "" && (ip == nil || !ip.IsUnspecified()) {
		return []string{host}, nil
	}
	// Go serves "0.0.0.0" dual-stack just like "::", so both families count.
	addrs, err := interfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("pki: list interface addresses: %w", err)
	}
	var hosts []string
	for _, a := range addrs {
		var ip net.IP
		switch a := a.(type) {
		case *net.IPNet:
			ip = a.IP
		case *net.IPAddr:
			ip = a.IP
		}
		// Link-local addresses are left out: they need a zone to dial, and a
		// zoned name never matches an IP SAN.
		if ip == nil || !ip.IsGlobalUnicast() {
			continue
		}
		if s := ip.String(); !slices.Contains(hosts, s) {
			hosts = append(hosts, s)
		}
	}
	return hosts, nil
}

// IssueClientCert signs a client certificate (ExtKeyUsageClientAuth, CN=name)
// with the bundle's CA. validity <= 0 means 30 days. The result never
// outlives the CA, since a chain is only as valid as its shortest link.
func (b *Bundle) IssueClientCert(name string, validity time.Duration, now time.Time) (certPEM, keyPEM []byte, err error) {
	if b == nil || b.caKey == nil {
		return nil, nil, errors.New("pki: bundle has no CA key (use Ensure)")
	}
	if strings.TrimSpace(name) == "" {
		return nil, nil, errors.New("pki: client certificate needs a name")
	}
	if validity <= 0 {
		validity = clientValidity
	}
	if now.IsZero() {
		now = time.Now()
	}
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: name},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	certDER, key, err := b.sign(tmpl, now, validity)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issue client certificate %q: %w", name, err)
	}
	keyPEM, err = encodeKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: issue client certificate %q: %w", name, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER}), keyPEM, nil
}

func serverConfig(cert tls.Certificate) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2"},
		Certificates: []tls.Certificate{cert},
	}
}

// sans is the set of names a serving certificate must cover.
type sans struct {
	dns []string
	ips []net.IP
}

func (s *sans) add(host string) error {
	host = strings.TrimSpace(host)
	if strings.HasPrefix(host, "[") && strings.HasSuffix(host, "]") {
		host = host[1 : len(host)-1]
	}
	host = stripZone(host)
	if host == "" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil {
		// A wildcard bind address is nothing a client can dial.
		if !ip.IsUnspecified() && !slices.ContainsFunc(s.ips, ip.Equal) {
			s.ips = append(s.ips, ip)
		}
		return nil
	}
	name := strings.TrimSuffix(strings.ToLower(host), ".")
	if !validDNSName(name) {
		// Most likely a host:port or URL slipped in; a SAN like that would
		// never match, so fail loudly instead of issuing a useless cert.
		return fmt.Errorf("pki: invalid host %q: not an IP address or DNS name", host)
	}
	if !slices.Contains(s.dns, name) {
		s.dns = append(s.dns, name)
	}
	return nil
}

func wantedSANs(hosts []string) (sans, error) {
	var s sans
	for _, h := range append([]string{"localhost", "127.0.0.1", "::1"}, hosts...) {
		if err := s.add(h); err != nil {
			return sans{}, err
		}
	}
	// The hostname is best effort: a box without one still gets a usable
	// cert, and an odd hostname must not stop the server from starting.
	if hn, err := os.Hostname(); err == nil {
		_ = s.add(hn)
	}
	return s, nil
}

// missing lists the wanted names cert does not carry.
func (s sans) missing(cert *x509.Certificate) []string {
	var out []string
	for _, d := range s.dns {
		if !slices.ContainsFunc(cert.DNSNames, func(c string) bool {
			return strings.EqualFold(strings.TrimSuffix(c, "."), d)
		}) {
			out = append(out, d)
		}
	}
	for _, ip := range s.ips {
		if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
			out = append(out, ip.String())
		}
	}
	return out
}

func validDNSName(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '*'
			if !ok {
				return false
			}
		}
	}
	return true
}

func stripZone(host string) string {
	if i := strings.IndexByte(host, '%'); i >= 0 && net.ParseIP(host[:i]) != nil {
		return host[:i]
	}
	return host
}

func loadCA(certFile, keyFile string) (*x509.Certificate, crypto.Signer, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: read CA certificate: %w", err)
	}
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: CA certificate %s: %w", certFile, err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, nil, fmt.Errorf("pki: CA certificate %s: not a CA certificate", certFile)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: read CA key (%s exists, so the CA is not recreated): %w", certFile, err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: CA key %s: %w", keyFile, err)
	}
	if pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(cert.PublicKey) {
		return nil, nil, fmt.Errorf("pki: CA key %s does not match %s", keyFile, certFile)
	}
	return cert, key, nil
}

func createCA(certFile, keyFile string, now time.Time) (*x509.Certificate, crypto.Signer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "Metalfleet CA", Organization: []string{"Metalfleet"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(caValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		// No intermediates: everything is signed directly by this CA.
		MaxPathLenZero: true,
		KeyUsage:       x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("pki: parse new CA certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, nil, err
	}
	// Key before certificate: a crash in between leaves no ca.crt, which the
	// next start treats as "no CA yet" rather than as a CA without its key.
	if err := file.WriteAtomic(keyFile, keyPEM, keyMode); err != nil {
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	if err := file.WriteAtomic(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), certMode); err != nil {
		return nil, nil, fmt.Errorf("pki: %w", err)
	}
	return cert, key, nil
}

// loadServerCert returns the existing serving cert, or a non-empty reason why
// it must be re-issued. Every failure is a reason rather than an error since
// the cure is always the same: issue a new one.
func loadServerCert(certFile, keyFile string, ca *x509.Certificate, want sans, now time.Time) (tls.Certificate, string) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return tls.Certificate{}, "no serving certificate"
		}
		return tls.Certificate{}, err.Error()
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return tls.Certificate{}, err.Error()
	}
	// X509KeyPair also catches a key that no longer matches the cert, e.g.
	// after a crash between writing server.key and server.crt.
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Sprintf("unusable serving certificate: %v", err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0]); err != nil {
			return tls.Certificate{}, fmt.Sprintf("unusable serving certificate: %v", err)
		}
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{
		Roots:       roots,
		CurrentTime: now,
		KeyUsages:   []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}); err != nil {
		return tls.Certificate{}, fmt.Sprintf("serving certificate does not verify against the CA: %v", err)
	}
	if now.Add(renewBefore).After(cert.Leaf.NotAfter) {
		return tls.Certificate{}, fmt.Sprintf("serving certificate expires %s", cert.Leaf.NotAfter.Format(time.RFC3339))
	}
	if miss := want.missing(cert.Leaf); len(miss) > 0 {
		return tls.Certificate{}, "serving certificate does not cover " + strings.Join(miss, ", ")
	}
	return cert, ""
}

func (b *Bundle) issueServerCert(want sans, now time.Time) (tls.Certificate, error) {
	tmpl := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "metal-central"},
		DNSNames:    want.dns,
		IPAddresses: want.ips,
		// ECDSA keys only sign; KeyEncipherment would be meaningless here.
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, key, err := b.sign(tmpl, now, serverValidity)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: issue serving certificate: %w", err)
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return tls.Certificate{}, err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := file.WriteAtomic(b.KeyFile, keyPEM, keyMode); err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: %w", err)
	}
	if err := file.WriteAtomic(b.CertFile, certPEM, certMode); err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("pki: load new serving certificate %s: %w", b.CertFile, err)
	}
	if cert.Leaf == nil {
		if cert.Leaf, err = x509.ParseCertificate(der); err != nil {
			return tls.Certificate{}, fmt.Errorf("pki: parse new serving certificate %s: %w", b.CertFile, err)
		}
	}
	return cert, nil
}

// sign fills in serial, validity and a fresh P-256 key, then signs tmpl with
// the CA.
func (b *Bundle) sign(tmpl *x509.Certificate, now time.Time, validity time.Duration) ([]byte, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	if tmpl.SerialNumber, err = newSerial(); err != nil {
		return nil, nil, err
	}
	tmpl.NotBefore = now.Add(-clockSkew)
	tmpl.NotAfter = now.Add(validity)
	if tmpl.NotAfter.After(b.CA.NotAfter) {
		tmpl.NotAfter = b.CA.NotAfter
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, b.CA, key.Public(), b.caKey)
	if err != nil {
		return nil, nil, err
	}
	return der, key, nil
}

func newSerial() (*big.Int, error) {
	// 128 random bits: unique without keeping a serial counter on disk.
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("pki: generate serial: %w", err)
	}
	return n, nil
}

func parseCert(data []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

// parseKey accepts PKCS#8, SEC1 and PKCS#1 so an operator can drop in a CA
// made with openssl instead of letting Ensure create one.
func parseKey(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM private key block")
		}
		var key any
		var err error
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported key type %T", key)
		}
		return signer, nil
	}
}

func encodeKey(key *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("pki: encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
