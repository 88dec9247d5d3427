package run

import (
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
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/metalfleet/metalfleet/installer/internal/boot"
	"github.com/metalfleet/metalfleet/installer/internal/config"
	"github.com/metalfleet/metalfleet/installer/internal/image"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

const (
	machineUUID = "4C4C4544-0042-3510-8052-B4C04F384D32"
	issuedToken = "mfa_issued-credential"
	imageSHA    = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
)

var testMAC = net.HardwareAddr{0x52, 0x54, 0x00, 0xaa, 0xbb, 0xcc}

// pki is a CA and a server certificate for 127.0.0.1 signed by it.
type pki struct {
	caPEM  []byte
	caSum  string
	server tls.Certificate
}

func newPKI(t *testing.T) pki {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "central"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(caDER)
	return pki{
		caPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		caSum:  hex.EncodeToString(sum[:]),
		server: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
	}
}

// central is a fake AgentService: it welcomes installers, records what they
// report and sends the documents a test scripts from the events.
type central struct {
	agentv1.UnimplementedAgentServiceServer
	refuse map[string]bool // boot tokens to refuse

	mu      sync.Mutex
	hellos  []*agentv1.Hello
	events  []*agentv1.Event
	facts   []*agentv1.Facts
	applied uint64
	rev     uint64
	// onEvent scripts the test; it may call send.
	onEvent func(c *central, e *agentv1.Event)
	out     chan *agentv1.Desired
}

func (c *central) send(m *agentv1.MachineDocument) {
	c.mu.Lock()
	c.rev++
	d := &agentv1.Desired{Revision: c.rev, Machine: m}
	c.mu.Unlock()
	c.out <- d
}

func (c *central) Sync(stream agentv1.AgentService_SyncServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	h := first.GetHello()
	c.mu.Lock()
	c.hellos = append(c.hellos, h)
	c.mu.Unlock()
	if h == nil || h.GetKind() != agentv1.Kind_KIND_INSTALLER {
		return status.Error(codes.InvalidArgument, "hello expected")
	}
	if c.refuse[h.GetCredential().GetBootToken()] {
		return status.Error(codes.Unauthenticated, "boot token spent")
	}
	if err := stream.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Welcome{Welcome: &agentv1.Welcome{
		AgentId: "agent-1", IssuedToken: issuedToken, HeartbeatInterval: durationpb.New(time.Second)}}}); err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				errc <- err
				return
			}
			r := m.GetReport()
			if r == nil {
				continue
			}
			c.mu.Lock()
			c.events = append(c.events, r.GetEvents()...)
			if r.GetFacts() != nil {
				c.facts = append(c.facts, r.GetFacts())
			}
			c.applied = max(c.applied, r.GetAppliedRevision())
			script := c.onEvent
			c.mu.Unlock()
			for _, e := range r.GetEvents() {
				if script != nil {
					script(c, e)
				}
			}
		}
	}()
	for {
		select {
		case d := <-c.out:
			if err := stream.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Desired{Desired: d}}); err != nil {
				return err
			}
		case err := <-errc:
			if errors.Is(err, io.EOF) {
				return nil // the installer closed in order, as central answers
			}
			return err
		case <-stream.Context().Done():
			return stream.Context().Err()
		}
	}
}

// eventTypes is what this central received. No waiting: the installer
// closes its stream in order before kexec or reboot, and that returns
// only after the server read everything.
func (c *central) eventTypes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, e := range c.events {
		out = append(out, e.GetType())
	}
	return out
}

// squash collapses runs of the same type: the progress events vary.
func squash(types []string) []string {
	var out []string
	for _, t := range types {
		if len(out) == 0 || out[len(out)-1] != t {
			out = append(out, t)
		}
	}
	return out
}

// fakeHW is the machine.
type fakeHW struct {
	t        *testing.T
	target   string
	checksum bool // Stream fails with a mismatch

	mu       sync.Mutex
	calls    []string
	wipes    [][]string
	streamed []string
	ph       config.Phonehome
	sys      config.System
}

