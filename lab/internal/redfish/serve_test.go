package redfish

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stmcginnis/gofish"
	"github.com/stmcginnis/gofish/redfish"

	"github.com/metalfleet/metalfleet/lab/internal/vm"
)

func TestLoadOrCreateCert(t *testing.T) {
	dir := t.TempDir()
	crt, key := filepath.Join(dir, "bmc.crt"), filepath.Join(dir, "bmc.key")
	c1, err := LoadOrCreateCert(crt, key, []string{"127.0.0.1", "bmc.example"})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(key); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key: %v, %v", fi, err)
	}
	leaf, err := x509.ParseCertificate(c1.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) || leaf.DNSNames[0] != "bmc.example" {
		t.Errorf("SANs: %v %v", leaf.IPAddresses, leaf.DNSNames)
	}
	// Pinning the file verifies the certificate for its IP.
	pem, _ := os.ReadFile(crt)
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "127.0.0.1"}); err != nil {
		t.Errorf("verify: %v", err)
	}
	// A second start loads the same pair.
	c2, err := LoadOrCreateCert(crt, key, nil)
	if err != nil || string(c2.Certificate[0]) != string(c1.Certificate[0]) {
		t.Fatalf("reload: %v", err)
	}
	// Half a pair is refused, not overwritten.
	os.Remove(key)
	if _, err := LoadOrCreateCert(crt, key, nil); err == nil {
		t.Fatal("certificate without key accepted")
	}
}

// TestServeQEMU runs a BMC as `metal-lab bmc` does, with a real QEMU
// (TCG, no NIC, empty disk), and drives it with gofish over TLS pinned
// to the certificate the BMC made.
func TestServeQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: no real QEMU")
	}
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Skip("qemu-system-x86_64 not installed (apt-get install -y qemu-system-x86 ovmf ipxe-qemu)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	ready := make(chan [2]net.Addr, 1)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- Serve(sctx, ServeConfig{
			Machine: vm.Spec{Name: "m1", UUID: "5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0001", MemoryMiB: 256, Firmware: "bios",
				Disk: filepath.Join(dir, "disk.raw"), DiskSize: 16 << 20, Dir: dir, QEMU: qemu, ShutdownTimeout: time.Second},
			BMC:           Config{User: user, Password: pass},
			Listen:        "127.0.0.1:0",
			MetricsListen: "127.0.0.1:0",
			TLSCert:       filepath.Join(dir, "bmc.crt"),
			TLSKey:        filepath.Join(dir, "bmc.key"),
			PowerOn:       true,
			Ready:         func(r, m net.Addr) { ready <- [2]net.Addr{r, m} },
		})
	}()
	var addrs [2]net.Addr
	select {
	case addrs = <-ready:
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	}

	pem, err := os.ReadFile(filepath.Join(dir, "bmc.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	c, err := gofish.ConnectContext(ctx, gofish.ClientConfig{Endpoint: "https://" + addrs[0].String(), Username: user, Password: pass, HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Logout()
	system := func() *redfish.ComputerSystem {
		t.Helper()
		ss, err := c.Service.Systems()
		if err != nil || len(ss) != 1 {
			t.Fatalf("Systems: %v, %v", ss, err)
		}
		return ss[0]
	}
	sys := system()
	if sys.PowerState != redfish.OnPowerState || sys.Boot.BootSourceOverrideMode != redfish.LegacyBootSourceOverrideMode {
		t.Fatalf("after --power-on: %s, mode %s", sys.PowerState, sys.Boot.BootSourceOverrideMode)
	}
	if err := sys.SetBoot(redfish.Boot{BootSourceOverrideEnabled: redfish.OnceBootSourceOverrideEnabled, BootSourceOverrideTarget: redfish.HddBootSourceOverrideTarget}); err != nil {
		t.Fatal(err)
	}
	for _, rt := range []redfish.ResetType{redfish.ForceRestartResetType, redfish.PowerCycleResetType, redfish.ForceOffResetType} {
		if err := sys.Reset(rt); err != nil {
			t.Fatalf("%s: %v", rt, err)
		}
	}
	if sys = system(); sys.PowerState != redfish.OffPowerState || sys.Boot.BootSourceOverrideEnabled != redfish.DisabledBootSourceOverrideEnabled {
		t.Fatalf("after ForceOff: %s, override %s (the restart should have used it up)", sys.PowerState, sys.Boot.BootSourceOverrideEnabled)
	}
	if err := sys.Reset(redfish.OnResetType); err != nil {
		t.Fatal(err)
	}
	if sys = system(); sys.PowerState != redfish.OnPowerState {
		t.Fatalf("after On: %s", sys.PowerState)
	}
	// The disk boot needed a QEMU with another boot order.
	if b, _ := os.ReadFile(filepath.Join(dir, "qemu.log")); !strings.Contains(string(b), `boot "disk"`) {
		t.Errorf("qemu.log has no disk boot:\n%s", b)
	}

	resp, err := http.Get("http://" + addrs[1].String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`metalfleet_lab_bmc_power_actions_total{action="ForceRestart",result="ok"} 1`, `metalfleet_lab_bmc_requests_total{code="201",method="POST",resource="sessions"} 1`, "go_goroutines"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %s", want)
		}
	}

	// Stopping the BMC forces the machine off.
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if conn, err := net.Dial("unix", filepath.Join(dir, "qmp.sock")); err == nil {
		conn.Close()
		t.Fatal("QEMU still answers QMP after the BMC stopped")
	}
}
