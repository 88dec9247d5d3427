package console

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/driver"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// centralSide is central's end of one AgentService.Console stream, as
// the dial hands it to Serve: what Serve sends arrives on sent, what the
// test puts on recv Serve receives (closed: central ended the stream).
type centralSide struct {
	grpc.ClientStream
	ctx  context.Context
	sent chan *agentv1.ConsoleRequest
	recv chan *agentv1.ConsoleResponse
}

func (c *centralSide) Send(f *agentv1.ConsoleRequest) error {
	select {
	case c.sent <- f:
		return nil
	case <-c.ctx.Done():
		return c.ctx.Err()
	}
}

func (c *centralSide) Recv() (*agentv1.ConsoleResponse, error) {
	select {
	case f, ok := <-c.recv:
		if !ok {
			return nil, io.EOF
		}
		return f, nil
	case <-c.ctx.Done():
		return nil, c.ctx.Err()
	}
}

func (c *centralSide) CloseSend() error { return nil }

// ipmiSOL starts OpenIPMI's ipmi_sim with SOL on a TCP "serial port" the
// test listens on (ipmi_sim connects to it, as to QEMU's serial socket).
func ipmiSOL(t *testing.T) (addr string, serial net.Listener) {
	t.Helper()
	for _, bin := range []string{"ipmi_sim", "ipmitool"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("%s not installed (make deps): the IPMI console is not tested", bin)
		}
	}
	dir := t.TempDir()
	serial, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { serial.Close() })
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	conf := fmt.Sprintf(`name "console-test"
set_working_mc 0x20
startlan 1
  addr 127.0.0.1 %d
  priv_limit admin
  allowed_auths_admin none md2 md5 straight
  guid 5c1f7a523f9e4bb19d550d7c2c1a0003
endlan
sol "tcp:%s" 115200
user 2 true "admin" "s3cret" admin 10 none md2 md5 straight
`, port, serial.Addr().String())
	emu := "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n"
	for name, content := range map[string]string{"lan.conf": conf, "sim.emu": emu} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ipmi_sim", "-c", filepath.Join(dir, "lan.conf"), "-f", filepath.Join(dir, "sim.emu"), "-s", filepath.Join(dir, "state"), "-n")
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("ipmi_sim:\n%s", log.String())
		}
	})
	return fmt.Sprintf("127.0.0.1:%d", port), serial
}

// TestSOLBothWays runs a console session over IPMI serial-over-LAN:
// metal-bmc's Serve against ipmi_sim through the real ipmitool in a pty;
// the machine's output reaches central, keystrokes reach the machine, and
// central's end ends ipmitool. The password is in no argument.
func TestSOLBothWays(t *testing.T) {
	addr, serial := ipmiSOL(t)
	s, err := New(Config{Creds: func() driver.Creds { return driver.Creds{User: "admin", Password: "s3cret"} }, Timeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 90*time.Second)
	defer cancel()
	side := &centralSide{ctx: ctx, sent: make(chan *agentv1.ConsoleRequest, 64), recv: make(chan *agentv1.ConsoleResponse, 8)}
	var dial agent.ConsoleDial = func(context.Context) (agentv1.AgentService_ConsoleClient, error) { return side, nil }
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.Serve(ctx, &agentv1.ConsoleOpen{SessionId: "s1", MachineId: "m1", Address: addr, Protocol: agentv1.BmcProtocol_BMC_PROTOCOL_IPMI,
			Window: &agentv1.ConsoleWindow{Rows: 30, Cols: 100}}, dial)
	}()
	first := <-side.sent
	if first.GetSessionId() != "s1" || first.GetEnd() != "" {
		t.Fatalf("first frame %v, want the session joined", first)
	}
	// ipmi_sim connects to the serial port once SOL is active.
	serialc := make(chan net.Conn, 1)
	go func() {
		c, err := serial.Accept()
		if err == nil {
			serialc <- c
		}
	}()
	var machine net.Conn
	select {
	case machine = <-serialc:
		defer machine.Close()
	case <-ctx.Done():
		t.Fatal("ipmi_sim did not connect to the serial port")
	}
	// Keystrokes reach the machine, until they do (SOL may take a moment).
	got := make(chan string, 1)
	go func() {
		var all []byte
		buf := make([]byte, 1024)
		for !bytes.Contains(all, []byte("typed-over-sol")) {
			n, err := machine.Read(buf)
			all = append(all, buf[:n]...)
			if err != nil {
				break
			}
		}
		got <- string(all)
	}()
	side.recv <- &agentv1.ConsoleResponse{Data: []byte("typed-over-sol\r")}
	select {
	case g := <-got:
		if !strings.Contains(g, "typed-over-sol") {
			t.Fatalf("the machine read %q", g)
		}
	case <-ctx.Done():
		t.Fatal("keystrokes did not reach the machine")
	}
	// The machine's output reaches central.
	if _, err := machine.Write([]byte("output-over-sol\r\n")); err != nil {
		t.Fatal(err)
	}
	var out []byte
	for !bytes.Contains(out, []byte("output-over-sol")) {
		select {
		case f := <-side.sent:
			if f.GetEnd() != "" {
				t.Fatalf("ended: %s (output so far %q)", f.GetEnd(), out)
			}
			out = append(out, f.GetData()...)
		case <-ctx.Done():
			t.Fatalf("the machine's output did not reach central: %q", out)
		}
	}
	// A window change is taken (the pty's size).
	side.recv <- &agentv1.ConsoleResponse{Window: &agentv1.ConsoleWindow{Rows: 50, Cols: 132}}
	// Central ends the session: Serve returns and ipmitool is gone.
	side.recv <- &agentv1.ConsoleResponse{End: "the machine's allocation changed"}
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("Serve did not return after central's end")
	}
}

