package frr

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// startBGPD runs a real bgpd (Debian's FRR) with its vty socket in a
// directory of the test's, no zebra, no BGP listener, and one neighbour
// that never answers. Skipped without FRR (make deps installs it).
func startBGPD(t *testing.T) string {
	t.Helper()
	bin := "/usr/lib/frr/bgpd"
	if _, err := os.Stat(bin); err != nil {
		t.Skip("bgpd not installed (make deps installs Debian's frr)")
	}
	// A short path: a unix socket's path has at most 107 bytes.
	dir, err := os.MkdirTemp("", "vty")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	conf := filepath.Join(dir, "bgpd.conf")
	if err := os.WriteFile(conf, []byte("router bgp 65001\n bgp router-id 10.0.0.1\n neighbor 127.0.0.2 remote-as 65002\n neighbor 127.0.0.2 description lab\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-f", conf, "-i", filepath.Join(dir, "bgpd.pid"), "--vty_socket", dir, "-P", "0", "-Z", "-S", "-p", "0")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	sock := filepath.Join(dir, "bgpd.vty")
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return dir
		}
		if time.Now().After(deadline) {
			t.Fatalf("bgpd's vty socket %s did not appear", sock)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestVTYRealBGPD asks a real bgpd over its socket and compares the
// sessions with what vtysh, FRR's own client, reads from the same bgpd.
func TestVTYRealBGPD(t *testing.T) {
	dir := startBGPD(t)
	ctx := t.Context()
	got, via, err := BGP{VTY: VTY{Dir: dir}}.Sessions(ctx)
	if err != nil || via != "vty" {
		t.Fatalf("sessions via %s: %v", via, err)
	}
	if len(got) != 1 || got[0].Vrf != "default" || got[0].Port != "127.0.0.2" || got[0].RemoteAs != 65002 {
		t.Fatalf("sessions %v, want the one neighbour 127.0.0.2 AS 65002 in default", got)
	}
	out, err := exec.Command(vtysh(t), "--vty_socket", dir, "-c", neighborsCommand).Output()
	if err != nil {
		t.Fatalf("vtysh: %v", err)
	}
	want, err := ParseNeighbors(out)
	if err != nil {
		t.Fatal(err)
	}
	key := func(s []*agentv1.BgpSessionFact) []string {
		var k []string
		for _, x := range s {
			k = append(k, fmt.Sprint(x.Vrf, " ", x.Port, " ", x.PeerGroup, " ", x.RemoteAs, " ", x.State))
		}
		return k
	}
	if !slices.Equal(key(got), key(want)) {
		t.Errorf("over the socket %v, through vtysh %v", key(got), key(want))
	}

	// Many queries, one after another and at once: no connection left
	// behind, every answer whole.
	errs := make(chan error, 16)
	for range 16 {
		go func() {
			out, err := VTY{Dir: dir}.Query(ctx, "bgpd", "show bgp summary json", 1<<20)
			if err == nil && !strings.Contains(string(out), `"as":65001`) {
				err = errors.New("summary without the local AS: " + string(out))
			}
			errs <- err
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}

	// A command bgpd does not know fails with its message.
	_, err = VTY{Dir: dir}.Query(ctx, "bgpd", "show no such thing", 1<<20)
	if err == nil || !strings.Contains(err.Error(), "Unknown command") {
		t.Errorf("unknown command: %v", err)
	}
	// An answer longer than the limit is refused, not cut.
	if _, err := (VTY{Dir: dir}).Query(ctx, "bgpd", neighborsCommand, 100); err == nil || !strings.Contains(err.Error(), "longer than 100") {
		t.Errorf("limit: %v", err)
	}
}

// fakeVTY answers each connection with answer (after delay).
func fakeVTY(t *testing.T, answer []byte, delay time.Duration) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "vty")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	l, err := net.Listen("unix", filepath.Join(dir, "bgpd.vty"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 1024)
				_, _ = c.Read(buf)
				time.Sleep(delay)
				// In pieces: the trailer may be split across reads.
				for i := 0; i < len(answer); i += 3 {
					_, _ = c.Write(answer[i:min(i+3, len(answer))])
				}
			}()
		}
	}()
	return dir
}