func newFakeHW(t *testing.T) *fakeHW {
	return &fakeHW{t: t, target: t.TempDir()}
}

func (h *fakeHW) call(s string) {
	h.mu.Lock()
	h.calls = append(h.calls, s)
	h.mu.Unlock()
}

func (h *fakeHW) callList() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.calls...)
}

func (h *fakeHW) NetworkUp(context.Context) (Lease, error) {
	h.call("network")
	return Lease{Interface: "eth0", MAC: testMAC, Address: netip.MustParsePrefix("10.0.2.15/24"), Router: netip.MustParseAddr("10.0.2.2")}, nil
}

func (h *fakeHW) Collect(context.Context) (*agentv1.MachineFacts, error) {
	h.call("collect")
	return &agentv1.MachineFacts{Uuid: machineUUID, Cores: 2, MemoryBytes: 1 << 30,
		Disks: []*agentv1.DiskFact{{Name: "vda", SizeBytes: 10e9}, {Name: "vdb", SizeBytes: 20e9}},
		Nics:  []*agentv1.NICFact{{Name: "eth0", Mac: testMAC.String()}}}, nil
}

func (h *fakeHW) Neighbours(_ context.Context, ifaces []string, _ time.Duration) (map[string][]*agentv1.LLDPNeighbour, error) {
	h.call("lldp")
	return map[string][]*agentv1.LLDPNeighbour{ifaces[0]: {{ChassisId: "leaf01", PortId: "swp7"}}}, nil
}

func (h *fakeHW) Wipe(_ context.Context, devices []string) error {
	h.call("wipe")
	h.mu.Lock()
	h.wipes = append(h.wipes, devices)
	h.mu.Unlock()
	return nil
}

func (h *fakeHW) Apply(_ context.Context, l *agentv1.Layout, reinstall bool) (*Installed, error) {
	h.call("apply")
	return &Installed{Target: h.target, Fstab: "UUID=r / ext4 defaults 0 1\n", RootUUID: "r", Devices: []string{"/dev/vda"},
		Unmount: func(context.Context) error { h.call("unmount"); return nil }}, nil
}

func (h *fakeHW) Stream(_ context.Context, url, sha, target string, progress func(read, total int64)) error {
	h.call("stream")
	h.mu.Lock()
	h.streamed = append(h.streamed, url)
	h.mu.Unlock()
	const total = 286_000_000
	for _, n := range []int64{0, 60e6, 120e6, 200e6, total} {
		progress(n, total)
		if h.checksum && n >= 200e6 {
			return fmt.Errorf("%w: sha256 deadbeef, want %s", image.ErrChecksum, sha)
		}
	}
	return os.WriteFile(filepath.Join(target, "image"), []byte("x"), 0o644)
}

func (h *fakeHW) WriteConfig(_ context.Context, target string, doc *agentv1.MachineDocument, ph config.Phonehome, sys config.System) error {
	h.call("config")
	h.mu.Lock()
	h.ph, h.sys = ph, sys
	h.mu.Unlock()
	return nil
}

func (h *fakeHW) PrepareBoot(_ context.Context, inst *Installed) (boot.Spec, error) {
	h.call("boot")
	return boot.Spec{Kernel: inst.Target + "/boot/vmlinuz-6.1", Cmdline: "root=UUID=" + inst.RootUUID}, nil
}

func (h *fakeHW) LoadKernel(context.Context, boot.Spec) error { h.call("load"); return nil }
func (h *fakeHW) Kexec(context.Context) error                 { h.call("kexec"); return nil }
func (h *fakeHW) Reboot(context.Context) error                { h.call("reboot"); return nil }

