package cli

import (
	"context"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// fixedTime is the timestamp of all canned objects; testNow is the clock
// the CLI sees, so AGE columns are stable.
var (
	fixedTime = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	testNow   = fixedTime.Add(3 * time.Hour)
)

const (
	testProjectID = "6f1c2a3e-0000-4000-8000-000000000001"
	newProjectID  = "6f1c2a3e-0000-4000-8000-0000000000ff"
)

// recorded is one call the fake server got.
type recorded struct {
	method string // e.g. "PartitionService/Create"
	req    proto.Message
	auth   string
}

// fake is an in-memory metal-central: canned objects, echoing creates and
// updates, and a record of every request.
type fake struct {
	mu     sync.Mutex
	calls  []recorded
	errs   map[string]error
	exists map[string]bool
	// events scripts MachineService.Events per machine (fake_machine_test.go).
	events map[string][]eventAttempt
}

func newFake() *fake {
	return &fake{errs: map[string]error{}, exists: map[string]bool{}, events: map[string][]eventAttempt{}}
}

// failWith makes method answer err.
func (f *fake) failWith(method string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.errs[method] = err
}

// markExisting makes Create of kind/id answer AlreadyExists.
func (f *fake) markExisting(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.exists[key] = true
}

func (f *fake) alreadyExists(kind, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.exists[kind+"/"+id] {
		return status.Errorf(codes.AlreadyExists, "%s %q already exists", kind, id)
	}
	return nil
}

func (f *fake) recorded() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.calls...)
}

func (f *fake) intercept(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	method := strings.TrimPrefix(info.FullMethod, "/metalfleet.api.v1.")
	rec := recorded{method: method, req: proto.Clone(req.(proto.Message))}
	if v := md.Get("authorization"); len(v) > 0 {
		rec.auth = v[0]
	}
	f.mu.Lock()
	f.calls = append(f.calls, rec)
	err := f.errs[method]
	f.mu.Unlock()
	if err != nil {
		return nil, err
	}
	return h(ctx, req)
}

// startFake serves the fake on a loopback port and returns its address.
func startFake(t *testing.T, opts ...grpc.ServerOption) (*fake, string) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := newFake()
	s := grpc.NewServer(append(opts, grpc.UnaryInterceptor(f.intercept))...)
	apiv1.RegisterPartitionServiceServer(s, partitionSrv{f: f})
	apiv1.RegisterSizeServiceServer(s, sizeSrv{f: f})
	apiv1.RegisterSizeReservationServiceServer(s, sizeReservationSrv{f: f})
	apiv1.RegisterImageServiceServer(s, imageSrv{f: f})
	apiv1.RegisterFilesystemLayoutServiceServer(s, fslSrv{f: f})
	apiv1.RegisterTenantServiceServer(s, tenantSrv{f: f})
	apiv1.RegisterProjectServiceServer(s, projectSrv{f: f})
	apiv1.RegisterNetworkServiceServer(s, networkSrv{f: f})
	apiv1.RegisterIPServiceServer(s, ipSrv{f: f})
	apiv1.RegisterTokenServiceServer(s, tokenSrv{f: f})
	apiv1.RegisterMachineServiceServer(s, machineSrv{f: f})
	apiv1.RegisterSwitchServiceServer(s, switchSrv{})
	apiv1.RegisterBMCServiceServer(s, bmcSrv{})
	apiv1.RegisterAuditServiceServer(s, auditSrv{})
	apiv1.RegisterAgentServiceServer(s, agentSrv{})
	apiv1.RegisterBootTokenServiceServer(s, bootTokenSrv{})
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return f, lis.Addr().String()
}

// Canned data.

func ts(d time.Duration) *timestamppb.Timestamp { return timestamppb.New(fixedTime.Add(d)) }

func meta() *apiv1.Meta { return &apiv1.Meta{CreatedAt: ts(0), UpdatedAt: ts(0), Generation: 1} }

func find[T interface{ GetId() string }](kind string, items []T, id string) (T, error) {
	for _, it := range items {
		if it.GetId() == id {
			return it, nil
		}
	}
	var zero T
	return zero, status.Errorf(codes.NotFound, "%s %q not found", kind, id)
}

func partitions() []*apiv1.Partition {
	return []*apiv1.Partition{
		{
			Id: "lab", Name: "Lab", Description: "lab partition", Region: "eu-central",
			Boot:       &apiv1.PartitionBootConfig{KernelUrl: "https://boot.example/vmlinuz", InitramfsUrl: "https://boot.example/initrd", Cmdline: "console=ttyS0"},
			DnsServers: []string{"1.1.1.1", "8.8.8.8"}, NtpServers: []string{"pool.ntp.org"},
			Labels: map[string]string{"env": "lab", "team": "metal"}, Meta: meta(),
		},
		{Id: "fra-1", Name: "Frankfurt 1", Region: "eu-central", Description: "production", Meta: meta()},
	}
}

