package fleet

import (
	"net"

	"google.golang.org/grpc/credentials"
)

// Creds wraps the server's transport credentials (TLS, or insecure for
// --insecure-plaintext) so that the hub can close an agent's connection.
// gRPC cannot end one server stream from outside its handler, and the
// handler's goroutine is busy receiving; closing the connection is what
// ends a superseded, revoked or shut-down stream. Agents use one
// connection per stream, so nothing else is lost with it. gate, when not
// nil, admits the handshakes (see TLSGate).
func Creds(inner credentials.TransportCredentials, gate *TLSGate) credentials.TransportCredentials {
	return closableCreds{inner, gate}
}

type closableCreds struct {
	credentials.TransportCredentials
	gate *TLSGate
}

// ServerHandshake implements credentials.TransportCredentials.
func (c closableCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	var (
		conn net.Conn
		info credentials.AuthInfo
	)
	err := c.gate.handshake(raw, func() (err error) {
		conn, info, err = c.TransportCredentials.ServerHandshake(raw)
		return err
	})
	if err != nil {
		return nil, nil, err
	}
	return conn, closableInfo{AuthInfo: info, raw: raw}, nil
}

// Clone implements credentials.TransportCredentials.
func (c closableCreds) Clone() credentials.TransportCredentials {
	return closableCreds{c.TransportCredentials.Clone(), c.gate}
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
