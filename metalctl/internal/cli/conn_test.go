package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"sigs.k8s.io/yaml"
)

func TestNormalizeAPIURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want, wantErr string }{
		{in: "localhost:8443", want: "localhost:8443"},
		{in: "https://api.example:8443", want: "api.example:8443"},
		{in: "grpc://api.example:8443/", want: "api.example:8443"},
		{in: "HTTPS://api.example:8443", want: "api.example:8443"},
		{in: " [::1]:8443 ", want: "[::1]:8443"},
		{in: "http://api.example:8443", wantErr: "unsupported scheme"},
		{in: "https://", wantErr: "empty host"},
		{in: "https://api.example:8443/v1", wantErr: "without a path"},
	} {
		got, err := normalizeAPIURL(tc.in)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("normalizeAPIURL(%q) error = %v, want %q", tc.in, err, tc.wantErr)
			}
		case err != nil || got != tc.want:
			t.Errorf("normalizeAPIURL(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestResolveSettingsPrecedence(t *testing.T) {
	t.Parallel()
	cfg := &config{
		Current: "cur",
		Contexts: map[string]contextConfig{
			"cur":   {APIURL: "cur:1", APIToken: "cur-token", CAFile: "cur.pem"},
			"other": {APIURL: "https://other:2", APIToken: "other-token"},
		},
	}
	for _, tc := range []struct {
		name    string
		flags   globalFlags
		env     map[string]string
		want    connSettings
		wantErr string
	}{
		{name: "current context", want: connSettings{apiURL: "cur:1", apiToken: "cur-token", caFile: "cur.pem"}},
		{
			name: "env beats context",
			env:  map[string]string{envAPIURL: "env:3", envAPIToken: "env-token", envCAFile: "env.pem"},
			want: connSettings{apiURL: "env:3", apiToken: "env-token", caFile: "env.pem"},
		},
		{
			name:  "flag beats env",
			flags: globalFlags{apiURL: "grpc://flag:4", apiToken: "flag-token", caFile: "flag.pem", insecure: true},
			env:   map[string]string{envAPIURL: "env:3", envAPIToken: "env-token", envCAFile: "env.pem"},
			want:  connSettings{apiURL: "flag:4", apiToken: "flag-token", caFile: "flag.pem", insecure: true},
		},
		{
			name: "fields fall through independently",
			env:  map[string]string{envAPIToken: "env-token"},
			want: connSettings{apiURL: "cur:1", apiToken: "env-token", caFile: "cur.pem"},
		},
		{
			name: "env picks the context",
			env:  map[string]string{envContext: "other"},
			want: connSettings{apiURL: "other:2", apiToken: "other-token"},
		},
		{
			name:  "flag picks the context over env",
			flags: globalFlags{context: "cur"},
			env:   map[string]string{envContext: "other"},
			want:  connSettings{apiURL: "cur:1", apiToken: "cur-token", caFile: "cur.pem"},
		},
		{name: "unknown context", flags: globalFlags{context: "nope"}, wantErr: "context \"nope\" not found"},
		{name: "bad url", env: map[string]string{envAPIURL: "ftp://x"}, wantErr: "unsupported scheme"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolveSettings(tc.flags, func(k string) string { return tc.env[k] }, cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %+v, want %+v", got, tc.want)
			}
		})
	}
	if _, err := resolveSettings(globalFlags{}, func(string) string { return "" }, &config{}); err == nil || !strings.Contains(err.Error(), "no API URL") {
		t.Errorf("no settings at all: err = %v", err)
	}
}

// TestPrecedenceEndToEnd checks which token actually reaches the server.
func TestPrecedenceEndToEnd(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	cfg := &config{Current: "lab", Contexts: map[string]contextConfig{
		"lab":   {APIURL: addr, APIToken: "ctx-token"},
		"other": {APIURL: addr, APIToken: "other-token"},
	}}
	if err := writeConfig(path, cfg); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		{"context", nil, nil, "Bearer ctx-token"},
		{"env", map[string]string{envAPIToken: "env-token"}, nil, "Bearer env-token"},
		{"flag", map[string]string{envAPIToken: "env-token"}, []string{"--api-token", "flag-token"}, "Bearer flag-token"},
		{"env context", map[string]string{envContext: "other"}, nil, "Bearer other-token"},
		{"flag context", map[string]string{envContext: "nope"}, []string{"--context", "other"}, "Bearer other-token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := map[string]string{envConfig: path}
			for k, v := range tc.env {
				env[k] = v
			}
			before := len(f.recorded())
			args := append([]string{"--insecure-plaintext"}, tc.args...)
			r := runCLI(t, env, "", append(args, "tenant", "list")...)
			mustSucceed(t, r)
			calls := f.recorded()[before:]
			if len(calls) != 1 || calls[0].auth != tc.want {
				t.Errorf("calls %+v, want one with %q", calls, tc.want)
			}
		})
	}
}

// TestTLSWithCAFile runs against a TLS server whose certificate is signed by
// a throwaway CA: trusted with --ca-file, rejected without.
func TestTLSWithCAFile(t *testing.T) {
	t.Parallel()
	caPEM, serverCert := testPKI(t)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	f, addr := startFake(t, grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{serverCert}, MinVersion: tls.VersionTLS12})))
	env := map[string]string{envConfig: filepath.Join(t.TempDir(), "c.yaml"), envAPIToken: "tls-token", envCAFile: caFile}

	r := runCLI(t, env, "", "--api-url", "https://"+addr, "partition", "list", "-o", "json")
	mustSucceed(t, r)
	if calls := f.recorded(); len(calls) != 1 || calls[0].auth != "Bearer tls-token" {
		t.Errorf("calls = %+v", calls)
	}

	delete(env, envCAFile)
	r = runCLI(t, env, "", "--api-url", addr, "--timeout", "5s", "partition", "list")
	if r.code != 1 || !strings.HasPrefix(r.stderr, "Error: Unavailable: ") {
		t.Errorf("without CA: exit %d, stderr %q; want Unavailable", r.code, r.stderr)
	}

	env[envCAFile] = filepath.Join(t.TempDir(), "missing.pem")
	if r = runCLI(t, env, "", "--api-url", addr, "partition", "list"); r.code != 1 || !strings.Contains(r.stderr, "read CA file") {
		t.Errorf("missing CA file: exit %d, stderr %q", r.code, r.stderr)
	}
}

func testPKI(t *testing.T) (caPEM []byte, server tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "metalctl test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "metal-central"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// The config file format is part of the interface users edit by hand.
func TestConfigFileFormat(t *testing.T) {
	t.Parallel()
	var cfg config
	in := "current: lab\ncontexts:\n  lab:\n    api-url: localhost:8443\n    api-token: abc\n    ca-file: /ca.pem\n"
	if err := yaml.UnmarshalStrict([]byte(in), &cfg); err != nil {
		t.Fatal(err)
	}
	if c := cfg.Contexts["lab"]; cfg.Current != "lab" || c.APIURL != "localhost:8443" || c.APIToken != "abc" || c.CAFile != "/ca.pem" {
		t.Errorf("parsed %+v", cfg)
	}
}