func sizes() []*apiv1.Size {
	c := func(t apiv1.SizeConstraintType, lo, hi uint64, id string) *apiv1.SizeConstraint {
		return &apiv1.SizeConstraint{Type: t, Min: lo, Max: hi, Identifier: id}
	}
	return []*apiv1.Size{
		{Id: "s1", Name: "small", Description: "anything", Meta: meta(), Constraints: []*apiv1.SizeConstraint{
			c(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, 1, 64, ""),
			c(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY, 1<<30, 1<<40, ""),
			c(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_STORAGE, 1<<30, 100<<40, ""),
		}},
		{Id: "gpu-l", Name: "gpu large", Labels: map[string]string{"gpu": "true"}, Meta: meta(), Constraints: []*apiv1.SizeConstraint{
			c(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, 32, 32, ""),
			c(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY, 256<<30, 256<<30, ""),
			c(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_STORAGE, 2e12, 4e12, ""),
			c(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU, 2, 2, "H100*"),
		}},
	}
}

func sizeReservations() []*apiv1.SizeReservation {
	return []*apiv1.SizeReservation{
		{Id: "r1", SizeId: "s1", PartitionId: "lab", ProjectId: testProjectID, Amount: 3, Description: "ci runners", Meta: meta()},
	}
}

func images() []*apiv1.Image {
	return []*apiv1.Image{
		{
			Id: "debian-12", Name: "Debian 12", Os: "debian", Version: "12.0.0",
			Url: "https://images.example/debian-12.tar.zst", Sha256: "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
			Classification: apiv1.ImageClassification_IMAGE_CLASSIFICATION_SUPPORTED, ExpiresAt: ts(365 * 24 * time.Hour),
			Features: []apiv1.ImageFeature{apiv1.ImageFeature_IMAGE_FEATURE_MACHINE}, Meta: meta(),
		},
		{
			Id: "ubuntu-24.04", Os: "ubuntu", Version: "24.4.0", Url: "https://images.example/ubuntu.tar.zst",
			Classification: apiv1.ImageClassification_IMAGE_CLASSIFICATION_PREVIEW,
			Features:       []apiv1.ImageFeature{apiv1.ImageFeature_IMAGE_FEATURE_MACHINE, apiv1.ImageFeature_IMAGE_FEATURE_FIREWALL}, Meta: meta(),
		},
	}
}

func layouts() []*apiv1.FilesystemLayout {
	return []*apiv1.FilesystemLayout{{
		Id: "default", Name: "Default", Description: "one disk",
		Constraints: &apiv1.FilesystemLayoutConstraints{Sizes: []string{"s1", "gpu-l"}, Images: map[string]string{"debian": ">= 12.0", "ubuntu": "*"}},
		Disks: []*agentv1.Disk{{Device: "/dev/sda", Partitions: []*agentv1.DiskPartition{
			{Number: 1, Label: "efi", SizeBytes: 512 << 20, GptType: "ef00"},
			{Number: 2, Label: "root", GptType: "8300"},
		}}},
		Filesystems: []*agentv1.Filesystem{
			{Path: "/boot/efi", Device: "/dev/sda1", Format: "vfat"},
			{Path: "/", Device: "/dev/sda2", Format: "ext4"},
		},
		Meta: meta(),
	}}
}

func tenants() []*apiv1.Tenant {
	return []*apiv1.Tenant{
		{Id: "t1", Name: "Tenant One", Description: "first tenant", Meta: meta()},
		{Id: "t2", Name: "Tenant Two", Labels: map[string]string{"tier": "gold"}, Meta: meta()},
	}
}

func projects() []*apiv1.Project {
	return []*apiv1.Project{
		{Id: testProjectID, TenantId: "t1", Name: "p1", Description: "web shop", Meta: meta()},
	}
}

func networks() []*apiv1.Network {
	return []*apiv1.Network{
		{
			Id: "super-lab", Name: "lab super", Type: apiv1.NetworkType_NETWORK_TYPE_SUPER, PartitionId: "lab",
			Prefixes: []string{"10.128.0.0/14", "fd00:10::/48"}, ChildPrefixLengthIpv4: 22, ChildPrefixLengthIpv6: 64,
			Usage: &apiv1.NetworkUsage{Ipv4Available: "262144", Ipv4Used: "1024", Ipv6Available: "1208925819614629174706176", Ipv6Used: "36893488147419103232"},
			Meta:  meta(),
		},
		{
			Id: "n1", Name: "n1", Type: apiv1.NetworkType_NETWORK_TYPE_CHILD, PartitionId: "lab", ProjectId: testProjectID,
			ParentId: "super-lab", Prefixes: []string{"10.128.0.0/22", "fd00:10::/64"}, Vrf: 30, Meta: meta(),
		},
		{
			Id: "internet", Type: apiv1.NetworkType_NETWORK_TYPE_EXTERNAL, PartitionId: "lab",
			Prefixes: []string{"203.0.113.0/24"}, Vrf: 104009, Description: "upstream", Meta: meta(),
		},
	}
}