func TestVTYProtocol(t *testing.T) {
	tests := []struct {
		name   string
		answer string
		delay  time.Duration
		want   string // output, or a part of the error
		ok     bool
	}{
		{"output", "{\"a\":1}\n\x00\x00\x00\x00", 0, "{\"a\":1}\n", true},
		{"empty", "\x00\x00\x00\x00", 0, "", true},
		{"warning result", "% bad\n\x00\x00\x00\x02", 0, "failed (result 2): % bad", false},
		{"closed without end", "{\"a\":", 0, "unexpected EOF", false},
		{"trailer without result", "x\x00\x00\x00", 0, "unexpected EOF", false},
		{"silent daemon", "", time.Minute, "deadline exceeded", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := fakeVTY(t, []byte(tt.answer), tt.delay)
			out, err := VTY{Dir: dir, Timeout: 300 * time.Millisecond}.Query(t.Context(), "bgpd", "show x", 1<<20)
			switch {
			case tt.ok && (err != nil || string(out) != tt.want):
				t.Errorf("got %q, %v; want %q", out, err, tt.want)
			case !tt.ok && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("got %q, %v; want an error with %q", out, err, tt.want)
			}
		})
	}
}

// TestBGPFallsBackToVtysh: without bgpd's socket the sessions come from
// vtysh; a bgpd that answers badly over its socket is an error, not a
// reason to ask again through vtysh.
func TestBGPFallsBackToVtysh(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("testdata", "neighbors-frr8.4.json"))
	if err != nil {
		t.Fatal(err)
	}
	r := &runner{out: b}
	got, via, err := BGP{VTY: VTY{Dir: t.TempDir()}, Runner: r}.Sessions(t.Context())
	if err != nil || via != "vtysh" || len(got) != 2 || len(r.calls) != 1 {
		t.Fatalf("no socket: %d sessions via %s, %v, calls %v", len(got), via, err, r.calls)
	}
	r = &runner{err: errors.New("vtysh: exit status 1")}
	_, _, err = BGP{VTY: VTY{Dir: t.TempDir()}, Runner: r}.Sessions(t.Context())
	if !errors.Is(err, ErrVTYUnavailable) || !errors.Is(err, syscall.ENOENT) || !strings.Contains(err.Error(), "exit status 1") {
		t.Errorf("neither reachable: %v, want both reasons", err)
	}
	r = &runner{out: b}
	dir := fakeVTY(t, []byte("% bgpd is busy\x00\x00\x00\x01"), 0)
	if _, via, err := (BGP{VTY: VTY{Dir: dir}, Runner: r}).Sessions(t.Context()); err == nil || via != "vty" || len(r.calls) != 0 {
		t.Errorf("bad answer: via %s, %v, calls %v", via, err, r.calls)
	}
}

// FuzzReadAnswer: whatever a daemon sends, the reader returns output
// without the trailer and within the limit, or an error; never a panic.
func FuzzReadAnswer(f *testing.F) {
	f.Add([]byte("{\"a\":1}\n\x00\x00\x00\x00"), 64)
	f.Add([]byte("\x00\x00\x00"), 8)
	f.Add([]byte("x\x00\x00\x00\x00\x00\x00\x00\x01"), 1)
	f.Fuzz(func(t *testing.T, b []byte, limit int) {
		limit = max(limit%(1<<16), 0)
		out, _, err := readAnswer(strings.NewReader(string(b)), limit)
		if err != nil {
			return
		}
		if len(out) > limit || strings.Contains(string(out), "\x00\x00\x00") {
			t.Fatalf("output %q (limit %d) from %q", out, limit, b)
		}
	})
}
