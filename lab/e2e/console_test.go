package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/lab/internal/redfish"
	"github.com/metalfleet/metalfleet/lab/internal/vm"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// consoleSystem is the machine behind the test's Redfish BMC: its power
// and boot device are state, its serial port is the test's socket.
type consoleSystem struct {
	mu    sync.Mutex
	power vm.PowerState
}

func (s *consoleSystem) PowerState(context.Context) (vm.PowerState, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.power, nil
}
func (s *consoleSystem) set(p vm.PowerState) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.power = p
	return nil
}
func (s *consoleSystem) PowerOn(context.Context) error           { return s.set(vm.On) }
func (s *consoleSystem) PowerOff(context.Context, bool) error    { return s.set(vm.Off) }
func (s *consoleSystem) Reset(context.Context) error             { return nil }
func (s *consoleSystem) PowerCycle(context.Context) error        { return s.set(vm.On) }
func (s *consoleSystem) SetBootDevice(vm.BootDevice, bool) error { return nil }
func (s *consoleSystem) BootDevice() (vm.BootDevice, bool)       { return vm.BootDisk, false }

// serialPort is the machine's serial socket: the SSH console connects to
// it, the test writes the machine's output and reads what was typed.
type serialPort struct {
	ln    net.Listener
	conns chan net.Conn
}

func newSerialPort(t *testing.T, path string) *serialPort {
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	p := &serialPort{ln: ln, conns: make(chan net.Conn, 4)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.conns <- c
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return p
}

func (p *serialPort) accept(t *testing.T) net.Conn {
	t.Helper()
	select {
	case c := <-p.conns:
		t.Cleanup(func() { c.Close() })
		return c
	case <-time.After(60 * time.Second):
		t.Fatal("nothing connected to the machine's serial port")
		return nil
	}
}

// readUntil reads from r until want arrived.
func readUntil(t *testing.T, what string, read func([]byte) (int, error), want string) {
	t.Helper()
	var got []byte
	buf := make([]byte, 4096)
	deadline := time.Now().Add(30 * time.Second)
	for !bytes.Contains(got, []byte(want)) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: got %q, want %q in it", what, got, want)
		}
		n, err := read(buf)
		got = append(got, buf[:n]...)
		if err != nil && !bytes.Contains(got, []byte(want)) {
			t.Fatalf("%s: %v after %q", what, err, got)
		}
	}
}