// lab is central, pixie and the machine of one test.
type lab struct {
	central    *central
	hw         *fakeHW
	cfg        Config
	tokenAsks  []string
	tokenAskMu sync.Mutex
	// caFailures: pixie answers /ca.pem with 503 this many times first.
	caFailures atomic.Int32
}

func newLab(t *testing.T, script func(c *central, e *agentv1.Event)) *lab {
	t.Helper()
	p := newPKI(t)
	l := &lab{hw: newFakeHW(t)}
	l.central = &central{refuse: map[string]bool{}, onEvent: script, out: make(chan *agentv1.Desired, 16)}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewServerTLSFromCert(&p.server)))
	agentv1.RegisterAgentServiceServer(srv, l.central)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /ca.pem", func(w http.ResponseWriter, r *http.Request) {
		if l.caFailures.Add(-1) >= 0 {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		w.Write(p.caPEM)
	})
	mux.HandleFunc("GET /v1/boot-token", func(w http.ResponseWriter, r *http.Request) {
		l.tokenAskMu.Lock()
		l.tokenAsks = append(l.tokenAsks, r.URL.Query().Get("mac"))
		l.tokenAskMu.Unlock()
		fmt.Fprintf(w, `{"boot_token": "fresh-token", "expires_at": "%s"}`, time.Now().Add(time.Hour).Format(time.RFC3339))
	})
	px := httptest.NewServer(mux)
	t.Cleanup(px.Close)

	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	l.cfg = Config{
		Cmdline: Cmdline{Centrals: []string{lis.Addr().String()}, Partition: "p1", CA: p.caSum,
			Pixie: px.URL, BootToken: "cmdline-token"},
		Hardware: l.hw, StateDir: t.TempDir(), Version: "test", Log: log,
		LLDPWait: time.Millisecond, FlushTimeout: 5 * time.Second, ProgressInterval: time.Hour,
		RebootDelay: time.Nanosecond, MinBackoff: 10 * time.Millisecond, MaxBackoff: 100 * time.Millisecond,
	}
	return l
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

func allocation() *agentv1.MachineAllocation {
	return &agentv1.MachineAllocation{Id: "alloc-1", Hostname: "web-1",
		Image:  &agentv1.ImageRef{Id: "lab-1", Url: "http://images.example/lab.tar.zst", Sha256: imageSHA},
		Layout: &agentv1.Layout{Disks: []*agentv1.Disk{{Device: "/dev/vda"}}}}
}

// standardScript registers the machine after "Registering" (a document
// without machine id first) and allocates it after "Waiting".
func standardScript(c *central, e *agentv1.Event) {
	switch e.GetType() {
	case EventRegistering:
		c.send(&agentv1.MachineDocument{})
		c.send(&agentv1.MachineDocument{MachineId: strings.ToLower(machineUUID)})
	case EventWaiting:
		c.send(&agentv1.MachineDocument{MachineId: strings.ToLower(machineUUID), Allocation: allocation()})
	}
}

func runLab(t *testing.T, l *lab) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return Run(ctx, l.cfg)
}