func ips() []*apiv1.IP {
	return []*apiv1.IP{
		{Ip: "10.128.0.5", NetworkId: "n1", ProjectId: testProjectID, Name: "web", Type: apiv1.IPType_IP_TYPE_EPHEMERAL, MachineId: "m2", Meta: meta()},
		{Ip: "203.0.113.10", NetworkId: "internet", ProjectId: testProjectID, Name: "lb", Description: "load balancer", Type: apiv1.IPType_IP_TYPE_STATIC, Meta: meta()},
	}
}

func tokens() []*apiv1.Token {
	return []*apiv1.Token{
		{Id: "tok-admin", Description: "bootstrap", AdminRole: apiv1.Level_LEVEL_EDITOR, ExpiresAt: ts(8 * time.Hour), Meta: meta()},
		{
			Id: "tok-ci", Description: "ci", CreatedBy: "tok-admin",
			ProjectRoles: map[string]apiv1.Level{testProjectID: apiv1.Level_LEVEL_EDITOR, "p0": apiv1.Level_LEVEL_VIEWER},
			TenantRoles:  map[string]apiv1.Level{"t1": apiv1.Level_LEVEL_VIEWER},
			ExpiresAt:    ts(8 * time.Hour), RevokedAt: ts(time.Hour), Meta: meta(),
		},
	}
}

func switches() []*apiv1.Switch {
	return []*apiv1.Switch{{
		Id: "leaf01", PartitionId: "lab", Rack: "r01", LastSync: ts(time.Hour), Meta: meta(),
		Ordinal: 1, Asn: 4200000001, Loopback: "10.255.0.1", Uplinks: []string{"Ethernet120"},
		Sync: &apiv1.SwitchSync{AppliedRevision: 7, ReportedAt: ts(time.Hour)},
		Ports: []*apiv1.SwitchPort{
			{Name: "Ethernet0", Mac: "aa:bb:cc:00:00:01", MachineId: "m1", MachineNic: "eth0", Role: "tenant", Vrf: 10000,
				AdminState: "up", OperState: "up", Neighbours: []string{"aa:bb:cc:00:00:01"}},
			{Name: "Ethernet4", Mac: "aa:bb:cc:00:00:02", Role: "unprovisioned", Shut: true, AdminState: "down", OperState: "down"},
			{Name: "Ethernet120", Role: "uplink", AdminState: "up", OperState: "up", Neighbours: []string{"spine01 swp1"}},
		},
		BgpSessions: []*apiv1.SwitchBgpSession{
			{Port: "Ethernet120", Vrf: "default", PeerGroup: "FABRIC", State: "established", RemoteAs: 4200000100, PrefixesSent: 3, PrefixesAccepted: 12},
		},
	}, {
		Id: "leaf02", PartitionId: "lab", Rack: "r01", LastSync: ts(2 * time.Hour), Meta: meta(), Ordinal: 2, Asn: 4200000002, Loopback: "10.255.0.2",
		Sync: &apiv1.SwitchSync{AppliedRevision: 6, Error: "port Ethernet8: unknown on the switch"},
	}}
}

func auditEntries() []*apiv1.AuditEntry {
	return []*apiv1.AuditEntry{
		{Id: "a1", At: ts(0), Subject: "tok-admin", Method: "/metalfleet.api.v1.PartitionService/Create", Target: "partition/lab", RequestId: "req-1"},
		{Id: "a2", At: ts(time.Minute), Subject: "tok-ci", Method: "/metalfleet.api.v1.IPService/Allocate", Target: "ip/10.128.0.5", ProjectId: testProjectID, RequestId: "req-2"},
	}
}

const (
	leafAgentID      = "7c1e9a40-5f2b-4c8e-9d3a-0b6f1e2d3c4a"
	bmcAgentID       = "7c1e9a40-5f2b-4c8e-9d3a-0b6f1e2d3c4b"
	installerAgentID = "7c1e9a40-5f2b-4c8e-9d3a-0b6f1e2d3c4c"
	newAgentID       = "7c1e9a40-5f2b-4c8e-9d3a-0b6f1e2d3cff"
)

