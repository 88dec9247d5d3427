package vm

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The test binary doubles as a fake QEMU: with fakeEnv set it reads the
// QMP socket from its arguments and speaks enough QMP for Machine.
const fakeEnv = "VM_TEST_FAKE_QEMU"

func TestMain(m *testing.M) {
	if os.Getenv(fakeEnv) == "1" {
		os.Exit(fakeQEMU(os.Args[1:]))
	}
	os.Exit(m.Run())
}

// fakeSpec is a Spec whose QEMU is this test binary.
func fakeSpec(t *testing.T) Spec {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(fakeEnv, "1")
	// A -race binary sleeps a second at exit by default: a fake QEMU
	// that quits must be gone at once.
	t.Setenv("GORACE", "atexit_sleep_ms=0")
	dir := t.TempDir()
	return Spec{Name: "fake", Dir: dir, QEMU: exe, Accel: "tcg", Firmware: "bios",
		NICs:            []NIC{{Tap: "tap0", MAC: "52:54:00:00:00:01", Boot: true}},
		Disk:            filepath.Join(dir, "disk.raw"),
		DiskSize:        1 << 20,
		ShutdownTimeout: time.Second}
}

// fakeQEMU holds an exclusive lock on <dir>/qemu.lock while it runs: a
// second instance of the same machine finds it taken, records a
// violation and fails. The kernel drops the lock however the process
// ends, before its parent can reap it.
func fakeQEMU(args []string) int {
	var sock, serialLog string
	for i, a := range args {
		if a == "-qmp" && i+1 < len(args) {
			sock, _, _ = strings.Cut(strings.TrimPrefix(args[i+1], "unix:"), ",")
		}
		if a == "-chardev" && i+1 < len(args) {
			for _, kv := range strings.Split(args[i+1], ",") {
				if v, ok := strings.CutPrefix(kv, "logfile="); ok {
					serialLog = v
				}
			}
		}
	}
	if sock == "" {
		fmt.Fprintln(os.Stderr, "fake qemu: no -qmp")
		return 2
	}
	dir := filepath.Dir(sock)
	lock, err := os.OpenFile(filepath.Join(dir, "qemu.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return 2
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		os.WriteFile(filepath.Join(dir, "violation"), []byte(fmt.Sprintf("pid %d: %v\n", os.Getpid(), err)), 0o600)
		return 3
	}
	if f, err := os.OpenFile(filepath.Join(dir, "starts"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
		fmt.Fprintln(f, strings.Join(args, " "))
		f.Close()
	}
	if serialLog != "" {
		os.WriteFile(serialLog, []byte("fake firmware\n"), 0o600)
	}
	l, err := net.Listen("unix", sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake qemu:", err)
		return 2
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return 2
		}
		if exit, code := fakeServe(c, dir); exit {
			return code
		}
	}
}

// fakeServe answers one QMP connection; it reports whether QEMU exits.
// qom-set calls are appended to <dir>/qom.
func fakeServe(c net.Conn, dir string) (bool, int) {
	defer c.Close()
	send := func(s string) { c.Write([]byte(s + "\r\n")) }
	send(`{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}`)
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		var cmd struct {
			Execute   string          `json:"execute"`
			Arguments json.RawMessage `json:"arguments"`
			ID        json.RawMessage `json:"id"`
		}
		if json.Unmarshal(sc.Bytes(), &cmd) != nil {
			send(`{"error": {"class": "GenericError", "desc": "JSON parse error"}}`)
			continue
		}
		id := string(cmd.ID)
		// An event before every reply keeps the client honest.
		send(`{"timestamp": {"seconds": 1, "microseconds": 0}, "event": "NIC_RX_FILTER_CHANGED", "data": {}}`)
		switch cmd.Execute {
		case "qmp_capabilities", "system_reset":
			send(`{"return": {}, "id": ` + id + `}`)
		case "qom-set":
			var a struct {
				Path  string `json:"path"`
				Value int    `json:"value"`
			}
			json.Unmarshal(cmd.Arguments, &a)
			if f, err := os.OpenFile(filepath.Join(dir, "qom"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600); err == nil {
				fmt.Fprintf(f, "%s=%d\n", filepath.Base(a.Path), a.Value)
				f.Close()
			}
			send(`{"return": {}, "id": ` + id + `}`)
		case "query-status":
			send(`{"return": {"status": "running", "running": true}, "id": ` + id + `}`)
		case "system_powerdown":
			send(`{"return": {}, "id": ` + id + `}`)
			if os.Getenv("VM_TEST_FAKE_IGNORE_ACPI") != "1" {
				time.Sleep(20 * time.Millisecond) // the guest shutting down
				send(`{"timestamp": {"seconds": 2, "microseconds": 0}, "event": "SHUTDOWN", "data": {"guest": true}}`)
				return true, 0
			}
		case "quit":
			send(`{"return": {}, "id": ` + id + `}`)
			return true, 0
		default:
			send(`{"error": {"class": "CommandNotFound", "desc": "no"}, "id": ` + id + `}`)
		}
	}
	return false, 0
}
