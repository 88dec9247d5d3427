package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"time"

	"google.golang.org/grpc/credentials"
)

// PinnedTLS trusts only the CA in caFile (central's own CA, <data-dir>/ca.crt
// by default), not the system roots: an agent must not be talked into
// taking orders from any server with a publicly valid certificate.
func PinnedTLS(caFile string) (*tls.Config, error) {
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("read CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("read CA: no PEM certificate in " + caFile)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// withSessionCache gives the agent its own TLS session cache, so that a
// returning agent resumes its session (an abbreviated handshake, a small
// fraction of a full one's CPU on central) instead of starting over. A
// clone: configs shared by many agents of one process (the simulator)
// must not share one cache, as real agents do not.
func withSessionCache(c *tls.Config) *tls.Config {
	c = c.Clone()
	if c.ClientSessionCache == nil {
		c.ClientSessionCache = keptSessions{tls.NewLRUClientSessionCache(4)}
	}
	return c
}

// keptSessions keeps a session across failed handshakes. crypto/tls
// evicts the session it offered when a handshake fails for any reason, and
// under a storm central sheds handshakes it cannot finish in time: every
// shed attempt would otherwise cost the agent its session and turn its
// next attempt into a full handshake, the very cost the storm cannot
// afford. A session central no longer accepts is harmless: central just
// answers with a full handshake and the new session replaces it.
type keptSessions struct{ tls.ClientSessionCache }

// Put implements tls.ClientSessionCache.
func (k keptSessions) Put(key string, cs *tls.ClientSessionState) {
	if cs == nil {
		return
	}
	k.ClientSessionCache.Put(key, cs)
}

// countedCreds counts the agent's TLS handshakes: full, resumed, failed.
type countedCreds struct {
	credentials.TransportCredentials
	m *Metrics
}

// ClientHandshake implements credentials.TransportCredentials.
func (c countedCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, info, err := c.TransportCredentials.ClientHandshake(ctx, authority, raw)
	switch {
	case err != nil:
		c.m.handshake(handshakeFailed)
	case resumed(info):
		c.m.handshake(handshakeResumed)
	default:
		c.m.handshake(handshakeFull)
	}
	return conn, info, err
}

// Clone implements credentials.TransportCredentials.
func (c countedCreds) Clone() credentials.TransportCredentials {
	return countedCreds{c.TransportCredentials.Clone(), c.m}
}

func resumed(info credentials.AuthInfo) bool {
	ti, ok := info.(credentials.TLSInfo)
	return ok && ti.State.DidResume
}

// refreshTimer fires when the session ticket is due for a refresh; never
// without TLS or with refreshes off.
func (a *Agent) refreshTimer() *time.Timer {
	if a.cfg.TLS == nil || a.cfg.SessionRefresh < 0 {
		t := time.NewTimer(time.Hour)
		t.Stop()
		return t
	}
	return time.NewTimer(jitter(a.cfg.SessionRefresh))
}

// jitter is d ±25 %, so that a fleet connected together does not refresh
// together.
func jitter(d time.Duration) time.Duration {
	return d*3/4 + rand.N(d/2+1)
}

// refreshSession makes a short TLS connection to addr, resuming the kept
// session, only for the fresh ticket central sends after the handshake.
// The stream is not touched. Failures only cost the refresh: the next one
// comes a period later, and the stream goes on.
func (a *Agent) refreshSession(ctx context.Context, addr string) {
	cfg := a.cfg.TLS.Clone() // the clone shares the session cache
	cfg.NextProtos = []string{"h2"}
	ctx, cancel := context.WithTimeout(ctx, a.cfg.HandshakeTimeout)
	defer cancel()
	d := tls.Dialer{NetDialer: &net.Dialer{Timeout: a.cfg.ConnectTimeout}, Config: cfg}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		a.cfg.Metrics.handshake(handshakeFailed)
		a.log.Warn("refresh TLS session", "central", addr, "err", err)
		return
	}
	defer c.Close()
	tc := c.(*tls.Conn)
	// TLS 1.3 sends the ticket after the handshake, before any data: a
	// read takes it in (central's HTTP/2 settings follow at once).
	_ = tc.SetReadDeadline(time.Now().Add(time.Second))
	_, _ = tc.Read(make([]byte, 1))
	if tc.ConnectionState().DidResume {
		a.cfg.Metrics.handshake(handshakeResumed)
	} else {
		a.cfg.Metrics.handshake(handshakeFull)
	}
	a.log.Debug("TLS session refreshed", "central", addr, "resumed", tc.ConnectionState().DidResume)
}