// agents covers the columns' cases: alive and healthy, dead with a message
// and lagging, and never heard from.
func agents() []*apiv1.Agent {
	return []*apiv1.Agent{
		{
			Id: leafAgentID, Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf01", PartitionId: "lab", Replica: "central-0",
			DesiredRevision: 3, AppliedRevision: 3, LastContact: tsAt(testNow.Add(-12 * time.Second)),
			Liveliness: apiv1.Liveliness_LIVELINESS_ALIVE, Health: agentv1.Health_HEALTH_OK,
			Facts: &agentv1.Facts{AgentVersion: "v0.3.1", Hostname: "leaf01.lab", Addresses: []string{"10.0.0.11", "fd00::11"}},
			Desired: &agentv1.Desired{Revision: 3, ChangedAt: ts(time.Hour), Settings: &agentv1.Settings{
				LogLevel: "info", Labels: map[string]string{"rack": "r01"}, ReportFactsGeneration: 1,
			}},
			EnrolledBy: "tok-admin", Meta: meta(),
		},
		{
			Id: bmcAgentID, Kind: agentv1.Kind_KIND_BMC, Identity: "bmc-lab", PartitionId: "lab", Replica: "central-1",
			DesiredRevision: 2, AppliedRevision: 1, LastContact: tsAt(testNow.Add(-10 * time.Minute)),
			Liveliness: apiv1.Liveliness_LIVELINESS_DEAD, Health: agentv1.Health_HEALTH_DEGRADED, Message: "2 of 8 BMCs unreachable",
			Facts:      &agentv1.Facts{AgentVersion: "v0.3.0", Hostname: "mgmt-lab"},
			Desired:    &agentv1.Desired{Revision: 2, ChangedAt: ts(time.Hour)},
			EnrolledBy: "tok-admin", Meta: meta(),
		},
		{
			Id: installerAgentID, Kind: agentv1.Kind_KIND_INSTALLER, Identity: "4c4c4544-0042-3510-8052-b4c04f4d3232", PartitionId: "lab",
			DesiredRevision: 1, Liveliness: apiv1.Liveliness_LIVELINESS_UNKNOWN,
			Desired:    &agentv1.Desired{Revision: 1, ChangedAt: ts(0)},
			EnrolledBy: "boot-token/0b5d6e2a-0000-4000-8000-000000000001", Meta: meta(),
		},
	}
}

func agentEvents() []*apiv1.AgentEvent {
	return []*apiv1.AgentEvent{
		{Time: ts(time.Hour), Type: "Connected", Message: "stream to central-0"},
		{Time: ts(time.Hour + time.Second), Type: "Applied", Message: "revision 3"},
		{Time: ts(2 * time.Hour), Type: "FactsReported", Message: "generation 1"},
	}
}

