package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// rawInstaller drives the agent protocol message by message, as an
// attacker on the PXE network would.
type rawInstaller struct {
	t      *testing.T
	stream agentv1.AgentService_SyncClient
	token  string
	docs   chan *agentv1.Desired
	errs   chan error
}

// sync opens a stream with hello; it returns the welcome's error, if any.
func (f *fleetCentral) sync(t *testing.T, hello *agentv1.Hello) (*rawInstaller, error) {
	t.Helper()
	cc, err := grpc.NewClient(f.listen, grpc.WithTransportCredentials(credentials.NewTLS(f.tls)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	ctx, cancel := context.WithCancel(t.Context())
	t.Cleanup(cancel)
	st, err := agentv1.NewAgentServiceClient(cc).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	first, err := st.Recv()
	if err != nil {
		return nil, err
	}
	r := &rawInstaller{t: t, stream: st, token: first.GetWelcome().GetIssuedToken(), docs: make(chan *agentv1.Desired, 64), errs: make(chan error, 1)}
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				r.errs <- err
				return
			}
			if d := m.GetDesired(); d != nil {
				r.docs <- d
			}
		}
	}()
	return r, nil
}

func (r *rawInstaller) report(facts *agentv1.MachineFacts, events ...string) {
	r.t.Helper()
	rep := &agentv1.Report{Health: agentv1.Health_HEALTH_OK}
	if facts != nil {
		rep.Facts = &agentv1.Facts{Machine: facts}
	}
	for _, e := range events {
		rep.Events = append(rep.Events, &agentv1.Event{Type: e, Time: timestamppb.Now()})
	}
	if err := r.stream.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Report{Report: rep}}); err != nil {
		r.t.Fatal(err)
	}
}

func (r *rawInstaller) await(what string, ok func(*agentv1.Desired) bool) *agentv1.Desired {
	r.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case d := <-r.docs:
			if ok(d) {
				return d
			}
		case err := <-r.errs:
			r.t.Fatalf("waiting for %s: stream ended: %v", what, err)
		case <-deadline:
			r.t.Fatalf("timed out waiting for %s", what)
		}
	}
}

func installerHello(identity string, cred *agentv1.Credential, macs ...string) *agentv1.Hello {
	h := &agentv1.Hello{Kind: agentv1.Kind_KIND_INSTALLER, Identity: identity, Credential: cred,
		Facts: &agentv1.Facts{Machine: &agentv1.MachineFacts{Uuid: identity}}}
	for i, m := range macs {
		h.Facts.Machine.Nics = append(h.Facts.Machine.Nics, &agentv1.NICFact{Name: "eth" + string(rune('0'+i)), Mac: m})
	}
	return h
}

func bootCred(tok string) *agentv1.Credential {
	return &agentv1.Credential{Secret: &agentv1.Credential_BootToken{BootToken: tok}}
}

