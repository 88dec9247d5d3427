package image_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestProvisionWithRealCentralAndPixie is the provisioning chain with the
// real parts: metal-central (embedded PostgreSQL), metal-pixie (its HTTP
// side: boot script with central's answer and token, CA, image cache) and
// the installer initramfs in QEMU (TCG), booted with the kernel command
// line pixie's script gives (iPXE and DHCP are the lab's: QEMU user
// networking reaches central and pixie on the host through guestfwd). The
// machine registers and waits; `metalctl machine create --wait` allocates it
// and returns when the installed lab image phoned home.
func TestProvisionWithRealCentralAndPixie(t *testing.T) {
	if testing.Short() {
		t.Skip("boots two systems under QEMU")
	}
	root := repoRoot(t)
	a := needArtifacts(t, root)
	kernel, initramfs, imagePath, imageSHA, qemu := a.kernel, a.initramfs, a.image, a.imageSHA, a.qemu

	bins := t.TempDir()
	for name, pkg := range map[string]string{"metal-central": "central/cmd/metal-central", "metalctl": "metalctl/cmd/metalctl", "metal-pixie": "agents/pixie/cmd/metal-pixie"} {
		c := exec.Command("go", "build", "-o", filepath.Join(bins, name), "./"+pkg)
		c.Dir = root
		if out, err := c.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", pkg, err, out)
		}
	}
	logs := t.TempDir()
	logFile := func(name string) *os.File {
		f, err := os.Create(filepath.Join(logs, name))
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	showLogs := func() {
		for _, n := range []string{"central.log", "pixie.log"} {
			b, _ := os.ReadFile(filepath.Join(logs, n))
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			t.Logf("%s (tail):\n%s", n, b)
		}
	}

	// Central, with the address the VM reaches it at.
	data, err := os.MkdirTemp("", "metalfleet-chain-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(data) })
	if err := os.Chmod(data, 0o711); err != nil {
		t.Fatal(err)
	}
	data = filepath.Join(data, "central")
	listen := freeAddr(t)
	central := exec.Command(filepath.Join(bins, "metal-central"), "--data-dir", data, "--listen", listen, "--metrics-listen", "",
		"--durable=false", "--tls-hosts", hostAddr, "--advertise", hostAddr+":9000")
	central.Stderr = logFile("central.log")
	stdout, err := central.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := central.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = central.Process.Kill(); _ = central.Wait() }()
	up := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		once := sync.Once{}
		for sc.Scan() {
			if strings.Contains(sc.Text(), "is serving the API") {
				once.Do(func() { close(up) })
			}
		}
	}()
	select {
	case <-up:
	case <-time.After(90 * time.Second):
		showLogs()
		t.Fatal("metal-central did not come up")
	}
	token, err := os.ReadFile(filepath.Join(data, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(data, "ca.crt")
	env := append(os.Environ(), "METALCTL_API_URL="+listen, "METALCTL_CA_FILE="+caFile,
		"METALCTL_API_TOKEN="+strings.TrimSpace(string(token)), "METALCTL_CONFIG="+filepath.Join(t.TempDir(), "config.yaml"))
	ctl := func(args ...string) (string, error) {
		c := exec.Command(filepath.Join(bins, "metalctl"), args...)
		c.Env = env
		out, err := c.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	must := func(args ...string) string {
		t.Helper()
		out, err := ctl(args...)
		if err != nil {
			showLogs()
			t.Fatalf("metalctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}

	// The image, served from this host; pixie caches it for the VM.
	il, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	isrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, imagePath) })}
	go isrv.Serve(il)
	defer isrv.Close()

	must("partition", "create", "--id", "lab", "--description", "chain test", "--boot-cmdline", "console=ttyS0 panic=1", "--dns-server", "10.0.2.3", "--allow-single-attach")
	must("size", "create", "--id", "s1", "--cores", "1-8", "--memory", "256MiB-8GiB", "--storage", "1GiB-100GiB")
	must("image", "create", "--id", "lab-1", "--os", "metal-lab", "--version", "1.0.0",
		"--url", "http://"+il.Addr().String()+"/metal-lab-image.tar.zst", "--sha256", imageSHA)
	must("network", "create", "--id", "internet", "--type", "external", "--prefix", "10.0.2.0/24")
	must("tenant", "create", "--id", "t1")
	project := must("project", "create", "--tenant", "t1", "--name", "p1")
	secret := must("agent", "enroll", "--kind", "pixie", "--identity", "pixie-lab", "--partition", "lab", "-o", "template", "--template", "{{.secret}}")

	// Pixie's HTTP side.
	work := t.TempDir()
	tokenFile := filepath.Join(work, "pixie.token")
	if err := os.WriteFile(tokenFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	httpAddr := freeAddr(t)
	pixie := exec.Command(filepath.Join(bins, "metal-pixie"), "--name", "pixie-lab", "--central", listen, "--ca", caFile,
		"--token-file", tokenFile, "--state-dir", filepath.Join(work, "pixie"), "--tftp-listen", "", "--http-listen", httpAddr,
		"--public-url", "http://"+hostAddr, "--kernel", kernel, "--initramfs", initramfs)
	pixie.Stdout, pixie.Stderr = logFile("pixie.log"), logFile("pixie.err.log")
	pixie.Stderr = pixie.Stdout
	if err := pixie.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = pixie.Process.Kill(); _ = pixie.Wait() }()

	// The kernel line of the script pixie serves this MAC.
	var cmdline string
	deadline := time.Now().Add(30 * time.Second)
	for cmdline == "" {
		resp, err := http.Get("http://" + httpAddr + "/ipxe/boot.ipxe?mac=" + vmMAC + "&arch=bios")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if m := regexp.MustCompile(`(?m)^kernel\s+\S+\s+(.*metal\.boot_token=.*)$`).FindStringSubmatch(string(b)); m != nil {
				cmdline = strings.TrimSpace(m[1])
			}
		}
		if time.Now().After(deadline) {
			showLogs()
			t.Fatal("pixie served no boot script with a token")
		}
		time.Sleep(200 * time.Millisecond)
	}

	disk := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 2<<30); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	_, hport, _ := net.SplitHostPort(httpAddr)
	_, cport, _ := net.SplitHostPort(listen)
	vm := exec.CommandContext(ctx, qemu, "-accel", "tcg", "-cpu", "max", "-m", "1024", "-nographic", "-no-reboot",
		"-kernel", kernel, "-initrd", initramfs, "-append", cmdline, "-smbios", "type=1,uuid="+vmUUID,
		"-netdev", fmt.Sprintf("user,id=n0,restrict=on,guestfwd=tcp:%s:80-cmd:%s,guestfwd=tcp:%s:9000-cmd:%s",
			hostAddr, proxyCmd(tcpAddr("127.0.0.1:"+hport)), hostAddr, proxyCmd(tcpAddr("127.0.0.1:"+cport))),
		"-device", "virtio-net-pci,netdev=n0,mac="+vmMAC, "-drive", "file="+disk+",if=virtio,format=raw")
	serialLog := logFile("serial.log")
	vm.Stdout, vm.Stderr = serialLog, serialLog
	start := time.Now()
	if err := vm.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = vm.Process.Kill(); _ = vm.Wait() }()
	fail := func(format string, args ...any) {
		t.Helper()
		b, _ := os.ReadFile(serialLog.Name())
		if len(b) > 8000 {
			b = b[len(b)-8000:]
		}
		t.Logf("serial console (tail):\n%s", b)
		showLogs()
		logsOut, _ := ctl("machine", "logs", vmUUID)
		t.Logf("machine events:\n%s", logsOut)
		t.Fatalf(format, args...)
	}

	// Power on → Waiting.
	for {
		out, err := ctl("machine", "describe", vmUUID, "-o", "json")
		var m struct {
			Provisioning string `json:"provisioning"`
			SizeID       string `json:"size_id"`
		}
		if err == nil && json.Unmarshal([]byte(out), &m) == nil && m.Provisioning == "waiting" {
			if m.SizeID != "s1" {
				fail("machine waits with size %q, want s1", m.SizeID)
			}
			break
		}
		if time.Since(start) > 4*time.Minute {
			fail("machine not Waiting 4 minutes after power-on (last: %s %v)", out, err)
		}
		time.Sleep(time.Second)
	}
	waiting := time.Since(start)

	// Allocate → Phoned Home, with the CLI a tenant uses.
	allocStart := time.Now()
	out, err := ctl("machine", "create", "--project", project, "--partition", "lab", "--size", "s1", "--image", "lab-1",
		"--networks", "internet", "--hostname", "web-1", "--wait", "--wait-timeout", "6m")
	if err != nil {
		fail("machine create --wait: %v\n%s", err, out)
	}
	phoned := time.Since(allocStart)
	if !strings.Contains(out, "Phoned Home") {
		fail("create --wait ended without Phoned Home:\n%s", out)
	}
	t.Logf("power-on → Waiting %.1fs, allocate → Phoned Home %.1fs (QEMU TCG, no KVM)\n%s", waiting.Seconds(), phoned.Seconds(), out)
}