// TestConsoleThroughMetalBMC runs the serial console end to end: the real
// metal-central, the real metal-bmc binary, the lab's Redfish BMC with
// its SSH serial console attached to a serial socket of the test's. It
// checks bytes both ways and window changes, the refusals (a viewer,
// another project, a second console, hostile input), the end when the
// allocation is freed, and the audit record; then the same over IPMI
// serial-over-LAN (ipmi_sim), ended by a reinstall.
func TestConsoleThroughMetalBMC(t *testing.T) {
	f := startFleetCentral(t, "")
	ctx := t.Context()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()

	// A project with a network, and a second project.
	_, err := apiv1.NewSizeServiceClient(f.cc).Create(ctx, &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: "s1", Constraints: []*apiv1.SizeConstraint{
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, Min: 1, Max: 64}}}})
	must(err)
	_, err = apiv1.NewImageServiceClient(f.cc).Create(ctx, &apiv1.ImageServiceCreateRequest{Image: &apiv1.Image{
		Id: "debian-12", Os: "debian", Version: "12.0.0", Url: "http://images.example/debian-12.tar.zst", Sha256: strings.Repeat("ab", 32)}})
	must(err)
	_, err = apiv1.NewTenantServiceClient(f.cc).Create(ctx, &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: "t1"}})
	must(err)
	projects := apiv1.NewProjectServiceClient(f.cc)
	proj, err := projects.Create(ctx, &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: "t1", Name: "owner"}})
	must(err)
	other, err := projects.Create(ctx, &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: "t1", Name: "other"}})
	must(err)
	pid := proj.GetProject().GetId()
	nets := apiv1.NewNetworkServiceClient(f.cc)
	_, err = nets.Create(ctx, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{Id: "super", Type: apiv1.NetworkType_NETWORK_TYPE_SUPER,
		PartitionId: "p1", Prefixes: []string{"10.128.0.0/16"}, ChildPrefixLengthIpv4: 24}})
	must(err)
	child, err := nets.Allocate(ctx, &apiv1.NetworkServiceAllocateRequest{ProjectId: pid, PartitionId: "p1", Name: "net"})
	must(err)

	// Two machines register (the second never gets a BMC); the first is allocated.
	pix, err := apiv1.NewAgentServiceClient(f.cc).Enroll(ctx, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_PIXIE, Identity: "pixie-p1", PartitionId: "p1"})
	must(err)
	asPixie := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+pix.GetSecret())
	mc := apiv1.NewMachineServiceClient(f.cc)
	register := func(i int) (string, *rawInstaller) {
		id := uuid.NewString()
		mac := "aa:bb:cc:dd:0" + strconv.Itoa(i) + ":01"
		boot, err := agentv1.NewAgentServiceClient(f.cc).Boot(asPixie, &agentv1.BootRequest{Mac: mac, Arch: "efi"})
		must(err)
		inst, err := f.sync(t, installerHello(id, bootCred(boot.GetBootToken()), mac))
		must(err)
		inst.report(nil, "Preparing")
		inst.report(&agentv1.MachineFacts{Uuid: id, Cores: 2, MemoryBytes: 2 << 30, Disks: []*agentv1.DiskFact{{Name: "vda", SizeBytes: 8 << 30}},
			Nics: []*agentv1.NICFact{{Name: "eth0", Mac: mac}}}, "Registering")
		inst.await("machine id", func(d *agentv1.Desired) bool { return d.GetMachine().GetMachineId() == id })
		inst.report(nil, "Waiting")
		waitFor(t, "machine waiting and alive", func() bool {
			got, err := mc.Get(ctx, &apiv1.MachineServiceGetRequest{Id: id})
			return err == nil && got.GetMachine().GetProvisioning() == apiv1.ProvisioningState_PROVISIONING_STATE_WAITING &&
				got.GetMachine().GetLiveliness() == apiv1.Liveliness_LIVELINESS_ALIVE
		})
		return id, inst
	}
	id, inst := register(1)
	bare, _ := register(2)
	_, err = mc.Create(ctx, &apiv1.MachineServiceCreateRequest{Id: id, ProjectId: pid, ImageId: "debian-12", Networks: []string{child.GetNetwork().GetId()}})
	must(err)
	inst.await("allocation", func(d *agentv1.Desired) bool { return d.GetMachine().GetAllocation() != nil })

	// The machine's BMC: Redfish over HTTPS, its serial console over SSH
	// at the port its Redfish NetworkProtocol names.
	const user, password = "console-admin", "console-secret-9"
	serial := newSerialPort(t, filepath.Join(dir, "serial.sock"))
	sc, err := redfish.NewSerialConsole(redfish.SerialConfig{User: user, Password: password, Socket: filepath.Join(dir, "serial.sock")})
	must(err)
	sln, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	sctx, scancel := context.WithCancel(context.Background())
	scDone := make(chan struct{})
	go func() { _ = sc.Serve(sctx, sln); close(scDone) }()
	t.Cleanup(func() { scancel(); <-scDone })
	rf, err := redfish.New(redfish.Config{UUID: id, Name: "m1", User: user, Password: password, SSHPort: sln.Addr().(*net.TCPAddr).Port}, &consoleSystem{power: vm.On})
	must(err)
	hs := httptest.NewUnstartedServer(rf)
	hs.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	hs.StartTLS()
	t.Cleanup(hs.Close)

	_, err = apiv1.NewBMCServiceClient(f.cc).SetSettings(ctx, &apiv1.BMCServiceSetSettingsRequest{Settings: &apiv1.PartitionBMC{
		PartitionId: "p1", User: user, Password: password, PollIntervalSeconds: 2,
		StaticBmcs: []*apiv1.PartitionBMCEndpoint{{Address: hs.URL}}}})
	must(err)

	// metal-bmc, its default SSH port wrong on purpose: the console's
	// port comes from the BMC.
	bmc := startMetalBMC(t, f, "bmc-p1", "--min-backoff", "1s", "--bmc-timeout", "10s",
		"--console-ssh-port", "1", "--ipmi-cipher-suite", "3", "--log-level", "debug")
	waitFor(t, "the machine's BMC reported to central", func() bool {
		got, err := mc.Get(ctx, &apiv1.MachineServiceGetRequest{Id: id})
		return err == nil && got.GetMachine().GetBmc().GetReachable()
	})

	// People: an editor and a viewer of the project, an editor of another.
	tokens := apiv1.NewTokenServiceClient(f.cc)
	person := func(roles map[string]apiv1.Level) apiv1.MachineServiceClient {
		tok, err := tokens.Create(ctx, &apiv1.TokenServiceCreateRequest{Description: "console test", ProjectRoles: roles})
		must(err)
		cc, err := grpc.NewClient(f.listen, grpc.WithTransportCredentials(credentials.NewTLS(f.tls)), grpc.WithPerRPCCredentials(bearer(tok.GetSecret())))
		must(err)
		t.Cleanup(func() { cc.Close() })
		return apiv1.NewMachineServiceClient(cc)
	}
	editor := person(map[string]apiv1.Level{pid: apiv1.Level_LEVEL_EDITOR})
	viewer := person(map[string]apiv1.Level{pid: apiv1.Level_LEVEL_VIEWER})
	stranger := person(map[string]apiv1.Level{other.GetProject().GetId(): apiv1.Level_LEVEL_OWNER})

	// open sends the first request and returns the stream and the error of
	// the first answer, if it is one.
	open := func(c apiv1.MachineServiceClient, req *apiv1.MachineServiceConsoleRequest) (apiv1.MachineService_ConsoleClient, *apiv1.MachineServiceConsoleResponse, error) {
		t.Helper()
		s, err := c.Console(ctx)
		must(err)
		if err := s.Send(req); err != nil && !errors.Is(err, io.EOF) {
			t.Fatal(err)
		}
		first, err := s.Recv()
		return s, first, err
	}
	refused := []struct {
		name string
		c    apiv1.MachineServiceClient
		req  *apiv1.MachineServiceConsoleRequest
		code codes.Code
		text string
	}{
		{"viewer", viewer, &apiv1.MachineServiceConsoleRequest{Id: id}, codes.PermissionDenied, "needs editor"},
		// Another project's machine does not exist for the caller (no probing).
		{"other project", stranger, &apiv1.MachineServiceConsoleRequest{Id: id}, codes.NotFound, "not found"},
		{"unknown machine", mc, &apiv1.MachineServiceConsoleRequest{Id: uuid.NewString()}, codes.NotFound, "not found"},
		{"no machine", mc, &apiv1.MachineServiceConsoleRequest{}, codes.InvalidArgument, "id"},
		{"machine without BMC", mc, &apiv1.MachineServiceConsoleRequest{Id: bare}, codes.FailedPrecondition, "id: machine"},
		{"zero rows", editor, &apiv1.MachineServiceConsoleRequest{Id: id, Window: &agentv1.ConsoleWindow{Cols: 80}}, codes.InvalidArgument, "window.rows"},
		{"huge cols", editor, &apiv1.MachineServiceConsoleRequest{Id: id, Window: &agentv1.ConsoleWindow{Rows: 24, Cols: 1 << 20}}, codes.InvalidArgument, "window.cols"},
	}
	for _, r := range refused {
		_, _, err := open(r.c, r.req)
		if status.Code(err) != r.code || !strings.Contains(status.Convert(err).Message(), r.text) {
			t.Errorf("%s: %v, want %s naming %q", r.name, err, r.code, r.text)
		}
	}

	// The editor's console: started, bytes both ways, window changes.
	s, first, err := open(editor, &apiv1.MachineServiceConsoleRequest{Id: id, Window: &agentv1.ConsoleWindow{Rows: 30, Cols: 100}})
	must(err)
	if first.GetStarted().GetSessionId() == "" {
		t.Fatalf("first answer %v, want started", first)
	}
	port := serial.accept(t)
	if r, c := sc.Window(); r != 30 || c != 100 {
		t.Errorf("window at the BMC %dx%d, want 30x100", r, c)
	}
	// A second console of the same machine is refused while this one runs.
	if _, _, err := open(mc, &apiv1.MachineServiceConsoleRequest{Id: id}); status.Code(err) != codes.FailedPrecondition ||
		!strings.Contains(err.Error(), "already has a console") {
		t.Errorf("second console: %v, want FailedPrecondition", err)
	}

	_, err = port.Write([]byte("login: from the machine\r\n"))
	must(err)
	var pending []byte
	readUntil(t, "the machine's output at the user", func(b []byte) (int, error) {
		if len(pending) == 0 {
			resp, err := s.Recv()
			if err != nil {
				return 0, err
			}
			pending = resp.GetData()
		}
		n := copy(b, pending)
		pending = pending[n:]
		return n, nil
	}, "login: from the machine")
	must(s.Send(&apiv1.MachineServiceConsoleRequest{Data: []byte("root\r")}))
	readUntil(t, "the user's keystrokes at the machine", port.Read, "root\r")
	must(s.Send(&apiv1.MachineServiceConsoleRequest{Window: &agentv1.ConsoleWindow{Rows: 50, Cols: 132}}))
	waitFor(t, "the window change at the BMC", func() bool { r, c := sc.Window(); return r == 50 && c == 132 })

	// Freeing the machine ends the console with the reason.
	_, err = mc.Delete(ctx, &apiv1.MachineServiceDeleteRequest{Id: id})
	must(err)
	var end *apiv1.ConsoleEnd
	for end == nil {
		resp, err := s.Recv()
		if err != nil {
			t.Fatalf("console after free: %v, want an end message first", err)
		}
		end = resp.GetEnd()
	}
	if !strings.Contains(end.GetReason(), "allocation changed") {
		t.Errorf("end reason %q, want the allocation change", end.GetReason())
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("after the end: %v, want the stream's clean end", err)
	}
	waitFor(t, "metal-bmc's SSH session to the serial port closed", func() bool { return sc.Active() == 0 })

	// Audit: the opening call, by the editor, on the machine.
	audit, err := apiv1.NewAuditServiceClient(f.cc).List(ctx, &apiv1.AuditServiceListRequest{Target: "machine/" + id})
	must(err)
	found := false
	for _, e := range audit.GetEntries() {
		if strings.HasSuffix(e.GetMethod(), "/Console") && e.GetProjectId() == pid {
			found = true
		}
	}
	if !found {
		t.Errorf("audit of machine/%s: %v, want the console's row", id, audit.GetEntries())
	}

	// An IPMI BMC: OpenIPMI's ipmi_sim with serial-over-LAN to a TCP port
	// the test plays the machine's serial port on. metal-bmc reads the
	// machine's UUID from "mc guid", which ipmitool prints byte-reversed.
	if _, err := exec.LookPath("ipmi_sim"); err != nil {
		t.Log("ipmi_sim not installed (make deps): the IPMI console is not tested end to end")
		return
	}
	ipmiID, ipmiInst := register(3)
	_, err = mc.Create(ctx, &apiv1.MachineServiceCreateRequest{Id: ipmiID, ProjectId: pid, ImageId: "debian-12", Networks: []string{child.GetNetwork().GetId()}})
	must(err)
	ipmiInst.await("allocation", func(d *agentv1.Desired) bool { return d.GetMachine().GetAllocation() != nil })
	ipmiAddr, ipmiSerial := startIPMISim(t, ipmiID, user, password)
	_, err = apiv1.NewBMCServiceClient(f.cc).SetSettings(ctx, &apiv1.BMCServiceSetSettingsRequest{Settings: &apiv1.PartitionBMC{
		PartitionId: "p1", User: user, PollIntervalSeconds: 2,
		StaticBmcs: []*apiv1.PartitionBMCEndpoint{{Address: hs.URL}, {Address: ipmiAddr, Ipmi: true}}}})
	must(err)
	waitFor(t, "the IPMI machine's BMC reported to central", func() bool {
		got, err := mc.Get(ctx, &apiv1.MachineServiceGetRequest{Id: ipmiID})
		return err == nil && got.GetMachine().GetBmc().GetReachable() && got.GetMachine().GetBmc().GetProtocol() == agentv1.BmcProtocol_BMC_PROTOCOL_IPMI
	})
	s, first, err = open(editor, &apiv1.MachineServiceConsoleRequest{Id: ipmiID, Window: &agentv1.ConsoleWindow{Rows: 30, Cols: 100}})
	must(err)
	if first.GetStarted().GetProtocol() != agentv1.BmcProtocol_BMC_PROTOCOL_IPMI {
		t.Fatalf("first answer %v, want started over IPMI", first)
	}
	var serialConn net.Conn
	select {
	case serialConn = <-ipmiSerial:
		t.Cleanup(func() { serialConn.Close() })
	case <-time.After(60 * time.Second):
		t.Fatal("ipmi_sim's SOL did not connect to the serial port")
	}
	must(s.Send(&apiv1.MachineServiceConsoleRequest{Data: []byte("sol-keys\r")}))
	readUntil(t, "keystrokes at the machine over SOL", serialConn.Read, "sol-keys")
	_, err = serialConn.Write([]byte("sol-output\r\n"))
	must(err)
	pending = nil
	readUntil(t, "the machine's output over SOL at the user", func(b []byte) (int, error) {
		if len(pending) == 0 {
			resp, err := s.Recv()
			if err != nil {
				return 0, err
			}
			pending = resp.GetData()
		}
		n := copy(b, pending)
		pending = pending[n:]
		return n, nil
	}, "sol-output")
	// A reinstall (a new allocation id) ends it too.
	_, err = mc.Reinstall(ctx, &apiv1.MachineServiceReinstallRequest{Id: ipmiID})
	must(err)
	end = nil
	for end == nil {
		resp, err := s.Recv()
		if err != nil {
			t.Fatalf("IPMI console after reinstall: %v, want an end message first", err)
		}
		end = resp.GetEnd()
	}
	if !strings.Contains(end.GetReason(), "allocation changed") {
		t.Errorf("IPMI end reason %q, want the allocation change", end.GetReason())
	}
	if strings.Contains(bmc.logs.String(), password) {
		t.Error("metal-bmc logged the BMC password")
	}
}

