package console

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/creack/pty"

	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/driver"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

var timeZero time.Time

// solConn is `ipmitool sol activate` in a pty: ipmitool wants a terminal,
// and the pty's size is the window the machine sees.
type solConn struct {
	pty  *os.File
	cmd  *exec.Cmd
	once sync.Once
	done chan struct{}
}

// ipmitoolArgs are the arguments for one ipmitool run against host:port.
// The password is never one of them: ipmitool reads it from the
// environment (-E), so it shows in no process list.
func (s *Server) ipmitoolArgs(host, port string, c driver.Creds, args ...string) []string {
	return append([]string{"-I", "lanplus", "-C", s.cfg.CipherSuite, "-H", host, "-p", port, "-U", c.User, "-E"}, args...)
}

func (s *Server) ipmitoolEnv(c driver.Creds) []string {
	// Both names: ipmitool reads IPMITOOL_PASSWORD (IPMI_PASSWORD in older
	// releases) with -E.
	return []string{"IPMITOOL_PASSWORD=" + c.Password, "IPMI_PASSWORD=" + c.Password, "PATH=/usr/bin:/bin", "TERM=xterm"}
}

// sol activates serial-over-LAN. A stale session (another console, or one
// of a metal-bmc that died) would refuse the activation ("SOL payload
// already active"), so it is deactivated first; that fails harmlessly when
// there is none. connectCtx bounds the deactivation, ctx the session.
func (s *Server) sol(connectCtx, ctx context.Context, host, port string, c driver.Creds, w *agentv1.ConsoleWindow) (conn, error) {
	deact := exec.CommandContext(connectCtx, s.cfg.Ipmitool, s.ipmitoolArgs(host, port, c, "sol", "deactivate")...)
	deact.Env = s.ipmitoolEnv(c)
	_ = deact.Run()

	cmd := exec.CommandContext(ctx, s.cfg.Ipmitool, s.ipmitoolArgs(host, port, c, "sol", "activate")...)
	cmd.Env = s.ipmitoolEnv(c)
	size := &pty.Winsize{Rows: 24, Cols: 80}
	if w != nil {
		size = &pty.Winsize{Rows: uint16(w.GetRows()), Cols: uint16(w.GetCols())}
	}
	f, err := pty.StartWithSize(cmd, size)
	if err != nil {
		return nil, fmt.Errorf("start %s sol activate: %w", s.cfg.Ipmitool, err)
	}
	sc := &solConn{pty: f, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(sc.done) }()
	// ipmitool exits at once when it cannot activate; a session that is
	// still there after a moment is up.
	select {
	case <-sc.done:
		buf := make([]byte, 512)
		n, _ := f.Read(buf)
		_ = f.Close()
		return nil, fmt.Errorf("ipmitool sol activate ended: %s", clean(string(buf[:n])))
	case <-time.After(500 * time.Millisecond):
	case <-connectCtx.Done():
		_ = sc.Close()
		return nil, connectCtx.Err()
	}
	return sc, nil
}

func (c *solConn) Read(p []byte) (int, error) { return c.pty.Read(p) }

func (c *solConn) Write(p []byte) (int, error) { return c.pty.Write(p) }

// Close ends ipmitool (which ends the SOL session on the BMC) and the pty.
func (c *solConn) Close() error {
	c.once.Do(func() {
		if c.cmd.Process != nil {
			_ = c.cmd.Process.Kill()
		}
		<-c.done
		_ = c.pty.Close()
	})
	return nil
}

// Resize sets the pty's size; ipmitool's SOL has no window change of its
// own, the machine's side reads the size the pty has.
func (c *solConn) Resize(rows, cols uint32) error {
	return pty.Setsize(c.pty, &pty.Winsize{Rows: uint16(rows), Cols: uint16(cols)})
}

// clean keeps ipmitool's message readable and short.
func clean(s string) string {
	out := make([]rune, 0, len(s))
	for _, r := range s {
		if r == '\r' || r == '\n' {
			r = ' '
		}
		if r >= ' ' && r != 0x7f {
			out = append(out, r)
		}
	}
	if len(out) > 300 {
		out = out[:300]
	}
	return string(out)
}
