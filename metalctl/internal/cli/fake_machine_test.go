package cli

import (
	"context"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// newMachineID is the machine the fake allocates when create names none.
const newMachineID = "4c4c4544-0042-3510-8052-b4c04f4d3232"

// allocatedAt is when the fake's Create allocates, so that --wait output
// (times and elapsed) is stable.
var allocatedAt = testNow.Add(-2 * time.Minute)

// machines covers the status column's cases: alive and waiting, dead with
// an allocation, unknown and stuck without a size, crash-looping.
func machines() []*apiv1.Machine {
	return []*apiv1.Machine{
		{
			Id: "m1", PartitionId: "lab", SizeId: "s1", Rack: "r01", State: apiv1.MachineState_MACHINE_STATE_AVAILABLE,
			Liveliness: apiv1.Liveliness_LIVELINESS_ALIVE, LastEvent: "Waiting", LastEventAt: ts(-20 * time.Minute),
			Provisioning: apiv1.ProvisioningState_PROVISIONING_STATE_WAITING,
			Hardware:     &agentv1.MachineFacts{Cores: 16, MemoryBytes: 64 << 30, Disks: []*agentv1.DiskFact{{Name: "/dev/sda", SizeBytes: 960e9}}},
			Meta:         meta(),
		},
		{
			Id: "m2", PartitionId: "lab", SizeId: "gpu-l", Rack: "r02", State: apiv1.MachineState_MACHINE_STATE_RESERVED,
			StateReason: "kept for the GPU team",
			Liveliness:  apiv1.Liveliness_LIVELINESS_DEAD, LastEvent: "Phoned Home", LastEventAt: ts(-5 * 24 * time.Hour),
			Provisioning: apiv1.ProvisioningState_PROVISIONING_STATE_PHONED_HOME,
			Issues:       []*apiv1.MachineIssue{{Id: "dead", Description: "no contact for 5d", MachineId: "m2"}},
			Allocation: &apiv1.MachineAllocation{
				Id: "alloc-m2", ProjectId: testProjectID, Hostname: "web-0", ImageId: "debian-12", Networks: []string{"n1"},
				Ips: []string{"10.128.0.5", "fd00:10::5"}, CreatedAt: ts(-6 * 24 * time.Hour), PhonedHomeAt: ts(-5 * 24 * time.Hour),
			},
			Meta: meta(),
		},
		{
			Id: "m3", PartitionId: "fra-1", Liveliness: apiv1.Liveliness_LIVELINESS_UNKNOWN, State: apiv1.MachineState_MACHINE_STATE_AVAILABLE,
			LastEvent: "Registering", LastEventAt: ts(-time.Hour), Provisioning: apiv1.ProvisioningState_PROVISIONING_STATE_REGISTERING,
			Issues: []*apiv1.MachineIssue{
				{Id: "no-size", Description: "hardware matches no size", MachineId: "m3"},
				{Id: "liveliness-unknown", Description: "never heard from", MachineId: "m3"},
				{Id: "stuck", Description: "Registering for 4h, limit 5m", MachineId: "m3"},
			},
			Meta: meta(),
		},
		{
			Id: "m4", PartitionId: "lab", SizeId: "s1", Rack: "r01", State: apiv1.MachineState_MACHINE_STATE_LOCKED, StateReason: "disk errors",
			Liveliness: apiv1.Liveliness_LIVELINESS_ALIVE, LastEvent: "Crashed", LastEventAt: tsAt(testNow.Add(-90 * time.Second)),
			Provisioning: apiv1.ProvisioningState_PROVISIONING_STATE_CRASHED,
			Issues:       []*apiv1.MachineIssue{{Id: "crash-loop", Description: "crashed 3 times in 10m", MachineId: "m4"}},
			Meta:         meta(),
		},
	}
}

// machineEvents is the canned event log of every machine.
func machineEvents(id string) []*apiv1.MachineEvent {
	ev := func(d time.Duration, event, msg string, st apiv1.ProvisioningState) *apiv1.MachineEvent {
		return &apiv1.MachineEvent{Time: ts(d), Event: event, Message: msg, State: st, MachineId: id}
	}
	return []*apiv1.MachineEvent{
		ev(0, "PXE Booting", "aa:bb:cc:00:00:01 got 10.0.0.20", apiv1.ProvisioningState_PROVISIONING_STATE_PXE_BOOTING),
		ev(40*time.Second, "Preparing", "", apiv1.ProvisioningState_PROVISIONING_STATE_PREPARING),
		ev(41*time.Second, "Registering", "16 cores, 64GiB, 1 disk", apiv1.ProvisioningState_PROVISIONING_STATE_REGISTERING),
		ev(42*time.Second, "Waiting", "", apiv1.ProvisioningState_PROVISIONING_STATE_WAITING),
		{Time: ts(50 * time.Second), Event: "Phoned Home", State: apiv1.ProvisioningState_PROVISIONING_STATE_WAITING, MachineId: id,
			Error: "Phoned Home is no transition from Waiting"},
	}
}

// newMachine is what the fake's Create allocates.
func newMachine(r *apiv1.MachineServiceCreateRequest) *apiv1.Machine {
	id := r.GetId()
	if id == "" {
		id = newMachineID
	}
	size := r.GetSizeId()
	if size == "" {
		size = "s1"
	}
	return &apiv1.Machine{
		Id: id, PartitionId: r.GetPartitionId(), SizeId: size, Rack: "r01", State: apiv1.MachineState_MACHINE_STATE_AVAILABLE,
		Liveliness: apiv1.Liveliness_LIVELINESS_ALIVE, LastEvent: "Waiting", LastEventAt: tsAt(allocatedAt.Add(-time.Hour)),
		Provisioning: apiv1.ProvisioningState_PROVISIONING_STATE_WAITING,
		Allocation: &apiv1.MachineAllocation{
			Id: "alloc-1", ProjectId: r.GetProjectId(), Hostname: r.GetHostname(), ImageId: r.GetImageId(), Networks: r.GetNetworks(),
			Ips: []string{"10.128.0.7", "fd00:10::7"}, SshPublicKeys: r.GetSshPublicKeys(), UserData: r.GetUserData(),
			FilesystemLayoutId: "default", CreatedAt: tsAt(allocatedAt),
		},
		Labels: r.GetLabels(),
		Meta:   meta(),
	}
}

// eventAttempt scripts one Events call: the responses, then the stream's
// end: err, or (hold) staying open until the client leaves.
type eventAttempt struct {
	resps []*apiv1.MachineServiceEventsResponse
	err   error
	hold  bool
}

// scriptEvents makes the n-th Events call for machine id play attempts[n]
// (the last one again for later calls).
func (f *fake) scriptEvents(id string, attempts ...eventAttempt) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events[id] = attempts
}

