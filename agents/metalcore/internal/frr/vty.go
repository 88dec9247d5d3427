package frr

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"syscall"
	"time"
)

// VTY asks an FRR daemon directly over its vty socket
// (<Dir>/<daemon>.vty), the way vtysh itself talks to the daemons: the
// command, NUL-terminated; the answer is the command's output followed by
// three NULs and the command's result (0: success). Asking this way
// starts no process: vtysh costs ~0.4 s of CPU per call on a small
// switch CPU (it reads its config and connects to every daemon), which
// a poll every few seconds turns into a tenth of a core.
type VTY struct {
	// Dir holds the daemons' sockets (FRR's default /var/run/frr).
	Dir string
	// Timeout bounds one query (default 10 s).
	Timeout time.Duration
}

// DefaultVTYDir is where FRR puts its daemons' vty sockets.
const DefaultVTYDir = "/var/run/frr"

// ErrVTYUnavailable wraps a failure to reach the daemon's socket at all
// (none there, refused, not allowed): the daemon never saw the command.
var ErrVTYUnavailable = errors.New("vty socket unavailable")

// vtyTrailer ends every answer, followed by the result byte.
var vtyTrailer = []byte{0, 0, 0}

// Query runs command in daemon ("bgpd") and returns its output, at most
// limit bytes of it.
func (v VTY) Query(ctx context.Context, daemon, command string, limit int) ([]byte, error) {
	if bytes.IndexByte([]byte(command), 0) >= 0 {
		return nil, errors.New("vty: command contains NUL")
	}
	timeout := v.Timeout
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	path := filepath.Join(v.Dir, daemon+".vty")
	conn, err := dialVTY(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrVTYUnavailable, path, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()
	if _, err := conn.Write(append([]byte(command), 0)); err != nil {
		return nil, fmt.Errorf("vty %s: send %q: %w", daemon, command, err)
	}
	out, result, err := readAnswer(conn, limit)
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return nil, fmt.Errorf("vty %s: %q: %w", daemon, command, err)
	}
	if result != 0 {
		return nil, fmt.Errorf("vty %s: %q failed (result %d): %s", daemon, command, result, bytes.TrimSpace(out))
	}
	return out, nil
}

// dialVTY connects to a daemon's socket. FRR listens with a backlog of
// five: a connect while it is full fails with EAGAIN, which is retried.
func dialVTY(ctx context.Context, path string) (net.Conn, error) {
	var d net.Dialer
	for pause := 5 * time.Millisecond; ; pause = min(2*pause, 200*time.Millisecond) {
		conn, err := d.DialContext(ctx, "unix", path)
		if !errors.Is(err, syscall.EAGAIN) {
			return conn, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("%w (%w)", err, ctx.Err())
		case <-time.After(pause):
		}
	}
}

// readAnswer reads up to the trailer and its result byte.
func readAnswer(r io.Reader, limit int) (out []byte, result byte, err error) {
	buf := make([]byte, 0, 64<<10)
	chunk := make([]byte, 64<<10)
	for {
		n, rerr := r.Read(chunk)
		// Only the new bytes and the two before them can start the trailer.
		from := max(len(buf)-len(vtyTrailer), 0)
		buf = append(buf, chunk[:n]...)
		// The output itself holds no NUL: the first trailer ends it.
		end := -1
		if i := bytes.Index(buf[from:], vtyTrailer); i >= 0 {
			end = from + i
		}
		if end > limit || (end < 0 && len(buf) > limit+len(vtyTrailer)) {
			return nil, 0, fmt.Errorf("answer longer than %d bytes", limit)
		}
		if end >= 0 && len(buf) > end+len(vtyTrailer) {
			return buf[:end], buf[end+len(vtyTrailer)], nil
		}
		if rerr != nil {
			if errors.Is(rerr, io.EOF) {
				rerr = io.ErrUnexpectedEOF
			}
			return nil, 0, fmt.Errorf("read answer (%d bytes, no end): %w", len(buf), rerr)
		}
	}
}
