package fleet

import (
	"errors"
	"net"
	"time"

	"google.golang.org/grpc/credentials"
)

// Creds wraps the server's transport credentials (TLS, or insecure for
// --insecure-plaintext) so that the hub can close an agent's connection.
// gRPC cannot end one server stream from outside its handler, and the
// handler's goroutine is busy receiving; closing the connection is what
// ends a superseded, revoked or shut-down stream. Agents use one
// connection per stream, so nothing else is lost with it.
//
// It also bounds concurrent TLS handshakes to maxHandshakes: after a
// restart thousands of agents dial at once, and thousands of handshakes
// sharing the CPU all finish late (and cost memory and scheduling on top),
// where a bounded number finish one after another at full speed. A
// connection waits at most handshakeTimeout for its slot and handshake, so
// idle connections cannot hold the slots.
func Creds(inner credentials.TransportCredentials, maxHandshakes int) credentials.TransportCredentials {
	return closableCreds{TransportCredentials: inner, slots: make(chan struct{}, max(maxHandshakes, 1)), timeout: handshakeTimeout}
}

// handshakeTimeout bounds the wait for a slot plus the TLS handshake.
const handshakeTimeout = 10 * time.Second

type closableCreds struct {
	credentials.TransportCredentials
	slots   chan struct{}
	timeout time.Duration
}

// ServerHandshake implements credentials.TransportCredentials.
func (c closableCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	deadline := time.Now().Add(c.timeout)
	t := time.NewTimer(c.timeout)
	select {
	case c.slots <- struct{}{}:
		t.Stop()
	case <-t.C:
		return nil, nil, errors.New("no TLS handshake slot within " + c.timeout.String())
	}
	defer func() { <-c.slots }()
	_ = raw.SetDeadline(deadline)
	conn, info, err := c.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	_ = raw.SetDeadline(time.Time{})
	return conn, closableInfo{AuthInfo: info, raw: raw}, nil
}

// Clone implements credentials.TransportCredentials.
func (c closableCreds) Clone() credentials.TransportCredentials {
	return closableCreds{TransportCredentials: c.TransportCredentials.Clone(), slots: c.slots, timeout: c.timeout}
}

// closableInfo carries the raw connection to the stream handler. Closing
// the raw connection, not the TLS one, cannot block on a close_notify to
// a peer that does not read.
type closableInfo struct {
	credentials.AuthInfo
	raw net.Conn
}

// GetCommonAuthInfo keeps the security level of the wrapped credentials
// visible to gRPC.
func (i closableInfo) GetCommonAuthInfo() credentials.CommonAuthInfo {
	if c, ok := i.AuthInfo.(interface {
		GetCommonAuthInfo() credentials.CommonAuthInfo
	}); ok {
		return c.GetCommonAuthInfo()
	}
	return credentials.CommonAuthInfo{}
}