// record notes a streaming call, which the unary interceptor does not see,
// and returns how many calls of the method came before and the error set by
// failWith.
func (f *fake) record(method string, req proto.Message) (before int, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, c := range f.calls {
		if c.method == method {
			before++
		}
	}
	f.calls = append(f.calls, recorded{method: method, req: proto.Clone(req)})
	return before, f.errs[method]
}

func (f *fake) attempt(id string, n int) (eventAttempt, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	as := f.events[id]
	if len(as) == 0 {
		return eventAttempt{}, false
	}
	return as[min(n, len(as)-1)], true
}

// waitEvent is an event of the fake's --wait scripts, at allocatedAt+d.
func waitEvent(id string, d time.Duration, event, msg string, m *apiv1.Machine) *apiv1.MachineServiceEventsResponse {
	return &apiv1.MachineServiceEventsResponse{
		Event:   &apiv1.MachineEvent{Time: tsAt(allocatedAt.Add(d)), Event: event, Message: msg, MachineId: id},
		Machine: m,
	}
}

type machineSrv struct {
	apiv1.UnimplementedMachineServiceServer
	f *fake
}

func (machineSrv) Get(_ context.Context, r *apiv1.MachineServiceGetRequest) (*apiv1.MachineServiceGetResponse, error) {
	m, err := find("machine", machines(), r.GetId())
	return &apiv1.MachineServiceGetResponse{Machine: m}, err
}

func (machineSrv) List(_ context.Context, r *apiv1.MachineServiceListRequest) (*apiv1.MachineServiceListResponse, error) {
	var out []*apiv1.Machine
	for _, m := range machines() {
		if (r.GetPartitionId() == "" || r.GetPartitionId() == m.GetPartitionId()) &&
			(r.GetProjectId() == "" || r.GetProjectId() == m.GetAllocation().GetProjectId()) &&
			(r.GetSizeId() == "" || r.GetSizeId() == m.GetSizeId()) {
			out = append(out, m)
		}
	}
	return &apiv1.MachineServiceListResponse{Machines: out}, nil
}

