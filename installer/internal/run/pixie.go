package run

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
)

// pixie is the partition's PXE service as the installer uses it: for
// central's CA, fresh boot tokens and cached images.
type pixie struct {
	base   string
	client *http.Client
}

// get fetches a small document (at most 1 MiB).
func (p pixie) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.base+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", req.URL.Redacted(), err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s: %.200s", req.URL.Redacted(), resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

// errCAPin is a CA that does not match metal.ca: someone else's server, or
// a misconfigured partition; either way not to be trusted or retried.
var errCAPin = errors.New("central CA does not match metal.ca")

// trust fetches central's CA from pixie and checks it against the pin. Only
// that one certificate is trusted: not the system roots, not a second
// certificate smuggled into the same PEM.
func (p pixie) trust(ctx context.Context, pin string) ([]byte, *tls.Config, error) {
	b, err := p.get(ctx, "/ca.pem")
	if err != nil {
		return nil, nil, fmt.Errorf("fetch central CA: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, nil, errors.New("fetch central CA: no PEM certificate in /ca.pem")
	}
	sum := sha256.Sum256(block.Bytes)
	if got := hex.EncodeToString(sum[:]); got != pin {
		return nil, nil, fmt.Errorf("%w: sha256 %s, pinned %s", errCAPin, got, pin)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("central CA: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: block.Bytes})
	return caPEM, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// bootToken asks pixie for a fresh one-time token for mac.
func (p pixie) bootToken(ctx context.Context, mac net.HardwareAddr) (string, error) {
	b, err := p.get(ctx, "/v1/boot-token?mac="+url.QueryEscape(mac.String()))
	if err != nil {
		return "", fmt.Errorf("fresh boot token: %w", err)
	}
	var r struct {
		BootToken string `json:"boot_token"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		return "", fmt.Errorf("fresh boot token: %w", err)
	}
	if r.BootToken == "" {
		return "", errors.New("fresh boot token: pixie answered without a token")
	}
	return r.BootToken, nil
}

// imageURL is the image through pixie's cache, which lets a partition
// install while central or the image server is unreachable.
func (p pixie) imageURL(src, sha string) string {
	return p.base + "/images/" + url.PathEscape(sha) + "?url=" + url.QueryEscape(src)
}