// artifacts are what the QEMU tests boot and install.
type artifacts struct{ kernel, initramfs, image, imageSHA, qemu string }

// needArtifacts finds the installer, the lab image and QEMU, or skips.
func needArtifacts(t *testing.T, root string) artifacts {
	t.Helper()
	a := artifacts{
		kernel:    filepath.Join(root, "build/installer/vmlinuz"),
		initramfs: filepath.Join(root, "build/installer/initramfs.cpio.gz"),
		image:     filepath.Join(root, "build/lab-image/metal-lab-image.tar.zst"),
	}
	for _, p := range []string{a.kernel, a.initramfs, a.image, a.image + ".sha256"} {
		if _, err := os.Stat(p); err != nil {
			skip(t, "%s missing: run `make installer-image lab-image` first", p)
		}
	}
	var err error
	if a.qemu, err = exec.LookPath("qemu-system-x86_64"); err != nil {
		skip(t, "qemu-system-x86_64 missing (apt-get install qemu-system-x86)")
	}
	shaLine, err := os.ReadFile(a.image + ".sha256")
	if err != nil || len(strings.Fields(string(shaLine))) == 0 {
		t.Fatalf("read %s.sha256: %v", a.image, err)
	}
	a.imageSHA = strings.Fields(string(shaLine))[0]
	return a
}

// skip skips a test whose prerequisites are missing, unless
// METALFLEET_E2E=1 (make provision-e2e, CI) says they must be there: then
// a missing artifact is a failure, not a silent pass.
func skip(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("METALFLEET_E2E") == "1" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}

type tcpAddr string

func (a tcpAddr) Network() string { return "tcp" }
func (a tcpAddr) String() string  { return string(a) }

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