func TestRunInstallsAndKexecs(t *testing.T) {
	l := newLab(t, standardScript)
	// The cmdline's token was spent by an earlier boot: the installer
	// must get a fresh one from pixie and lose no event doing so.
	l.central.refuse["cmdline-token"] = true
	// Pixie is still starting: the CA comes on the third try.
	l.caFailures.Store(2)

	if err := runLab(t, l); err != nil {
		t.Fatalf("Run: %v", err)
	}

	want := []string{EventPreparing, EventRegistering, EventWaiting, EventInstalling, EventBooting}
	got := l.central.eventTypes()
	if s := squash(got); strings.Join(s, ",") != strings.Join(want, ",") {
		t.Fatalf("events %q, want %q", got, want)
	}
	for _, typ := range []string{EventPreparing, EventRegistering, EventWaiting, EventBooting} {
		n := 0
		for _, g := range got {
			if g == typ {
				n++
			}
		}
		if n != 1 {
			t.Errorf("%q reported %d times across the agent hand-over, want once", typ, n)
		}
	}
	var progress []string
	for _, e := range l.central.events {
		if e.GetType() == EventInstalling && strings.HasPrefix(e.GetMessage(), "image ") {
			progress = append(progress, e.GetMessage())
		}
	}
	// Quarters only: the interval is an hour in this test.
	wantProgress := []string{"image 41% (120/286 MB)", "image 69% (200/286 MB)", "image 100% (286/286 MB)", "image written: 286 MB in 0 s"}
	if strings.Join(progress, "|") != strings.Join(wantProgress, "|") {
		t.Errorf("progress %q\nwant     %q", progress, wantProgress)
	}

	calls := strings.Join(l.hw.callList(), ",")
	if calls != "network,collect,lldp,wipe,apply,stream,config,boot,load,unmount,kexec" {
		t.Errorf("hardware calls %s", calls)
	}

	// Hellos: the refused cmdline token, then pixie's fresh one for the
	// MAC that got the lease; identity is the lower-case DMI UUID.
	if len(l.central.hellos) != 2 || l.central.hellos[0].GetCredential().GetBootToken() != "cmdline-token" ||
		l.central.hellos[1].GetCredential().GetBootToken() != "fresh-token" {
		t.Fatalf("hellos %v", l.central.hellos)
	}
	for _, h := range l.central.hellos {
		if h.GetIdentity() != strings.ToLower(machineUUID) {
			t.Errorf("identity %q", h.GetIdentity())
		}
	}
	if len(l.tokenAsks) != 1 || l.tokenAsks[0] != testMAC.String() {
		t.Errorf("boot token requests %v", l.tokenAsks)
	}

	// Registering carried the facts, LLDP neighbours included.
	if len(l.central.facts) != 1 || l.central.facts[0].GetMachine().GetNics()[0].GetNeighbours()[0].GetPortId() != "swp7" {
		t.Errorf("facts %v", l.central.facts)
	}
	if w := l.hw.wipes; len(w) != 1 || strings.Join(w[0], ",") != "/dev/vda,/dev/vdb" {
		t.Errorf("wipes %v", w)
	}
	// The image came through pixie's cache.
	if s := l.hw.streamed; len(s) != 1 || !strings.HasPrefix(s[0], l.cfg.Cmdline.Pixie+"/images/"+imageSHA+"?url=http%3A%2F%2Fimages.example%2Flab.tar.zst") {
		t.Errorf("streamed %v", s)
	}
	// metal-phonehome gets the issued credential and the pinned CA.
	if l.hw.ph.Token != issuedToken || l.hw.ph.MachineID != strings.ToLower(machineUUID) || !strings.Contains(string(l.hw.ph.CAPEM), "BEGIN CERTIFICATE") {
		t.Errorf("phonehome %+v", l.hw.ph)
	}
	if l.hw.sys.NIC != "eth0" || l.hw.sys.MAC != testMAC.String() || l.hw.sys.Fstab == "" {
		t.Errorf("system %+v", l.hw.sys)
	}
}

func TestRunChecksumMismatchCrashesWipesAndReboots(t *testing.T) {
	l := newLab(t, standardScript)
	l.hw.checksum = true

	err := runLab(t, l)
	if !errors.Is(err, image.ErrChecksum) {
		t.Fatalf("Run: %v, want a checksum error", err)
	}
	got := squash(l.central.eventTypes())
	want := []string{EventPreparing, EventRegistering, EventWaiting, EventInstalling, EventCrashed}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("events %q, want %q", got, want)
	}
	last := l.central.events[len(l.central.events)-1]
	if !strings.HasPrefix(last.GetMessage(), "image checksum mismatch") {
		t.Errorf("crash message %q", last.GetMessage())
	}
	calls := strings.Join(l.hw.callList(), ",")
	if calls != "network,collect,lldp,wipe,apply,stream,unmount,wipe,reboot" {
		t.Errorf("hardware calls %s", calls)
	}
	// After the mismatch exactly the layout's disks are wiped.
	if w := l.hw.wipes; len(w) != 2 || strings.Join(w[1], ",") != "/dev/vda" {
		t.Errorf("wipes %v", w)
	}
}