// TestBootTokenCannotClaimAnotherMachine is issue 11's probe against the
// real metal-central over the real Sync stream: a tenant's machine is
// allocated and installed; a stranger on the PXE network gets boot tokens
// from the partition's PXE service and tries to claim the machine, to
// receive its allocation and user data, and to take its NIC over.
func TestBootTokenCannotClaimAnotherMachine(t *testing.T) {
	f := startFleetCentral(t, "")
	ctx := t.Context()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	_, err := apiv1.NewSizeServiceClient(f.cc).Create(ctx, &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: "s1", Constraints: []*apiv1.SizeConstraint{
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, Min: 1, Max: 64}}}})
	must(err)
	_, err = apiv1.NewImageServiceClient(f.cc).Create(ctx, &apiv1.ImageServiceCreateRequest{Image: &apiv1.Image{
		Id: "debian-12", Os: "debian", Version: "12.0.0", Url: "http://images.example/debian-12.tar.zst", Sha256: strings.Repeat("ab", 32)}})
	must(err)
	_, err = apiv1.NewTenantServiceClient(f.cc).Create(ctx, &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: "t1"}})
	must(err)
	proj, err := apiv1.NewProjectServiceClient(f.cc).Create(ctx, &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: "t1", Name: "victim"}})
	must(err)
	pix, err := apiv1.NewAgentServiceClient(f.cc).Enroll(ctx, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_PIXIE, Identity: "pixie-p1", PartitionId: "p1"})
	must(err)
	pixie := agentv1.NewAgentServiceClient(f.cc)
	asPixie := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+pix.GetSecret())
	boot := func(mac string) *agentv1.BootResponse {
		t.Helper()
		r, err := pixie.Boot(asPixie, &agentv1.BootRequest{Mac: mac, Arch: "efi"})
		must(err)
		return r
	}

	// The victim boots, registers, waits, is allocated and installed.
	const victimMAC, strangerMAC = "52:54:00:0e:00:01", "52:54:00:0e:00:99"
	victim := uuid.NewString()
	inst, err := f.sync(t, installerHello(victim, bootCred(boot(victimMAC).GetBootToken()), victimMAC))
	must(err)
	hw := &agentv1.MachineFacts{Uuid: victim, Cores: 2, MemoryBytes: 2 << 30, Disks: []*agentv1.DiskFact{{Name: "vda", SizeBytes: 8 << 30}},
		Nics: []*agentv1.NICFact{{Name: "eth0", Mac: victimMAC}}}
	inst.report(nil, "Preparing")
	inst.report(hw, "Registering")
	inst.await("machine id", func(d *agentv1.Desired) bool { return d.GetMachine().GetMachineId() == victim })
	inst.report(nil, "Waiting")
	machines := apiv1.NewMachineServiceClient(f.cc)
	waitFor(t, "victim waiting and alive", func() bool {
		m, err := machines.Get(ctx, &apiv1.MachineServiceGetRequest{Id: victim})
		return err == nil && m.GetMachine().GetProvisioning() == apiv1.ProvisioningState_PROVISIONING_STATE_WAITING &&
			m.GetMachine().GetLiveliness() == apiv1.Liveliness_LIVELINESS_ALIVE
	})
	const secretUserData = "#cloud-config\n# the tenant's secret\n"
	_, err = machines.Create(ctx, &apiv1.MachineServiceCreateRequest{Id: victim, ProjectId: proj.GetProject().GetId(), PartitionId: "p1",
		SizeId: "s1", ImageId: "debian-12", Hostname: "web", UserData: secretUserData})
	must(err)
	inst.await("allocation", func(d *agentv1.Desired) bool { return d.GetMachine().GetAllocation().GetUserData() == secretUserData })
	inst.report(nil, "Installing", "Booting New Kernel")
	waitFor(t, "victim booting its new kernel", func() bool {
		m, err := machines.Get(ctx, &apiv1.MachineServiceGetRequest{Id: victim})
		return err == nil && m.GetMachine().GetProvisioning() == apiv1.ProvisioningState_PROVISIONING_STATE_BOOTING_NEW_KERNEL
	})
	ph, err := f.sync(t, &agentv1.Hello{Kind: agentv1.Kind_KIND_PHONEHOME, Identity: victim,
		Credential: &agentv1.Credential{Secret: &agentv1.Credential_Token{Token: inst.token}}})
	must(err)
	ph.report(nil, "Phoned Home")
	waitFor(t, "victim phoned home", func() bool {
		m, err := machines.Get(ctx, &apiv1.MachineServiceGetRequest{Id: victim})
		return err == nil && m.GetMachine().GetProvisioning() == apiv1.ProvisioningState_PROVISIONING_STATE_PHONED_HOME
	})
	if b := boot(victimMAC); b.GetAction() != agentv1.BootAction_BOOT_ACTION_DISK || b.GetBootToken() != "" {
		t.Fatalf("the installed victim's MAC boots %v with token %q, want its disk and no token", b.GetAction(), b.GetBootToken())
	}

	// The stranger's own PXE boot gives it a token (for its MAC). With it,
	// it cannot claim the victim: neither naming only its own NIC nor
	// claiming the victim's NIC too.
	tok := boot(strangerMAC).GetBootToken()
	for name, macs := range map[string][]string{"own NIC": {strangerMAC}, "both NICs": {strangerMAC, victimMAC}} {
		if _, err := f.sync(t, installerHello(victim, bootCred(tok), macs...)); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("stranger claiming the victim (%s): %v, want PermissionDenied", name, err)
		}
	}
	// A token of the stranger's MAC cannot be used without that MAC.
	if _, err := f.sync(t, installerHello(uuid.NewString(), bootCred(tok), "52:54:00:0e:00:98")); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("a token without its MAC: %v, want PermissionDenied", err)
	}
	// The victim's installed system keeps its credential and document.
	ph.report(nil)
	select {
	case err := <-ph.errs:
		t.Fatalf("the victim's stream ended: %v", err)
	case <-time.After(500 * time.Millisecond):
	}

	// The refused exchanges did not use the token up: the stranger
	// registers as itself, reporting the victim's NIC as its own.
	stranger := uuid.NewString()
	s, err := f.sync(t, installerHello(stranger, bootCred(tok), strangerMAC, victimMAC))
	must(err)
	if d := s.await("first document", func(*agentv1.Desired) bool { return true }); d.GetMachine().GetAllocation() != nil {
		t.Fatalf("the stranger got an allocation: %v", d.GetMachine().GetAllocation())
	}
	s.report(&agentv1.MachineFacts{Uuid: stranger, Cores: 2, MemoryBytes: 2 << 30, Nics: []*agentv1.NICFact{
		{Name: "eth0", Mac: strangerMAC}, {Name: "eth1", Mac: victimMAC}}}, "Registering")
	s.await("machine id", func(d *agentv1.Desired) bool { return d.GetMachine().GetMachineId() == stranger })
	// The victim's MAC did not move: its boot is still the victim's.
	if b := boot(victimMAC); b.GetMachineId() != victim || b.GetAction() != agentv1.BootAction_BOOT_ACTION_DISK {
		t.Fatalf("after the takeover attempt the victim's MAC boots %v for %s", b.GetAction(), b.GetMachineId())
	}
	issues, err := machines.Issues(ctx, &apiv1.MachineServiceIssuesRequest{PartitionId: "p1"})
	must(err)
	flagged := map[string]bool{}
	for _, is := range issues.GetIssues() {
		if is.GetId() == "duplicate-mac" && strings.Contains(is.GetDescription(), victimMAC) {
			flagged[is.GetMachineId()] = true
		}
	}
	if !flagged[victim] || !flagged[stranger] {
		t.Fatalf("duplicate-mac issues %v, want both machines", issues.GetIssues())
	}
	// The admin decides: the NIC stays the victim's; the issues are gone.
	_, err = machines.ResolveMac(ctx, &apiv1.MachineServiceResolveMacRequest{Mac: victimMAC, OwnerId: victim})
	must(err)
	issues, err = machines.Issues(ctx, &apiv1.MachineServiceIssuesRequest{PartitionId: "p1"})
	must(err)
	for _, is := range issues.GetIssues() {
		if is.GetId() == "duplicate-mac" {
			t.Fatalf("issue left after resolving: %v", is)
		}
	}
}
