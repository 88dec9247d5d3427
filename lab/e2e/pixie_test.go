package e2e

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
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// TestPixieAgainstCentral runs the real metal-pixie against the real
// metal-central: enrolled with metalctl, it gets its partition's boot
// configuration, answers an iPXE script with a boot token central issued,
// serves the installer and central's CA, and the token it handed out is
// one an installer can exchange for its own credential.
func TestPixieAgainstCentral(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	bins := t.TempDir()
	central, ctl := build(t, bins)
	pixie := filepath.Join(bins, "metal-pixie")
	if out, err := exec.Command("go", "build", "-o", pixie, "../../agents/pixie/cmd/metal-pixie").CombinedOutput(); err != nil {
		t.Fatalf("go build metal-pixie: %v\n%s", err, out)
	}
	dir := dataDir(t)
	listen := freePort(t)
	cmd := startCentral(t, central, dir, listen)
	defer stopCentral(t, cmd)
	token, err := os.ReadFile(filepath.Join(dir, "admin.token"))
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(listen)
	caFile := filepath.Join(dir, "ca.crt")
	env := append(os.Environ(), "METALCTL_API_URL=localhost:"+port, "METALCTL_CA_FILE="+caFile,
		"METALCTL_API_TOKEN="+strings.TrimSpace(string(token)), "METALCTL_CONFIG="+filepath.Join(t.TempDir(), "config.yaml"))
	run := func(args ...string) string {
		t.Helper()
		c := exec.Command(ctl, args...)
		c.Env = env
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("metalctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out))
	}
	run("partition", "create", "--id", "lab", "--description", "lab", "--boot-cmdline", "console=ttyS0", "--allow-single-attach")
	secret := run("agent", "enroll", "--kind", "pixie", "--identity", "pixie-lab", "--partition", "lab", "-o", "template", "--template", "{{.secret}}")

	work := t.TempDir()
	kernel, initramfs := filepath.Join(work, "vmlinuz"), filepath.Join(work, "initramfs")
	if err := os.WriteFile(kernel, []byte("kernel bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initramfs, []byte("initramfs bytes"), 0o644); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(work, "pixie.token")
	if err := os.WriteFile(tokenFile, []byte(secret), 0o600); err != nil {
		t.Fatal(err)
	}
	httpAddr := freePort(t)
	p := exec.Command(pixie, "--name", "pixie-lab", "--central", "localhost:"+port, "--ca", caFile, "--token-file", tokenFile,
		"--state-dir", filepath.Join(work, "state"), "--tftp-listen", "", "--http-listen", httpAddr, "--public-url", "http://"+httpAddr,
		"--kernel", kernel, "--initramfs", initramfs)
	logf, err := os.Create(filepath.Join(work, "pixie.log"))
	if err != nil {
		t.Fatal(err)
	}
	p.Stdout, p.Stderr = logf, logf
	if err := p.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		_ = p.Process.Kill()
		_ = p.Wait()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("metal-pixie log:\n%s", b)
		}
	}()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + httpAddr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}

	// Once pixie has its document from central, a boot script carries
	// central's answer: the partition's cmdline and a fresh boot token.
	const mac = "52:54:00:12:34:56"
	var script string
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := get("/ipxe/boot.ipxe?mac=" + mac + "&arch=efi")
		if code == http.StatusOK && strings.Contains(body, "metal.boot_token=") && strings.Contains(body, "metal.partition=lab") {
			script = body
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no boot script with a token: %d %s", code, body)
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, want := range []string{"#!ipxe", "console=ttyS0", "metal.central=", "metal.ca=", "metal.pixie=http://" + httpAddr, "initrd"} {
		if !strings.Contains(script, want) {
			t.Fatalf("boot script lacks %q:\n%s", want, script)
		}
	}
	if code, body := get("/boot/vmlinuz"); code != http.StatusOK || body != "kernel bytes" {
		t.Fatalf("kernel: %d %q", code, body)
	}
	ca, _ := os.ReadFile(caFile)
	if code, body := get("/ca.pem"); code != http.StatusOK || body != string(ca) {
		t.Fatalf("ca.pem: %d, equal to central's CA: %v", code, body == string(ca))
	}
	if code, _ := get("/ipxe/boot.ipxe?mac=nonsense"); code != http.StatusBadRequest {
		t.Fatalf("bad mac: %d", code)
	}

	// The token pixie handed out is central's: an installer exchanges it.
	bootToken := regexp.MustCompile(`metal\.boot_token=(\S+)`).FindStringSubmatch(script)[1]
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	conn, err := grpc.NewClient("localhost:"+port, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "localhost"})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	st, err := agentv1.NewAgentServiceClient(conn).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The installer names its NICs: the token is good only for the MAC
	// pixie handed it out to.
	id := uuid.NewString()
	if err := st.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Hello{Hello: &agentv1.Hello{Kind: agentv1.Kind_KIND_INSTALLER, Identity: id,
		Credential: &agentv1.Credential{Secret: &agentv1.Credential_BootToken{BootToken: bootToken}},
		Facts:      &agentv1.Facts{Machine: &agentv1.MachineFacts{Uuid: id, Nics: []*agentv1.NICFact{{Name: "eth0", Mac: mac}}}}}}}); err != nil {
		t.Fatal(err)
	}
	w, err := st.Recv()
	if err != nil || !strings.HasPrefix(w.GetWelcome().GetIssuedToken(), "mfa_") {
		t.Fatalf("exchanging pixie's boot token: %v %v", w, err)
	}

	// Pixie reported the boot to central.
	deadline = time.Now().Add(20 * time.Second)
	for !strings.Contains(run("agent", "describe", "pixie/pixie-lab"), "PXE Booting") {
		if time.Now().After(deadline) {
			t.Fatalf("no PXE Booting event of pixie at central:\n%s", run("agent", "describe", "pixie/pixie-lab"))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