func TestRunWipesOncePerGeneration(t *testing.T) {
	id := strings.ToLower(machineUUID)
	var l *lab
	l = newLab(t, func(c *central, e *agentv1.Event) {
		switch e.GetType() {
		case EventRegistering:
			c.send(&agentv1.MachineDocument{MachineId: id})
		case EventWaiting:
			go func() {
				// Wiping is asked for once; the same generation comes
				// again with other changes and with the allocation.
				c.send(&agentv1.MachineDocument{MachineId: id, WipeGeneration: 1})
				for len(l.hw.callList()) < 5 { // the second wipe
					time.Sleep(5 * time.Millisecond)
				}
				c.send(&agentv1.MachineDocument{MachineId: id, WipeGeneration: 1, RebootGeneration: 4})
				c.send(&agentv1.MachineDocument{MachineId: id, WipeGeneration: 1, Allocation: allocation()})
			}()
		}
	})
	if err := runLab(t, l); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := len(l.hw.wipes); n != 2 {
		t.Fatalf("%d wipes, want 2 (one on waiting, one for generation 1)", n)
	}
	calls := strings.Join(l.hw.callList(), ",")
	if calls != "network,collect,lldp,wipe,wipe,apply,stream,config,boot,load,unmount,kexec" {
		t.Errorf("hardware calls %s", calls)
	}
}

func TestRunRefusesAForeignCA(t *testing.T) {
	l := newLab(t, standardScript)
	l.cfg.Cmdline.CA = strings.Repeat("0", 64)
	err := runLab(t, l)
	if !errors.Is(err, errCAPin) {
		t.Fatalf("Run: %v, want the CA pin error", err)
	}
	if calls := strings.Join(l.hw.callList(), ","); calls != "network,collect,reboot" {
		t.Errorf("hardware calls %s", calls)
	}
	if len(l.central.hellos) != 0 {
		t.Errorf("talked to an untrusted central: %v", l.central.hellos)
	}
}

func TestRunWithAllocationAtOnceSkipsTheWaitingWipe(t *testing.T) {
	id := strings.ToLower(machineUUID)
	l := newLab(t, func(c *central, e *agentv1.Event) {
		if e.GetType() == EventRegistering {
			a := allocation()
			a.Reinstall = true
			c.send(&agentv1.MachineDocument{MachineId: id, Allocation: a})
		}
	})
	if err := runLab(t, l); err != nil {
		t.Fatal(err)
	}
	if calls := strings.Join(l.hw.callList(), ","); calls != "network,collect,lldp,apply,stream,config,boot,load,unmount,kexec" {
		t.Errorf("hardware calls %s", calls)
	}
	if got := squash(l.central.eventTypes()); strings.Join(got, ",") != "Preparing,Registering,Installing,Booting New Kernel" {
		t.Errorf("events %v", got)
	}
}

func TestRunGivesUpOnUnreachableCentral(t *testing.T) {
	l := newLab(t, standardScript)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := lis.Addr().String()
	lis.Close()
	l.cfg.Cmdline.Centrals = []string{closed}
	l.cfg.ConnectWarn = 20 * time.Millisecond
	l.cfg.ConnectTimeout = 200 * time.Millisecond
	l.cfg.FlushTimeout = 50 * time.Millisecond
	err = runLab(t, l)
	if err == nil || !strings.Contains(err.Error(), "central unreachable at "+closed) {
		t.Fatalf("Run: %v", err)
	}
	if calls := strings.Join(l.hw.callList(), ","); calls != "network,collect,lldp,reboot" {
		t.Errorf("hardware calls %s", calls)
	}
}
