package image_test

// TestInstallLabImageInQEMU runs the whole provisioning flow for real, as far
// as it can without the rest of the fleet: the installer initramfs boots in
// QEMU (TCG) against a fake central (gRPC, TLS with a pinned CA) and a fake
// pixie (HTTP: CA, image cache), registers, waits, installs the lab image
// onto the VM's disk (GPT, vfat ESP + ext4 root), kexecs into it, and the
// installed system comes up with the allocation's address and phones home.
//
// It needs `make installer-image lab-image` first and skips without them.

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

const (
	vmUUID    = "6a0e1b3c-2d4f-4a5b-8c6d-7e8f9a0b1c2d"
	vmMAC     = "52:54:00:e2:e0:01"
	bootToken = "mfb_e2e-boot"
	issued    = "mfa_e2e-machine"
	hostAddr  = "10.0.2.100" // guestfwd address of central and pixie
)

// fleet is the fake central of this test.
type fleet struct {
	agentv1.UnimplementedAgentServiceServer
	alloc *agentv1.MachineAllocation

	mu     sync.Mutex
	events map[agentv1.Kind][]*agentv1.Event
	hellos []*agentv1.Hello
	seen   chan string // event types as they arrive
}

func (f *fleet) Sync(stream agentv1.AgentService_SyncServer) error {
	m, err := stream.Recv()
	if err != nil {
		return err
	}
	h := m.GetHello()
	f.mu.Lock()
	f.hellos = append(f.hellos, h)
	f.mu.Unlock()
	welcome := &agentv1.Welcome{AgentId: h.GetKind().String(), HeartbeatInterval: durationpb.New(10 * time.Second)}
	switch {
	case h.GetIdentity() != vmUUID:
		return status.Error(codes.PermissionDenied, "unknown identity")
	case h.GetKind() == agentv1.Kind_KIND_INSTALLER && h.GetCredential().GetBootToken() == bootToken:
		welcome.IssuedToken = issued
	case h.GetKind() == agentv1.Kind_KIND_PHONEHOME && h.GetCredential().GetToken() == issued:
	default:
		return status.Error(codes.Unauthenticated, "bad credential")
	}
	if err := stream.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Welcome{Welcome: welcome}}); err != nil {
		return err
	}
	rev := uint64(0)
	send := func(md *agentv1.MachineDocument) error {
		rev++
		return stream.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Desired{Desired: &agentv1.Desired{Revision: rev, Machine: md}}})
	}
	if h.GetKind() == agentv1.Kind_KIND_PHONEHOME {
		if err := send(&agentv1.MachineDocument{MachineId: vmUUID, Allocation: f.alloc}); err != nil {
			return err
		}
	}
	for {
		m, err := stream.Recv()
		if err != nil {
			return err
		}
		for _, e := range m.GetReport().GetEvents() {
			f.mu.Lock()
			f.events[h.GetKind()] = append(f.events[h.GetKind()], e)
			f.mu.Unlock()
			select {
			case f.seen <- e.GetType():
			default:
			}
			var err error
			switch e.GetType() {
			case "Registering":
				err = send(&agentv1.MachineDocument{MachineId: vmUUID})
			case "Waiting":
				err = send(&agentv1.MachineDocument{MachineId: vmUUID, Allocation: f.alloc})
			}
			if err != nil {
				return err
			}
		}
	}
}

func repoRoot(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(wd, "..", "..")
}

func TestInstallLabImageInQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("boots two systems under QEMU (about two minutes)")
	}
	root := repoRoot(t)
	a := needArtifacts(t, root)
	kernel, initramfs, imagePath, imageSHA, qemu := a.kernel, a.initramfs, a.image, a.imageSHA, a.qemu

	caPEM, caSum, cert := testPKI(t)

	f := &fleet{events: map[agentv1.Kind][]*agentv1.Event{}, seen: make(chan string, 256),
		alloc: &agentv1.MachineAllocation{
			Id: "alloc-e2e", ProjectId: "p", Hostname: "web-1",
			Image: &agentv1.ImageRef{Id: "metal-lab-1", Os: "metal-lab", Version: "1", Url: "http://images.invalid/metal-lab-image.tar.zst", Sha256: imageSHA},
			Layout: &agentv1.Layout{
				Disks: []*agentv1.Disk{{Device: "/dev/vda", WipeOnReinstall: true, Partitions: []*agentv1.DiskPartition{
					{Number: 1, Label: "efi", SizeBytes: 64 << 20, GptType: "ef00"},
					{Number: 2, Label: "root", GptType: "8300"},
				}}},
				Filesystems: []*agentv1.Filesystem{
					{Path: "/boot/efi", Device: "/dev/vda1", Format: "vfat"},
					{Path: "/", Device: "/dev/vda2", Format: "ext4", Label: "root"},
				},
			},
			Networks:      []*agentv1.MachineNetwork{{NetworkId: "lab", Prefixes: []string{"10.0.2.0/24"}, Ips: []string{"10.0.2.15"}}},
			SshPublicKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2e e2e@test"},
			DnsServers:    []string{"10.0.2.3"},
		}}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewServerTLSFromCert(&cert)))
	agentv1.RegisterAgentServiceServer(srv, f)
	go srv.Serve(lis)
	defer srv.Stop()

	mux := http.NewServeMux()
	mux.HandleFunc("GET /ca.pem", func(w http.ResponseWriter, r *http.Request) { w.Write(caPEM) })
	imageHits := 0
	mux.HandleFunc("GET /images/{sha}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("sha") != imageSHA || r.URL.Query().Get("url") != f.alloc.Image.Url {
			http.NotFound(w, r)
			return
		}
		imageHits++
		http.ServeFile(w, r, imagePath)
	})
	hl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: mux}
	go hs.Serve(hl)
	defer hs.Close()

	disk := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 2<<30); err != nil {
		t.Fatal(err)
	}
	cmdline := fmt.Sprintf("console=ttyS0 panic=1 metal.central=%s:9000 metal.partition=lab metal.ca=%s metal.pixie=http://%s metal.boot_token=%s",
		hostAddr, caSum, hostAddr, bootToken)
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, qemu, "-accel", "tcg", "-cpu", "max", "-m", "1024", "-nographic", "-no-reboot",
		"-kernel", kernel, "-initrd", initramfs, "-append", cmdline,
		"-smbios", "type=1,uuid="+vmUUID,
		"-netdev", fmt.Sprintf("user,id=n0,restrict=on,guestfwd=tcp:%s:80-cmd:%s,guestfwd=tcp:%s:9000-cmd:%s", hostAddr, proxyCmd(hl.Addr()), hostAddr, proxyCmd(lis.Addr())),
		"-device", "virtio-net-pci,netdev=n0,mac="+vmMAC,
		"-drive", "file="+disk+",if=virtio,format=raw")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()

	var serialMu sync.Mutex
	var serial []string
	marks := map[string]time.Duration{}
	want := []string{"metal-installer up", "metal-lab: init up", "metal-lab: web-1 ready: eth0 10.0.2.15/24"}
	allMarks := make(chan struct{})
	go func() {
		lines := bufio.NewScanner(out)
		for lines.Scan() {
			line := strings.TrimRight(lines.Text(), "\r")
			serialMu.Lock()
			serial = append(serial, fmt.Sprintf("[%6.2f] %s", time.Since(start).Seconds(), line))
			for _, w := range want {
				if _, ok := marks[w]; !ok && strings.Contains(line, w) {
					marks[w] = time.Since(start)
					if len(marks) == len(want) {
						close(allMarks)
					}
				}
			}
			serialMu.Unlock()
		}
	}()
	dump := func() {
		serialMu.Lock()
		defer serialMu.Unlock()
		t.Logf("serial console:\n%s", strings.Join(serial, "\n"))
	}
	select {
	case <-allMarks:
	case <-ctx.Done():
		dump()
		t.Fatalf("saw only %v on the console", marks)
	}
	// The installed system's phonehome reports within a few seconds.
	deadline := time.After(60 * time.Second)
	for phoned := false; !phoned; {
		select {
		case typ := <-f.seen:
			phoned = typ == "Phoned Home"
		case <-deadline:
			dump()
			f.mu.Lock()
			for _, h := range f.hellos {
				t.Logf("hello %v %s", h.GetKind(), h.GetIdentity())
			}
			f.mu.Unlock()
			t.Fatal("no Phoned Home from the installed system")
		}
	}
	phonedAt := time.Since(start)

	f.mu.Lock()
	defer f.mu.Unlock()
	var types []string
	var last string
	for _, e := range f.events[agentv1.Kind_KIND_INSTALLER] {
		if e.GetType() != last {
			types = append(types, e.GetType())
		}
		last = e.GetType()
	}
	if got := strings.Join(types, ","); got != "Preparing,Registering,Waiting,Installing,Booting New Kernel" {
		dump()
		t.Fatalf("installer events %s", got)
	}
	if imageHits != 1 {
		t.Errorf("image fetched %d times through pixie's cache, want 1", imageHits)
	}
	var phone *agentv1.Hello
	for _, h := range f.hellos {
		if h.GetKind() == agentv1.Kind_KIND_PHONEHOME {
			phone = h
		}
	}
	if phone == nil {
		t.Fatal("no phonehome hello")
	}
	serialMu.Lock()
	defer serialMu.Unlock()
	t.Logf("installer up %.1fs, installed system's init %.1fs, ready %.1fs, Phoned Home %.1fs after QEMU started",
		marks[want[0]].Seconds(), marks[want[1]].Seconds(), marks[want[2]].Seconds(), phonedAt.Seconds())
	for _, e := range f.events[agentv1.Kind_KIND_INSTALLER] {
		t.Logf("  %s %s %s", e.GetTime().AsTime().Format("15:04:05.0"), e.GetType(), e.GetMessage())
	}
	for _, e := range f.events[agentv1.Kind_KIND_PHONEHOME] {
		t.Logf("  %s %s %s", e.GetTime().AsTime().Format("15:04:05.0"), e.GetType(), e.GetMessage())
	}
}

// A guestfwd to a tcp: chardev carries one connection for the whole life
// of QEMU; the installed system must connect again after the kexec. With
// cmd:, slirp starts the command per connection: this test binary, as a
// stdin/stdout <-> TCP proxy.
const proxyEnv = "METAL_E2E_PROXY_TO"

func proxyCmd(addr net.Addr) string {
	return fmt.Sprintf("env %s=%s %s -test.run=^TestStdioProxyHelper$", proxyEnv, addr, os.Args[0])
}

func TestStdioProxyHelper(t *testing.T) {
	addr := os.Getenv(proxyEnv)
	if addr == "" {
		return
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		os.Exit(1)
	}
	done := make(chan struct{}, 2)
	go func() { io.Copy(c, os.Stdin); c.(*net.TCPConn).CloseWrite(); done <- struct{}{} }()
	go func() { io.Copy(os.Stdout, c); done <- struct{}{} }()
	<-done
	<-done
	os.Exit(0)
}

// testPKI is a CA and a certificate for central at hostAddr.
func testPKI(t *testing.T) (caPEM []byte, caSum string, cert tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "e2e CA"},
		NotBefore: time.Now().Add(-24 * time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "central"},
		NotBefore: time.Now().Add(-24 * time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP(hostAddr)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(caDER)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), hex.EncodeToString(sum[:]),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}
