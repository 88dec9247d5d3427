package server_test

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// rawAgent is an agent stream driven by hand (central may not import the
// agent runtime).
type rawAgent struct {
	t      *testing.T
	stream agentv1.AgentService_SyncClient
	docs   chan *agentv1.Desired
	errs   chan error
	token  string
	sent   uint64
}

func openAgent(t *testing.T, e *env, hello *agentv1.Hello) *rawAgent {
	t.Helper()
	// Every agent has a connection of its own: central ends an agent's
	// stream by closing its connection.
	conn := dial(t, e.srv.Addr(), tlsCreds(t, e.srv.CAFile()))
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	st, err := agentv1.NewAgentServiceClient(conn).Sync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Hello{Hello: hello}}); err != nil {
		t.Fatal(err)
	}
	first, err := st.Recv()
	if err != nil {
		t.Fatalf("hello: %v", err)
	}
	a := &rawAgent{t: t, stream: st, docs: make(chan *agentv1.Desired, 64), errs: make(chan error, 1), token: first.GetWelcome().GetIssuedToken()}
	go func() {
		for {
			m, err := st.Recv()
			if err != nil {
				a.errs <- err
				return
			}
			if d := m.GetDesired(); d != nil {
				a.docs <- d
			}
		}
	}()
	return a
}

func (a *rawAgent) report(facts *agentv1.MachineFacts, events ...string) {
	a.t.Helper()
	r := &agentv1.Report{AppliedRevision: a.sent}
	if facts != nil {
		r.Facts = &agentv1.Facts{Machine: facts}
	}
	for _, e := range events {
		r.Events = append(r.Events, &agentv1.Event{Type: e, Time: timestamppb.Now()})
	}
	a.send(r)
}

// send sends a report as it is.
func (a *rawAgent) send(r *agentv1.Report) {
	a.t.Helper()
	if err := a.stream.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Report{Report: r}}); err != nil {
		a.t.Fatal(err)
	}
}

// refused waits for central to end the stream with InvalidArgument naming
// field (empty: any).
func (a *rawAgent) refused(field string) {
	a.t.Helper()
	select {
	case err := <-a.errs:
		wantCode(a.t, err, codes.InvalidArgument)
		if !strings.Contains(err.Error(), field) {
			a.t.Errorf("error %v does not name %s", err, field)
		}
	case <-time.After(10 * time.Second):
		a.t.Fatalf("central kept the stream after a report it should refuse (%s)", field)
	}
}

// await waits for a document that satisfies ok.
func (a *rawAgent) await(what string, ok func(*agentv1.Desired) bool) *agentv1.Desired {
	a.t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		select {
		case d := <-a.docs:
			if ok(d) {
				return d
			}
		case err := <-a.errs:
			a.t.Fatalf("waiting for %s: stream ended: %v", what, err)
		case <-deadline:
			a.t.Fatalf("no document with %s", what)
		}
	}
}