func (machineSrv) Create(_ context.Context, r *apiv1.MachineServiceCreateRequest) (*apiv1.MachineServiceCreateResponse, error) {
	return &apiv1.MachineServiceCreateResponse{Machine: newMachine(r)}, nil
}

func (machineSrv) Delete(_ context.Context, r *apiv1.MachineServiceDeleteRequest) (*apiv1.MachineServiceDeleteResponse, error) {
	m, err := find("machine", machines(), r.GetId())
	if err != nil {
		return nil, err
	}
	m.Allocation = nil
	m.Provisioning = apiv1.ProvisioningState_PROVISIONING_STATE_PLANNED_REBOOT
	return &apiv1.MachineServiceDeleteResponse{Machine: m}, nil
}

func (machineSrv) Reinstall(_ context.Context, r *apiv1.MachineServiceReinstallRequest) (*apiv1.MachineServiceReinstallResponse, error) {
	m, err := find("machine", machines(), r.GetId())
	if err != nil {
		return nil, err
	}
	if m.GetAllocation() == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "machine %q is not allocated", r.GetId())
	}
	if r.GetImageId() != "" {
		m.Allocation.ImageId = r.GetImageId()
	}
	m.Allocation.Id = "alloc-m2-reinstall"
	return &apiv1.MachineServiceReinstallResponse{Machine: m}, nil
}

func (machineSrv) Power(_ context.Context, r *apiv1.MachineServicePowerRequest) (*apiv1.MachineServicePowerResponse, error) {
	m, err := find("machine", machines(), r.GetId())
	return &apiv1.MachineServicePowerResponse{Machine: m, Generation: 1}, err
}

func (machineSrv) Boot(_ context.Context, r *apiv1.MachineServiceBootRequest) (*apiv1.MachineServiceBootResponse, error) {
	m, err := find("machine", machines(), r.GetId())
	return &apiv1.MachineServiceBootResponse{Machine: m, Generation: 1}, err
}

func (machineSrv) Identify(_ context.Context, r *apiv1.MachineServiceIdentifyRequest) (*apiv1.MachineServiceIdentifyResponse, error) {
	m, err := find("machine", machines(), r.GetId())
	return &apiv1.MachineServiceIdentifyResponse{Machine: m, Generation: 1}, err
}

func (machineSrv) UpdateFirmware(_ context.Context, r *apiv1.MachineServiceUpdateFirmwareRequest) (*apiv1.MachineServiceUpdateFirmwareResponse, error) {
	m, err := find("machine", machines(), r.GetId())
	return &apiv1.MachineServiceUpdateFirmwareResponse{Machine: m, Generation: 1}, err
}

func (machineSrv) SetState(_ context.Context, r *apiv1.MachineServiceSetStateRequest) (*apiv1.MachineServiceSetStateResponse, error) {
	m, err := find("machine", machines(), r.GetId())
	if err != nil {
		return nil, err
	}
	m.State, m.StateReason = r.GetState(), r.GetReason()
	return &apiv1.MachineServiceSetStateResponse{Machine: m}, nil
}

func (machineSrv) Issues(_ context.Context, r *apiv1.MachineServiceIssuesRequest) (*apiv1.MachineServiceIssuesResponse, error) {
	var out []*apiv1.MachineIssue
	for _, m := range machines() {
		if r.GetPartitionId() == "" || r.GetPartitionId() == m.GetPartitionId() {
			out = append(out, m.GetIssues()...)
		}
	}
	return &apiv1.MachineServiceIssuesResponse{Issues: out}, nil
}

// Events plays the machine's script, or else its canned log (the newest
// limit events) and, when following, holds the stream open.
func (s machineSrv) Events(r *apiv1.MachineServiceEventsRequest, stream apiv1.MachineService_EventsServer) error {
	n, err := s.f.record("MachineService/Events", r)
	if err != nil {
		return err
	}
	a, ok := s.f.attempt(r.GetId(), n)
	if !ok {
		m, err := find("machine", machines(), r.GetId())
		if err != nil {
			return err
		}
		evs := machineEvents(r.GetId())
		if l := int(r.GetLimit()); l > 0 && l < len(evs) {
			evs = evs[len(evs)-l:]
		}
		for _, ev := range evs {
			a.resps = append(a.resps, &apiv1.MachineServiceEventsResponse{Event: ev, Machine: m})
		}
		a.hold = r.GetFollow()
	}
	for _, resp := range a.resps {
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	if a.hold {
		<-stream.Context().Done()
		return nil
	}
	return a.err
}
