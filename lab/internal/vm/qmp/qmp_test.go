package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}`

// fakeQEMU serves one QMP connection on a unix socket. handle answers a
// command with the raw lines to send (events and the reply); nil closes
// the connection.
func fakeQEMU(t *testing.T, greet string, handle func(cmd map[string]any) []string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := c.Write([]byte(greet + "\r\n")); err != nil {
			return
		}
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			var cmd map[string]any
			if err := json.Unmarshal(sc.Bytes(), &cmd); err != nil {
				c.Write([]byte(`{"error": {"class": "GenericError", "desc": "JSON parse error"}}` + "\r\n"))
				continue
			}
			lines := handle(cmd)
			if lines == nil {
				return
			}
			for _, ln := range lines {
				ln = strings.ReplaceAll(ln, "$ID", idJSON(cmd))
				if _, err := c.Write([]byte(ln + "\r\n")); err != nil {
					return
				}
			}
		}
	}()
	return path
}

func idJSON(cmd map[string]any) string {
	b, _ := json.Marshal(cmd["id"])
	return string(b)
}

const event = `{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "NIC_RX_FILTER_CHANGED", "data": {"path": "/machine/peripheral/nic0"}}`

// standard answers like QEMU, with an event before and after every reply.
func standard(cmd map[string]any) []string {
	switch cmd["execute"] {
	case "qmp_capabilities":
		return []string{`{"return": {}, "id": $ID}`}
	case "query-status":
		return []string{event, `{"return": {"status": "running", "singlestep": false, "running": true}, "id": $ID}`, event}
	case "system_reset":
		return []string{`{"return": {}, "id": $ID}`, `{"timestamp": {"seconds": 3, "microseconds": 0}, "event": "RESET", "data": {"guest": false, "reason": "host-qmp-system-reset"}}`}
	case "quit":
		return nil
	}
	return []string{`{"id": $ID, "error": {"class": "CommandNotFound", "desc": "The command ` + cmd["execute"].(string) + ` has not been found"}}`}
}

func TestClient(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var mu sync.Mutex
	var events []string
	c, err := Dial(ctx, fakeQEMU(t, greeting, standard), func(ev Event) {
		mu.Lock()
		events = append(events, ev.Name)
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if g := c.Greeting(); g.QMP.Version.QEMU.Major != 7 || g.QMP.Version.Package != "Debian" {
		t.Errorf("greeting = %+v", g)
	}

	st, err := c.QueryStatus(ctx)
	if err != nil || !st.Running || st.Status != "running" {
		t.Fatalf("query-status = %+v, %v", st, err)
	}
	if err := c.Execute(ctx, "system_reset", nil, nil); err != nil {
		t.Fatal(err)
	}

	err = c.Execute(ctx, "no-such-command", map[string]string{"x": "y"}, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || !strings.Contains(qe.Desc, "no-such-command") {
		t.Fatalf("unknown command: %v", err)
	}

	// Concurrent commands each get their own reply.
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if st, err := c.QueryStatus(ctx); err != nil || st.Status != "running" {
				t.Errorf("concurrent query-status = %+v, %v", st, err)
			}
		})
	}
	wg.Wait()

	// quit: the fake hangs up without replying, as QEMU may.
	if err := c.Execute(ctx, "quit", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("quit = %v, want ErrClosed", err)
	}
	<-c.Done()
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close = %v, want ErrClosed", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(events) < 18 || !containsStr(events, "RESET") {
		t.Errorf("events = %v", events)
	}
}

func containsStr(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

func TestDialErrors(t *testing.T) {
	tests := []struct {
		name   string
		greet  string
		handle func(map[string]any) []string
		want   string
	}{
		{"not qmp", `{"hello": 1}`, standard, "not a QMP greeting"},
		{"capabilities refused", greeting, func(cmd map[string]any) []string {
			return []string{`{"error": {"class": "GenericError", "desc": "nope"}, "id": $ID}`}
		}, "nope"},
		// A reply without id (QEMU could not parse the command) goes to
		// the one command outstanding.
		{"reply without id", greeting, func(cmd map[string]any) []string {
			return []string{`{"error": {"class": "GenericError", "desc": "no id"}}`}
		}, "no id"},
		{"hang up", greeting, func(map[string]any) []string { return nil }, "closed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := Dial(ctx, fakeQEMU(t, tc.greet, tc.handle), nil)
			if err == nil {
				c.Close()
				t.Fatal("Dial succeeded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Dial = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestContextEnds(t *testing.T) {
	// A server that greets and then never answers.
	path := fakeQEMU(t, greeting, func(cmd map[string]any) []string {
		if cmd["execute"] == "qmp_capabilities" {
			return []string{`{"return": {}, "id": $ID}`}
		}
		return []string{event}
	})
	ctx := context.Background()
	c, err := Dial(ctx, path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	if err := c.Execute(tctx, "query-status", nil, nil); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Execute = %v, want deadline exceeded", err)
	}

	// No greeting at all: Dial gives up with its context.
	l, err := net.Listen("unix", filepath.Join(t.TempDir(), "silent.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			time.Sleep(2 * time.Second)
			c.Close()
		}
	}()
	cctx, ccancel := context.WithCancel(ctx)
	time.AfterFunc(100*time.Millisecond, ccancel)
	if _, err := Dial(cctx, l.Addr().String(), nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Dial without greeting = %v, want canceled", err)
	}
}

// brokenConn fails every write once broken is set, as a unix socket whose
// peer (QEMU, exiting) has hung up fails with EPIPE before the reader has
// seen the end of the stream.
type brokenConn struct {
	net.Conn
	mu     sync.Mutex
	broken bool
}

func (b *brokenConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	broken := b.broken
	b.mu.Unlock()
	if broken {
		return 0, &net.OpError{Op: "write", Net: "unix", Err: syscall.EPIPE}
	}
	return b.Conn.Write(p)
}

func TestWriteErrorIsClosed(t *testing.T) {
	path := fakeQEMU(t, greeting, standard)
	ctx := context.Background()
	raw, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	conn := &brokenConn{Conn: raw}
	c, err := NewClient(ctx, conn, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn.mu.Lock()
	conn.broken = true
	conn.mu.Unlock()
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Execute over a hung-up socket = %v, want ErrClosed", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("connection not ended after a write error")
	}
	if err := c.Execute(ctx, "query-status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Execute after the write error = %v, want ErrClosed", err)
	}
}