// TestProvisioningOverStreams is the provisioning flow over central's real
// endpoints: a PXE service asks what a MAC boots and gets a boot token; an
// installer exchanges it, registers and waits; a tenant allocates the
// machine and follows its events; the installed system phones home with
// the machine's credential; the machine is freed.
func TestProvisioningOverStreams(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	admin := e.as(t, e.admin)
	ok(e.api.Partition.Create(admin, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "fra1", AllowSingleAttach: true, Boot: &apiv1.PartitionBootConfig{Cmdline: "console=ttyS0"}}}))(t)
	ok(e.api.Size.Create(admin, &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: "s1", Constraints: []*apiv1.SizeConstraint{cores(1, 8)}}}))(t)
	ok(e.api.Image.Create(admin, &apiv1.ImageServiceCreateRequest{Image: image("debian-12", "debian", "12.0.0")}))(t)
	pix := ok(e.api.Agent.Enroll(admin, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_PIXIE, Identity: "pixie-fra1", PartitionId: "fra1"}))(t)
	if d := pix.GetAgent().GetDesired().GetPixie(); d.GetPartitionId() != "fra1" || !strings.Contains(d.GetCmdline(), "metal.ca=") || !strings.Contains(d.GetCmdline(), "console=ttyS0") {
		t.Fatalf("pixie document after enrolment: %v", d)
	}
	agents := agentv1.NewAgentServiceClient(e.conn)
	bearer := func(tok string) context.Context {
		return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
	}
	const mac = "52:54:00:aa:00:01"
	_, err := agents.Boot(context.Background(), &agentv1.BootRequest{Mac: mac})
	wantCode(t, err, codes.Unauthenticated)
	_, err = agents.Boot(bearer(e.admin.token), &agentv1.BootRequest{Mac: mac})
	wantCode(t, err, codes.Unauthenticated)
	boot := ok(agents.Boot(bearer(pix.GetSecret()), &agentv1.BootRequest{Mac: mac, Arch: "efi"}))(t)
	if boot.GetAction() != agentv1.BootAction_BOOT_ACTION_INSTALLER || boot.GetBootToken() == "" || !strings.Contains(boot.GetCmdline(), "metal.partition=fra1") {
		t.Fatalf("boot answer %v", boot)
	}

	id := uuid.NewString()
	inst := openAgent(t, e, &agentv1.Hello{Kind: agentv1.Kind_KIND_INSTALLER, Identity: id,
		Credential: &agentv1.Credential{Secret: &agentv1.Credential_BootToken{BootToken: boot.GetBootToken()}},
		Facts:      &agentv1.Facts{Machine: &agentv1.MachineFacts{Uuid: id, Nics: []*agentv1.NICFact{{Name: "eth0", Mac: mac}}}}})
	if inst.token == "" {
		t.Fatal("no credential issued for the boot token")
	}
	hw := &agentv1.MachineFacts{Uuid: id, Cores: 2, MemoryBytes: 2 << 30, Disks: []*agentv1.DiskFact{{Name: "vda", SizeBytes: 8 << 30}},
		Nics: []*agentv1.NICFact{{Name: "eth0", Mac: mac}}}
	inst.report(nil, "Preparing")
	inst.report(hw, "Registering")
	inst.await("machine id", func(d *agentv1.Desired) bool { return d.GetMachine().GetMachineId() == id })
	inst.report(nil, "Waiting")

	// Wait until central saw the contact (batched) and the machine waits.
	deadline := time.Now().Add(15 * time.Second)
	for {
		m := ok(e.api.Machine.Get(admin, &apiv1.MachineServiceGetRequest{Id: id}))(t).GetMachine()
		if m.GetProvisioning() == apiv1.ProvisioningState_PROVISIONING_STATE_WAITING && m.GetLiveliness() == apiv1.Liveliness_LIVELINESS_ALIVE {
			if m.GetSizeId() != "s1" {
				t.Fatalf("size %q", m.GetSizeId())
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("machine not waiting and alive: %v %v", m.GetProvisioning(), m.GetLiveliness())
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A project member allocates it and follows the events.
	owner := e.as(t, e.p1Owner)
	m := ok(e.api.Machine.Create(owner, &apiv1.MachineServiceCreateRequest{ProjectId: e.p1, PartitionId: "fra1", SizeId: "s1", ImageId: "debian-12", Hostname: "web"}))(t).GetMachine()
	if m.GetId() != id || m.GetAllocation().GetHostname() != "web" {
		t.Fatalf("allocated %v", m)
	}
	follow, err := e.api.Machine.Events(owner, &apiv1.MachineServiceEventsRequest{Id: id, Follow: true})
	if err != nil {
		t.Fatal(err)
	}
	doc := inst.await("allocation", func(d *agentv1.Desired) bool { return d.GetMachine().GetAllocation().GetHostname() == "web" })
	if doc.GetMachine().GetAllocation().GetImage().GetSha256() == "" {
		t.Fatalf("allocation without image checksum: %v", doc.GetMachine().GetAllocation())
	}
	inst.report(nil, "Installing", "Booting New Kernel")
	var seen []string
	until := func(last string) {
		t.Helper()
		for !strings.HasSuffix(strings.Join(seen, ","), last) {
			r, err := follow.Recv()
			if err != nil {
				t.Fatalf("event stream after %v: %v", seen, err)
			}
			seen = append(seen, r.GetEvent().GetEvent())
		}
	}
	until("Booting New Kernel")

	// The installed system (the installer is gone: it kexec'd): same
	// identity, the machine's credential.
	ph := openAgent(t, e, &agentv1.Hello{Kind: agentv1.Kind_KIND_PHONEHOME, Identity: id,
		Credential: &agentv1.Credential{Secret: &agentv1.Credential_Token{Token: inst.token}}})
	ph.report(nil, "Phoned Home")
	until("Phoned Home")
	if got := strings.Join(seen, ","); got != "Preparing,Registering,Waiting,Allocated,Installing,Booting New Kernel,Phoned Home" {
		t.Fatalf("events %s", got)
	}
	boot = ok(agents.Boot(bearer(pix.GetSecret()), &agentv1.BootRequest{Mac: mac}))(t)
	if boot.GetAction() != agentv1.BootAction_BOOT_ACTION_DISK {
		t.Fatalf("installed machine boots %v", boot.GetAction())
	}
	// Another project's viewer cannot follow it.
	other, err := e.api.Machine.Events(e.as(t, e.p2Editor), &apiv1.MachineServiceEventsRequest{Id: id, Follow: true})
	if err == nil {
		_, err = other.Recv()
	}
	wantCode(t, err, codes.NotFound)

	// Free: the installed system is told to reboot.
	ok(e.api.Machine.Delete(owner, &apiv1.MachineServiceDeleteRequest{Id: id}))(t)
	d := ph.await("reboot intent", func(d *agentv1.Desired) bool { return d.GetMachine().GetRebootGeneration() == 1 })
	if d.GetMachine().GetAllocation() != nil {
		t.Fatalf("freed machine still has an allocation: %v", d.GetMachine())
	}
	ph.report(nil, "Planned Reboot")
	for {
		r, err := follow.Recv()
		if errors.Is(err, io.EOF) || err != nil {
			t.Fatalf("event stream: %v", err)
		}
		if r.GetEvent().GetEvent() == "Planned Reboot" {
			if r.GetMachine().GetAllocation() != nil || r.GetEvent().GetState() != apiv1.ProvisioningState_PROVISIONING_STATE_PLANNED_REBOOT {
				t.Fatalf("after free: %v", r)
			}
			break
		}
	}
	// A phonehome may not pretend to be an installer.
	ph.report(nil, "Installing")
	ph.refused("")
}
