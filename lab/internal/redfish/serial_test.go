package redfish

import (
	"bytes"
	"context"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// TestSerialConsole: the BMC's SSH serial console refuses a wrong
// password, attaches a session's shell to the machine's serial socket
// (bytes both ways) and records the window size.
func TestSerialConsole(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "serial.sock")
	serial, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer serial.Close()
	sc, err := NewSerialConsole(SerialConfig{User: "admin", Password: "right", Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- sc.Serve(ctx, ln) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}()
	dial := func(pw string) (*ssh.Client, error) {
		return ssh.Dial("tcp", ln.Addr().String(), &ssh.ClientConfig{User: "admin", Auth: []ssh.AuthMethod{ssh.Password(pw)},
			HostKeyCallback: ssh.InsecureIgnoreHostKey(), Timeout: 10 * time.Second})
	}
	if _, err := dial("wrong"); err == nil || !strings.Contains(err.Error(), "unable to authenticate") {
		t.Fatalf("wrong password: %v, want refused", err)
	}
	client, err := dial("right")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := sess.RequestPty("xterm", 33, 99, ssh.TerminalModes{}); err != nil {
		t.Fatal(err)
	}
	in, _ := sess.StdinPipe()
	out, _ := sess.StdoutPipe()
	if err := sess.Shell(); err != nil {
		t.Fatal(err)
	}
	machine, err := serial.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer machine.Close()
	if r, c := sc.Window(); r != 33 || c != 99 {
		t.Errorf("window %dx%d, want 33x99", r, c)
	}
	if _, err := in.Write([]byte("typed")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	_ = machine.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := machine.Read(buf)
	if err != nil || string(buf[:n]) != "typed" {
		t.Fatalf("the machine read %q, %v", buf[:n], err)
	}
	if _, err := machine.Write([]byte("output")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 0, 64)
	for !bytes.Contains(got, []byte("output")) {
		n, err := out.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			t.Fatalf("ssh read %q: %v", got, err)
		}
	}
	if err := sess.WindowChange(40, 120); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for r, c := sc.Window(); r != 40 || c != 120; r, c = sc.Window() {
		if time.Now().After(deadline) {
			t.Fatalf("window %dx%d, want 40x120", r, c)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The machine's side closing ends the SSH session.
	machine.Close()
	waitDone := make(chan error, 1)
	go func() { waitDone <- sess.Wait() }()
	select {
	case <-waitDone:
	case <-time.After(10 * time.Second):
		t.Fatal("the session did not end with the serial socket")
	}
}
