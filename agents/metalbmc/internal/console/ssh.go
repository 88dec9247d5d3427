package console

import (
	"context"
	"fmt"
	"io"
	"net"

	"golang.org/x/crypto/ssh"

	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/driver"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// sshConn is a Redfish BMC's SSH serial console: one session with a pty
// whose shell is the machine's serial port, as real BMCs offer it.
type sshConn struct {
	client  *ssh.Client
	session *ssh.Session
	in      io.WriteCloser
	out     io.Reader
}

// ssh connects to the BMC's SSH serial console with the partition's
// credentials. The host key is not checked: BMCs make their own keys, as
// they make their own TLS certificates, which metal-bmc does not verify
// either (docs/bmc.md); the BMC network is the perimeter.
func (s *Server) ssh(ctx context.Context, host, port string, c driver.Creds, w *agentv1.ConsoleWindow) (conn, error) {
	addr := net.JoinHostPort(host, port)
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ssh to %s: %w", addr, err)
	}
	// The handshake honours ctx through the connection's deadline.
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	cfg := &ssh.ClientConfig{
		User:            c.User,
		Auth:            []ssh.AuthMethod{ssh.Password(c.Password)},
		HostKeyCallback: ssh.InsecureIgnoreHostKey(), //nolint:gosec // see above
	}
	sc, chans, reqs, err := ssh.NewClientConn(raw, addr, cfg)
	if err != nil {
		_ = raw.Close()
		return nil, fmt.Errorf("ssh to %s: %w", addr, err)
	}
	_ = raw.SetDeadline(timeZero)
	client := ssh.NewClient(sc, chans, reqs)
	sess, err := client.NewSession()
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("ssh session: %w", err)
	}
	rows, cols := uint32(24), uint32(80)
	if w != nil {
		rows, cols = w.GetRows(), w.GetCols()
	}
	if err := sess.RequestPty("xterm", int(rows), int(cols), ssh.TerminalModes{ssh.ECHO: 0}); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("ssh pty: %w", err)
	}
	in, err := sess.StdinPipe()
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("ssh stdin: %w", err)
	}
	out, err := sess.StdoutPipe()
	if err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("ssh stdout: %w", err)
	}
	if err := sess.Shell(); err != nil {
		_ = client.Close()
		return nil, fmt.Errorf("ssh shell: %w", err)
	}
	return &sshConn{client: client, session: sess, in: in, out: out}, nil
}

func (c *sshConn) Read(p []byte) (int, error)  { return c.out.Read(p) }
func (c *sshConn) Write(p []byte) (int, error) { return c.in.Write(p) }
func (c *sshConn) Close() error                { return c.client.Close() }

// Resize sends the SSH window-change request.
func (c *sshConn) Resize(rows, cols uint32) error {
	return c.session.WindowChange(int(rows), int(cols))
}