// TestConnectFailure: a BMC that does not answer ends the session with
// the reason in the first frame.
func TestConnectFailure(t *testing.T) {
	s, err := New(Config{Creds: func() driver.Creds { return driver.Creds{User: "admin", Password: "x"} }, SSHPort: 1, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	side := &centralSide{ctx: ctx, sent: make(chan *agentv1.ConsoleRequest, 4), recv: make(chan *agentv1.ConsoleResponse)}
	close(side.recv)
	s.Serve(ctx, &agentv1.ConsoleOpen{SessionId: "s2", Address: "https://127.0.0.1", Protocol: agentv1.BmcProtocol_BMC_PROTOCOL_REDFISH},
		func(context.Context) (agentv1.AgentService_ConsoleClient, error) { return side, nil })
	f := <-side.sent
	if f.GetSessionId() != "s2" || !strings.Contains(f.GetEnd(), "cannot open the BMC's console") || !strings.Contains(f.GetEnd(), "127.0.0.1:1") {
		t.Errorf("first frame %v, want the session's end naming the BMC", f)
	}
}

// TestPasswordNotInArguments: ipmitool gets the password from the
// environment only, never in its argument list (the process list).
func TestPasswordNotInArguments(t *testing.T) {
	s, err := New(Config{Creds: func() driver.Creds { return driver.Creds{} }})
	if err != nil {
		t.Fatal(err)
	}
	c := driver.Creds{User: "admin", Password: "pw-in-env-only"}
	args := strings.Join(s.ipmitoolArgs("10.0.0.1", "623", c, "sol", "activate"), " ")
	if strings.Contains(args, c.Password) || !strings.Contains(args, "-E") {
		t.Errorf("ipmitool %s: want -E and no password", args)
	}
	if env := strings.Join(s.ipmitoolEnv(c), " "); !strings.Contains(env, "IPMITOOL_PASSWORD="+c.Password) {
		t.Errorf("environment %q: want IPMITOOL_PASSWORD", env)
	}
}

func TestSplitAddress(t *testing.T) {
	for _, tc := range []struct{ in, host, port string }{
		{"10.0.0.1", "10.0.0.1", ""},
		{"10.0.0.1:623", "10.0.0.1", "623"},
		{"https://bmc.example:8443", "bmc.example", "8443"},
		{"https://bmc.example/", "bmc.example", ""},
		{"[fd00::1]:623", "fd00::1", "623"},
		{"fd00::1", "fd00::1", ""},
	} {
		h, p, err := splitAddress(tc.in)
		if err != nil || h != tc.host || p != tc.port {
			t.Errorf("splitAddress(%q) = %q, %q, %v; want %q, %q", tc.in, h, p, err, tc.host, tc.port)
		}
	}
}