// startIPMISim runs ipmi_sim as the BMC of machine id (its GUID is the
// id's bytes reversed, as ipmitool decodes them), with SOL to a TCP port
// whose connections arrive on the returned channel.
func startIPMISim(t *testing.T, id, user, password string) (string, chan net.Conn) {
	t.Helper()
	dir := t.TempDir()
	u := uuid.MustParse(id)
	var guid strings.Builder
	for i := 15; i >= 0; i-- {
		fmt.Fprintf(&guid, "%02x", u[i])
	}
	serial, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { serial.Close() })
	conns := make(chan net.Conn, 4)
	go func() {
		for {
			c, err := serial.Accept()
			if err != nil {
				return
			}
			conns <- c
		}
	}()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := pc.LocalAddr().(*net.UDPAddr).Port
	pc.Close()
	chassis := "#!/bin/sh\ncase $2 in get) for p in \"$@\"; do [ \"$p\" = power ] && echo power:1; [ \"$p\" = boot ] && echo boot:default; done;; esac; exit 0\n"
	files := map[string]string{
		"chassis.sh": chassis,
		"lan.conf": fmt.Sprintf(`name "console-e2e"
set_working_mc 0x20
startlan 1
  addr 127.0.0.1 %d
  priv_limit admin
  allowed_auths_admin none md2 md5 straight
  guid %s
endlan
chassis_control "%s 0x20"
sol "tcp:%s" 115200
user 2 true %q %q admin 10 none md2 md5 straight
`, port, guid.String(), filepath.Join(dir, "chassis.sh"), serial.Addr().String(), user, password),
		"sim.emu": "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nmc_enable 0x20\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ipmi_sim", "-c", filepath.Join(dir, "lan.conf"), "-f", filepath.Join(dir, "sim.emu"), "-s", filepath.Join(dir, "state"), "-n")
	var log syncBuffer
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
	return fmt.Sprintf("127.0.0.1:%d", port), conns
}

// syncBuffer is a bytes.Buffer safe for a child's two output streams.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