// findAgent resolves an id or "<kind>/<identity>" like central does.
func findAgent(ref string) (*apiv1.Agent, error) {
	for _, ag := range agents() {
		if ag.GetId() == ref || enumShort(ag.GetKind())+"/"+ag.GetIdentity() == ref {
			return ag, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "agent %q not found", ref)
}

// Services.

type partitionSrv struct {
	apiv1.UnimplementedPartitionServiceServer
	f *fake
}

func (s partitionSrv) Create(_ context.Context, r *apiv1.PartitionServiceCreateRequest) (*apiv1.PartitionServiceCreateResponse, error) {
	if err := s.f.alreadyExists("partition", r.GetPartition().GetId()); err != nil {
		return nil, err
	}
	p := proto.Clone(r.GetPartition()).(*apiv1.Partition)
	p.Meta = meta()
	return &apiv1.PartitionServiceCreateResponse{Partition: p}, nil
}

func (s partitionSrv) Get(_ context.Context, r *apiv1.PartitionServiceGetRequest) (*apiv1.PartitionServiceGetResponse, error) {
	p, err := find("partition", partitions(), r.GetId())
	return &apiv1.PartitionServiceGetResponse{Partition: p}, err
}

func (s partitionSrv) List(context.Context, *apiv1.PartitionServiceListRequest) (*apiv1.PartitionServiceListResponse, error) {
	return &apiv1.PartitionServiceListResponse{Partitions: partitions()}, nil
}

func (s partitionSrv) Update(_ context.Context, r *apiv1.PartitionServiceUpdateRequest) (*apiv1.PartitionServiceUpdateResponse, error) {
	p := proto.Clone(r.GetPartition()).(*apiv1.Partition)
	p.Meta = &apiv1.Meta{CreatedAt: ts(0), UpdatedAt: ts(time.Hour), Generation: 2}
	return &apiv1.PartitionServiceUpdateResponse{Partition: p}, nil
}

func (s partitionSrv) Delete(_ context.Context, r *apiv1.PartitionServiceDeleteRequest) (*apiv1.PartitionServiceDeleteResponse, error) {
	p, err := find("partition", partitions(), r.GetId())
	return &apiv1.PartitionServiceDeleteResponse{Partition: p}, err
}

type sizeSrv struct {
	apiv1.UnimplementedSizeServiceServer
	f *fake
}

func (s sizeSrv) Create(_ context.Context, r *apiv1.SizeServiceCreateRequest) (*apiv1.SizeServiceCreateResponse, error) {
	if err := s.f.alreadyExists("size", r.GetSize().GetId()); err != nil {
		return nil, err
	}
	sz := proto.Clone(r.GetSize()).(*apiv1.Size)
	sz.Meta = meta()
	return &apiv1.SizeServiceCreateResponse{Size: sz}, nil
}

func (s sizeSrv) Get(_ context.Context, r *apiv1.SizeServiceGetRequest) (*apiv1.SizeServiceGetResponse, error) {
	sz, err := find("size", sizes(), r.GetId())
	return &apiv1.SizeServiceGetResponse{Size: sz}, err
}

func (s sizeSrv) List(context.Context, *apiv1.SizeServiceListRequest) (*apiv1.SizeServiceListResponse, error) {
	return &apiv1.SizeServiceListResponse{Sizes: sizes()}, nil
}

func (s sizeSrv) Update(_ context.Context, r *apiv1.SizeServiceUpdateRequest) (*apiv1.SizeServiceUpdateResponse, error) {
	return &apiv1.SizeServiceUpdateResponse{Size: r.GetSize()}, nil
}

func (s sizeSrv) Delete(_ context.Context, r *apiv1.SizeServiceDeleteRequest) (*apiv1.SizeServiceDeleteResponse, error) {
	sz, err := find("size", sizes(), r.GetId())
	return &apiv1.SizeServiceDeleteResponse{Size: sz}, err
}

type sizeReservationSrv struct {
	apiv1.UnimplementedSizeReservationServiceServer
	f *fake
}

func (s sizeReservationSrv) Create(_ context.Context, r *apiv1.SizeReservationServiceCreateRequest) (*apiv1.SizeReservationServiceCreateResponse, error) {
	sr := proto.Clone(r.GetSizeReservation()).(*apiv1.SizeReservation)
	if sr.Id == "" {
		sr.Id = "r2"
	}
	sr.Meta = meta()
	return &apiv1.SizeReservationServiceCreateResponse{SizeReservation: sr}, nil
}

func (s sizeReservationSrv) Get(_ context.Context, r *apiv1.SizeReservationServiceGetRequest) (*apiv1.SizeReservationServiceGetResponse, error) {
	sr, err := find("size reservation", sizeReservations(), r.GetId())
	return &apiv1.SizeReservationServiceGetResponse{SizeReservation: sr}, err
}

func (s sizeReservationSrv) List(context.Context, *apiv1.SizeReservationServiceListRequest) (*apiv1.SizeReservationServiceListResponse, error) {
	return &apiv1.SizeReservationServiceListResponse{SizeReservations: sizeReservations()}, nil
}

type imageSrv struct {
	apiv1.UnimplementedImageServiceServer
	f *fake
}

func (s imageSrv) Create(_ context.Context, r *apiv1.ImageServiceCreateRequest) (*apiv1.ImageServiceCreateResponse, error) {
	if err := s.f.alreadyExists("image", r.GetImage().GetId()); err != nil {
		return nil, err
	}
	img := proto.Clone(r.GetImage()).(*apiv1.Image)
	img.Meta = meta()
	return &apiv1.ImageServiceCreateResponse{Image: img}, nil
}

func (s imageSrv) List(context.Context, *apiv1.ImageServiceListRequest) (*apiv1.ImageServiceListResponse, error) {
	return &apiv1.ImageServiceListResponse{Images: images()}, nil
}

type fslSrv struct {
	apiv1.UnimplementedFilesystemLayoutServiceServer
	f *fake
}

func (s fslSrv) List(context.Context, *apiv1.FilesystemLayoutServiceListRequest) (*apiv1.FilesystemLayoutServiceListResponse, error) {
	return &apiv1.FilesystemLayoutServiceListResponse{FilesystemLayouts: layouts()}, nil
}

func (s fslSrv) Create(_ context.Context, r *apiv1.FilesystemLayoutServiceCreateRequest) (*apiv1.FilesystemLayoutServiceCreateResponse, error) {
	if err := s.f.alreadyExists("filesystem layout", r.GetFilesystemLayout().GetId()); err != nil {
		return nil, err
	}
	return &apiv1.FilesystemLayoutServiceCreateResponse{FilesystemLayout: r.GetFilesystemLayout()}, nil
}

func (s fslSrv) Update(_ context.Context, r *apiv1.FilesystemLayoutServiceUpdateRequest) (*apiv1.FilesystemLayoutServiceUpdateResponse, error) {
	return &apiv1.FilesystemLayoutServiceUpdateResponse{FilesystemLayout: r.GetFilesystemLayout()}, nil
}

type tenantSrv struct {
	apiv1.UnimplementedTenantServiceServer
	f *fake
}

func (s tenantSrv) Create(_ context.Context, r *apiv1.TenantServiceCreateRequest) (*apiv1.TenantServiceCreateResponse, error) {
	if err := s.f.alreadyExists("tenant", r.GetTenant().GetId()); err != nil {
		return nil, err
	}
	t := proto.Clone(r.GetTenant()).(*apiv1.Tenant)
	t.Meta = meta()
	return &apiv1.TenantServiceCreateResponse{Tenant: t}, nil
}

func (s tenantSrv) List(context.Context, *apiv1.TenantServiceListRequest) (*apiv1.TenantServiceListResponse, error) {
	return &apiv1.TenantServiceListResponse{Tenants: tenants()}, nil
}

type projectSrv struct {
	apiv1.UnimplementedProjectServiceServer
	f *fake
}

func (s projectSrv) Create(_ context.Context, r *apiv1.ProjectServiceCreateRequest) (*apiv1.ProjectServiceCreateResponse, error) {
	if err := s.f.alreadyExists("project", r.GetProject().GetTenantId()+"/"+r.GetProject().GetName()); err != nil {
		return nil, err
	}
	p := proto.Clone(r.GetProject()).(*apiv1.Project)
	p.Id = newProjectID
	p.Meta = meta()
	return &apiv1.ProjectServiceCreateResponse{Project: p}, nil
}

func (s projectSrv) Get(_ context.Context, r *apiv1.ProjectServiceGetRequest) (*apiv1.ProjectServiceGetResponse, error) {
	p, err := find("project", projects(), r.GetId())
	return &apiv1.ProjectServiceGetResponse{Project: p}, err
}

func (s projectSrv) List(_ context.Context, r *apiv1.ProjectServiceListRequest) (*apiv1.ProjectServiceListResponse, error) {
	var out []*apiv1.Project
	for _, p := range projects() {
		if (r.GetTenantId() == "" || r.GetTenantId() == p.GetTenantId()) && (r.GetName() == "" || r.GetName() == p.GetName()) {
			out = append(out, p)
		}
	}
	return &apiv1.ProjectServiceListResponse{Projects: out}, nil
}

func (s projectSrv) Update(_ context.Context, r *apiv1.ProjectServiceUpdateRequest) (*apiv1.ProjectServiceUpdateResponse, error) {
	return &apiv1.ProjectServiceUpdateResponse{Project: r.GetProject()}, nil
}

type networkSrv struct {
	apiv1.UnimplementedNetworkServiceServer
	f *fake
}

func (s networkSrv) Create(_ context.Context, r *apiv1.NetworkServiceCreateRequest) (*apiv1.NetworkServiceCreateResponse, error) {
	if err := s.f.alreadyExists("network", r.GetNetwork().GetId()); err != nil {
		return nil, err
	}
	n := proto.Clone(r.GetNetwork()).(*apiv1.Network)
	n.Meta = meta()
	return &apiv1.NetworkServiceCreateResponse{Network: n}, nil
}

func (s networkSrv) Allocate(_ context.Context, r *apiv1.NetworkServiceAllocateRequest) (*apiv1.NetworkServiceAllocateResponse, error) {
	return &apiv1.NetworkServiceAllocateResponse{Network: &apiv1.Network{
		Id: "n-7b2f", Name: r.GetName(), Type: apiv1.NetworkType_NETWORK_TYPE_CHILD, PartitionId: r.GetPartitionId(),
		ProjectId: r.GetProjectId(), ParentId: "super-lab", Prefixes: []string{"10.128.4.0/22", "fd00:10:0:1::/64"}, Vrf: 31, Meta: meta(),
	}}, nil
}

func (s networkSrv) Get(_ context.Context, r *apiv1.NetworkServiceGetRequest) (*apiv1.NetworkServiceGetResponse, error) {
	n, err := find("network", networks(), r.GetId())
	return &apiv1.NetworkServiceGetResponse{Network: n}, err
}

func (s networkSrv) List(context.Context, *apiv1.NetworkServiceListRequest) (*apiv1.NetworkServiceListResponse, error) {
	return &apiv1.NetworkServiceListResponse{Networks: networks()}, nil
}

func (s networkSrv) Update(_ context.Context, r *apiv1.NetworkServiceUpdateRequest) (*apiv1.NetworkServiceUpdateResponse, error) {
	n, err := find("network", networks(), r.GetId())
	if err != nil {
		return nil, err
	}
	n.Name, n.Description, n.Labels = r.GetName(), r.GetDescription(), r.GetLabels()
	return &apiv1.NetworkServiceUpdateResponse{Network: n}, nil
}

func (s networkSrv) Delete(_ context.Context, r *apiv1.NetworkServiceDeleteRequest) (*apiv1.NetworkServiceDeleteResponse, error) {
	n, err := find("network", networks(), r.GetId())
	return &apiv1.NetworkServiceDeleteResponse{Network: n}, err
}

type ipSrv struct {
	apiv1.UnimplementedIPServiceServer
	f *fake
}

func (s ipSrv) Allocate(_ context.Context, r *apiv1.IPServiceAllocateRequest) (*apiv1.IPServiceAllocateResponse, error) {
	if err := s.f.alreadyExists("ip", r.GetIp()); err != nil {
		return nil, err
	}
	addr := r.GetIp()
	if addr == "" {
		addr = "10.128.0.7"
	}
	return &apiv1.IPServiceAllocateResponse{Ip: &apiv1.IP{
		Ip: addr, NetworkId: r.GetNetworkId(), ProjectId: r.GetProjectId(), Name: r.GetName(),
		Description: r.GetDescription(), Type: r.GetType(), Labels: r.GetLabels(), Meta: meta(),
	}}, nil
}

func (s ipSrv) List(context.Context, *apiv1.IPServiceListRequest) (*apiv1.IPServiceListResponse, error) {
	return &apiv1.IPServiceListResponse{Ips: ips()}, nil
}

func (s ipSrv) Update(_ context.Context, r *apiv1.IPServiceUpdateRequest) (*apiv1.IPServiceUpdateResponse, error) {
	return &apiv1.IPServiceUpdateResponse{Ip: &apiv1.IP{Ip: r.GetIp(), Name: r.GetName(), Type: r.GetType(), NetworkId: "internet", ProjectId: testProjectID}}, nil
}

func (s ipSrv) Release(_ context.Context, r *apiv1.IPServiceReleaseRequest) (*apiv1.IPServiceReleaseResponse, error) {
	for _, ip := range ips() {
		if ip.GetIp() == r.GetIp() {
			return &apiv1.IPServiceReleaseResponse{Ip: ip}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "ip %q not found", r.GetIp())
}

type tokenSrv struct {
	apiv1.UnimplementedTokenServiceServer
	f *fake
}

func (s tokenSrv) Create(_ context.Context, r *apiv1.TokenServiceCreateRequest) (*apiv1.TokenServiceCreateResponse, error) {
	return &apiv1.TokenServiceCreateResponse{
		Token: &apiv1.Token{
			Id: "tok-new", Description: r.GetDescription(), AdminRole: r.GetAdminRole(), ProjectRoles: r.GetProjectRoles(),
			TenantRoles: r.GetTenantRoles(), ExpiresAt: ts(8 * time.Hour), CreatedBy: "tok-admin", Meta: meta(),
		},
		Secret: "mfs_c2VjcmV0LXRva2VuLWZvci10ZXN0cw",
	}, nil
}

func (s tokenSrv) List(context.Context, *apiv1.TokenServiceListRequest) (*apiv1.TokenServiceListResponse, error) {
	return &apiv1.TokenServiceListResponse{Tokens: tokens()}, nil
}

func (s tokenSrv) Revoke(_ context.Context, r *apiv1.TokenServiceRevokeRequest) (*apiv1.TokenServiceRevokeResponse, error) {
	t, err := find("token", tokens(), r.GetId())
	if err != nil {
		return nil, err
	}
	t.RevokedAt = ts(2 * time.Hour)
	return &apiv1.TokenServiceRevokeResponse{Token: t}, nil
}

func (s tokenSrv) Whoami(context.Context, *apiv1.TokenServiceWhoamiRequest) (*apiv1.TokenServiceWhoamiResponse, error) {
	return &apiv1.TokenServiceWhoamiResponse{Token: tokens()[0]}, nil
}

// bmcSrv answers like central: the password never comes back.
type bmcSrv struct {
	apiv1.UnimplementedBMCServiceServer
}

func (bmcSrv) GetSettings(_ context.Context, r *apiv1.BMCServiceGetSettingsRequest) (*apiv1.BMCServiceGetSettingsResponse, error) {
	return &apiv1.BMCServiceGetSettingsResponse{Settings: &apiv1.PartitionBMC{PartitionId: r.GetPartitionId(), User: "metal", PasswordSet: true}}, nil
}

func (bmcSrv) SetSettings(_ context.Context, r *apiv1.BMCServiceSetSettingsRequest) (*apiv1.BMCServiceSetSettingsResponse, error) {
	out := proto.Clone(r.GetSettings()).(*apiv1.PartitionBMC)
	out.PasswordSet, out.Password = r.GetSettings().GetPassword() != "", ""
	return &apiv1.BMCServiceSetSettingsResponse{Settings: out}, nil
}

type switchSrv struct {
	apiv1.UnimplementedSwitchServiceServer
}

func (switchSrv) List(context.Context, *apiv1.SwitchServiceListRequest) (*apiv1.SwitchServiceListResponse, error) {
	return &apiv1.SwitchServiceListResponse{Switches: switches()}, nil
}

func (switchSrv) Get(_ context.Context, r *apiv1.SwitchServiceGetRequest) (*apiv1.SwitchServiceGetResponse, error) {
	for _, s := range switches() {
		if s.GetId() == r.GetId() {
			return &apiv1.SwitchServiceGetResponse{Switch: s}, nil
		}
	}
	return nil, status.Errorf(codes.NotFound, "switch %q not found", r.GetId())
}

func (switchSrv) SetPort(_ context.Context, r *apiv1.SwitchServiceSetPortRequest) (*apiv1.SwitchServiceSetPortResponse, error) {
	return &apiv1.SwitchServiceSetPortResponse{Switch: switches()[0]}, nil
}

type auditSrv struct {
	apiv1.UnimplementedAuditServiceServer
}

func (auditSrv) List(context.Context, *apiv1.AuditServiceListRequest) (*apiv1.AuditServiceListResponse, error) {
	return &apiv1.AuditServiceListResponse{Entries: auditEntries()}, nil
}

type agentSrv struct {
	apiv1.UnimplementedAgentServiceServer
}

func (agentSrv) List(_ context.Context, r *apiv1.AgentServiceListRequest) (*apiv1.AgentServiceListResponse, error) {
	var out []*apiv1.Agent
	for _, ag := range agents() {
		if (r.GetKind() == agentv1.Kind_KIND_UNSPECIFIED || r.GetKind() == ag.GetKind()) && (r.GetPartitionId() == "" || r.GetPartitionId() == ag.GetPartitionId()) {
			out = append(out, ag)
		}
	}
	return &apiv1.AgentServiceListResponse{Agents: out}, nil
}

func (agentSrv) Get(_ context.Context, r *apiv1.AgentServiceGetRequest) (*apiv1.AgentServiceGetResponse, error) {
	ag, err := findAgent(r.GetId())
	if err != nil {
		return nil, err
	}
	events := agentEvents()
	if n := int(r.GetEvents()); n > 0 && n < len(events) {
		events = events[len(events)-n:]
	}
	return &apiv1.AgentServiceGetResponse{Agent: ag, Events: events}, nil
}

func (agentSrv) Enroll(_ context.Context, r *apiv1.AgentServiceEnrollRequest) (*apiv1.AgentServiceEnrollResponse, error) {
	return &apiv1.AgentServiceEnrollResponse{
		Agent: &apiv1.Agent{
			Id: newAgentID, Kind: r.GetKind(), Identity: r.GetIdentity(), PartitionId: r.GetPartitionId(),
			DesiredRevision: 1, Liveliness: apiv1.Liveliness_LIVELINESS_UNKNOWN,
			Desired:    &agentv1.Desired{Revision: 1, ChangedAt: ts(0)},
			EnrolledBy: "tok-admin", Meta: meta(),
		},
		Secret: "mfa_c2VjcmV0LWFnZW50LWNyZWRlbnRpYWw",
	}, nil
}

func (agentSrv) Configure(_ context.Context, r *apiv1.AgentServiceConfigureRequest) (*apiv1.AgentServiceConfigureResponse, error) {
	ag, err := findAgent(r.GetId())
	if err != nil {
		return nil, err
	}
	ag.DesiredRevision++
	return &apiv1.AgentServiceConfigureResponse{Agent: ag}, nil
}

func (agentSrv) Delete(_ context.Context, r *apiv1.AgentServiceDeleteRequest) (*apiv1.AgentServiceDeleteResponse, error) {
	ag, err := findAgent(r.GetId())
	return &apiv1.AgentServiceDeleteResponse{Agent: ag}, err
}

type bootTokenSrv struct {
	apiv1.UnimplementedBootTokenServiceServer
}

func (bootTokenSrv) Create(_ context.Context, r *apiv1.BootTokenServiceCreateRequest) (*apiv1.BootTokenServiceCreateResponse, error) {
	life := 30 * time.Minute
	if r.GetExpiresIn() != nil {
		life = r.GetExpiresIn().AsDuration()
	}
	return &apiv1.BootTokenServiceCreateResponse{
		BootToken: &apiv1.BootToken{Id: "0b5d6e2a-0000-4000-8000-000000000002", PartitionId: r.GetPartitionId(), ExpiresAt: ts(life), Meta: meta()},
		Secret:    "mfb_c2VjcmV0LWJvb3QtdG9rZW4",
	}, nil
}

func tsAt(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }
