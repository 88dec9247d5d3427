package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"

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
