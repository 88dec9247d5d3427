package service

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/pgtest"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// lab is a partition with a size, an image, an external network, a
// project and a PXE service, on a real database and a real fleet hub.
type lab struct {
	t       testing.TB
	a       *API
	hub     *fleet.Hub
	dom     fleet.Domain
	project string
	pixie   fleet.Agent
	ctx     context.Context
}

func newLab(t testing.TB, clients int) *lab {
	t.Helper()
	ctx := benchCtx("/metalfleet.api.v1.MachineService/Create")
	st, err := store.Open(ctx, pg.BenchDatabase(t), nil, store.WithMaxConns(int32(clients+8)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	hub, err := fleet.New(st, slog.New(slog.DiscardHandler), fleet.Config{Replica: "test"}, fleet.NewNotifyHints(st, slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	a, err := New(ctx, st, nil, Config{Centrals: []string{"[2001:db8::1]:8443", "central:8443"}, CAPin: strings.Repeat("ab", 32)}, WithFleet(hub))
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{t: t, a: a, hub: hub, dom: a.Provisioning(), ctx: ctx}
	must := func(_ any, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must((&partitionService{API: a}).Create(ctx, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{
		Id: "p1", Boot: &apiv1.PartitionBootConfig{Cmdline: "console=ttyS0"}, DnsServers: []string{"192.0.2.53"}, AllowSingleAttach: true}}))
	must((&partitionService{API: a}).Create(ctx, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "p2"}}))
	must((&sizeService{API: a}).Create(ctx, &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: "s1", Constraints: []*apiv1.SizeConstraint{
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, Min: 1, Max: 8},
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY, Min: 1 << 30, Max: 64 << 30},
	}}}))
	must((&imageService{API: a}).Create(ctx, &apiv1.ImageServiceCreateRequest{Image: &apiv1.Image{
		Id: "debian-12", Os: "debian", Version: "12.0.0", Url: "http://images/debian.tar.zst", Sha256: strings.Repeat("0", 64)}}))
	must((&imageService{API: a}).Create(ctx, &apiv1.ImageServiceCreateRequest{Image: &apiv1.Image{
		Id: "debian-13", Os: "debian", Version: "13.0.0", Url: "http://images/debian13.tar.zst", Sha256: strings.Repeat("1", 64)}}))
	must((&networkService{API: a}).Create(ctx, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
		Id: "internet", Type: apiv1.NetworkType_NETWORK_TYPE_EXTERNAL, Prefixes: []string{"10.64.0.0/16", "2001:db8:64::/64"}}}))
	must((&tenantService{API: a}).Create(ctx, &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: "t1"}}))
	p, err := (&projectService{API: a}).Create(ctx, &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: "t1", Name: "p"}})
	must(p, err)
	l.project = p.GetProject().GetId()
	l.pixie = l.enroll(agentv1.Kind_KIND_PIXIE, "pixie-p1", "p1")
	return l
}

func (l *lab) newProject(name string) string {
	l.t.Helper()
	p, err := (&projectService{API: l.a}).Create(l.ctx, &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: "t1", Name: name}})
	if err != nil {
		l.t.Fatal(err)
	}
	return p.GetProject().GetId()
}

func (l *lab) tx(fn func(tx pgx.Tx) error) error { return l.a.store.Tx(l.ctx, fn) }

func (l *lab) enroll(kind agentv1.Kind, identity, partition string) fleet.Agent {
	l.t.Helper()
	var e fleet.Enrolment
	if err := l.tx(func(tx pgx.Tx) error {
		var err error
		e, err = l.hub.Enroll(l.ctx, tx, kind, identity, partition, "test")
		return err
	}); err != nil {
		l.t.Fatal(err)
	}
	return fleet.Agent{ID: e.ID, Kind: kind, Identity: identity, Partition: partition}
}

// report runs a report through the domain as the hub does: in one
// transaction with the events.
func (l *lab) report(a fleet.Agent, facts *agentv1.MachineFacts, events ...string) error {
	r := &agentv1.Report{}
	if facts != nil {
		r.Facts = &agentv1.Facts{Machine: facts}
	}
	for _, e := range events {
		typ, msg, _ := strings.Cut(e, ":")
		r.Events = append(r.Events, &agentv1.Event{Type: typ, Message: msg, Time: timestamppb.Now()})
	}
	return l.tx(func(tx pgx.Tx) error { return l.dom.Report(l.ctx, tx, a, r) })
}

func facts(id string, n int, cores uint32) *agentv1.MachineFacts {
	return &agentv1.MachineFacts{
		Uuid: id, Cores: cores, MemoryBytes: 4 << 30, Vendor: "QEMU",
		Disks: []*agentv1.DiskFact{{Name: "vda", SizeBytes: 20 << 30}},
		Nics: []*agentv1.NICFact{
			{Name: "eth0", Mac: mac(n, 0)},
			{Name: "eth1", Mac: mac(n, 1)},
		},
	}
}

func mac(n, port int) string {
	return net.HardwareAddr{0x52, 0x54, 0x00, byte(n >> 8), byte(n), byte(port)}.String()
}

// machine boots a server into Waiting the way its installer does and
// marks its agent alive. It returns the machine id and its agent.
func (l *lab) machine(n int, rack string) (string, fleet.Agent) {
	l.t.Helper()
	id := uuid.NewString()
	ag := l.enroll(agentv1.Kind_KIND_INSTALLER, id, "p1")
	if err := l.report(ag, nil, "Preparing"); err != nil {
		l.t.Fatal(err)
	}
	if err := l.report(ag, facts(id, n, 4), "Registering"); err != nil {
		l.t.Fatal(err)
	}
	if err := l.report(ag, nil, "Waiting"); err != nil {
		l.t.Fatal(err)
	}
	if _, err := l.a.store.Pool().Exec(l.ctx, `UPDATE agents SET last_contact = now() WHERE id = $1`, ag.ID); err != nil {
		l.t.Fatal(err)
	}
	if rack != "" {
		if _, err := l.a.store.Pool().Exec(l.ctx, `UPDATE machines SET rack = $2 WHERE id = $1`, id, rack); err != nil {
			l.t.Fatal(err)
		}
	}
	return id, ag
}

func (l *lab) get(id string) *apiv1.Machine {
	l.t.Helper()
	m, err := l.a.readMachine(l.ctx, l.a.store.Pool(), id)
	if err != nil {
		l.t.Fatal(err)
	}
	return m
}

func (l *lab) doc(agentID string) *agentv1.Desired {
	l.t.Helper()
	var raw []byte
	if err := l.a.store.Pool().QueryRow(l.ctx, `SELECT desired FROM agents WHERE id = $1`, agentID).Scan(&raw); err != nil {
		l.t.Fatal(err)
	}
	d := &agentv1.Desired{}
	if err := protojson.Unmarshal(raw, d); err != nil {
		l.t.Fatal(err)
	}
	return d
}

func (l *lab) count(sql string, args ...any) int {
	l.t.Helper()
	var n int
	if err := l.a.store.Pool().QueryRow(l.ctx, sql, args...).Scan(&n); err != nil {
		l.t.Fatal(err)
	}
	return n
}

func (l *lab) create(req *apiv1.MachineServiceCreateRequest) (*apiv1.Machine, error) {
	if req.ProjectId == "" {
		req.ProjectId = l.project
	}
	if req.ImageId == "" {
		req.ImageId = "debian-12"
	}
	if req.Id == "" && req.PartitionId == "" {
		req.PartitionId, req.SizeId = "p1", "s1"
	}
	r, err := (&machineService{API: l.a}).Create(l.ctx, req)
	return r.GetMachine(), err
}

func TestRegistrationLifecycleAndDocument(t *testing.T) {
	l := newLab(t, 4)
	id, ag := l.machine(1, "")
	m := l.get(id)
	if m.GetSizeId() != "s1" || m.GetPartitionId() != "p1" || m.GetProvisioning() != apiv1.ProvisioningState_PROVISIONING_STATE_WAITING {
		t.Fatalf("machine %v", m)
	}
	if m.GetHardware().GetCores() != 4 || len(m.GetHardware().GetNics()) != 2 || m.GetLastEvent() != "Waiting" {
		t.Fatalf("hardware %v, last event %q", m.GetHardware(), m.GetLastEvent())
	}
	if m.GetLiveliness() != apiv1.Liveliness_LIVELINESS_ALIVE || len(m.GetIssues()) != 0 {
		t.Fatalf("liveliness %v issues %v", m.GetLiveliness(), m.GetIssues())
	}
	if got := l.doc(ag.ID).GetMachine().GetMachineId(); got != id {
		t.Fatalf("installer document machine id %q, want %q", got, id)
	}
	if n := l.count(`SELECT count(*) FROM machine_nics WHERE machine_id = $1`, id); n != 2 {
		t.Fatalf("%d nics stored", n)
	}
	var events []string
	rows, _ := l.a.store.Pool().Query(l.ctx, `SELECT event || '>' || state FROM machine_events WHERE machine_id = $1 ORDER BY seq`, id)
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		events = append(events, s)
	}
	if want := "Preparing>Preparing Registering>Registering Waiting>Waiting"; strings.Join(events, " ") != want {
		t.Fatalf("events %q, want %q", events, want)
	}
	// Hardware that matches no size: visible, with an issue, not allocatable.
	big := uuid.NewString()
	bag := l.enroll(agentv1.Kind_KIND_INSTALLER, big, "p1")
	if err := l.report(bag, facts(big, 2, 96), "Preparing", "Registering", "Waiting"); err != nil {
		t.Fatal(err)
	}
	bm := l.get(big)
	if bm.GetSizeId() != "" || len(bm.GetIssues()) == 0 || bm.GetIssues()[0].GetId() != "no-size" {
		t.Fatalf("unsized machine %v issues %v", bm.GetSizeId(), bm.GetIssues())
	}
	if _, err := l.create(&apiv1.MachineServiceCreateRequest{Id: big}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("allocating an unsized machine: %v", err)
	}
}

func TestBadFactsAndEventsChangeNothing(t *testing.T) {
	l := newLab(t, 4)
	id := uuid.NewString()
	ag := l.enroll(agentv1.Kind_KIND_INSTALLER, id, "p1")
	bad := []struct {
		name  string
		f     func(*agentv1.MachineFacts)
		field string
	}{
		{"other uuid", func(f *agentv1.MachineFacts) { f.Uuid = uuid.NewString() }, "report.facts.machine.uuid"},
		{"no cores", func(f *agentv1.MachineFacts) { f.Cores = 0 }, "report.facts.machine.cores"},
		{"bad mac", func(f *agentv1.MachineFacts) { f.Nics[1].Mac = "52:54:zz" }, "report.facts.machine.nics[1].mac"},
		{"twice the mac", func(f *agentv1.MachineFacts) { f.Nics[1].Mac = f.Nics[0].Mac }, "report.facts.machine.nics[1].mac"},
		{"disk with slash", func(f *agentv1.MachineFacts) { f.Disks[0].Name = "../sda" }, "report.facts.machine.disks[0].name"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			f := facts(id, 7, 4)
			tt.f(f)
			err := l.report(ag, f, "Preparing", "Registering")
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tt.field) {
				t.Fatalf("err %v, want InvalidArgument naming %s", err, tt.field)
			}
			if n := l.count(`SELECT count(*) FROM machines`); n != 0 {
				t.Fatalf("%d machines stored", n)
			}
			if n := l.count(`SELECT count(*) FROM machine_nics`); n != 0 {
				t.Fatalf("%d nics stored", n)
			}
		})
	}
	// A phonehome may not report installer events; a PXE service's event
	// with a bad MAC is refused.
	ph := fleet.Agent{ID: ag.ID, Kind: agentv1.Kind_KIND_PHONEHOME, Identity: id, Partition: "p1"}
	if err := l.report(ag, facts(id, 7, 4), "Preparing", "Registering", "Waiting"); err != nil {
		t.Fatal(err)
	}
	if err := l.report(ph, nil, "Installing"); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("phonehome reporting Installing: %v", err)
	}
	pxe := &agentv1.Report{Events: []*agentv1.Event{{Type: "PXE Booting", Subject: "not-a-mac"}}}
	if err := l.tx(func(tx pgx.Tx) error { return l.dom.Report(l.ctx, tx, l.pixie, pxe) }); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("PXE event with a bad MAC: %v", err)
	}
	if n := l.count(`SELECT count(*) FROM machine_events WHERE machine_id = $1`, id); n != 3 {
		t.Fatalf("%d events, want the 3 valid ones", n)
	}
}

func TestInvalidTransitionAndCrashLoop(t *testing.T) {
	l := newLab(t, 4)
	id, ag := l.machine(1, "")
	if err := l.report(ag, nil, "Booting New Kernel"); err != nil {
		t.Fatal(err)
	}
	m := l.get(id)
	if m.GetProvisioning() != apiv1.ProvisioningState_PROVISIONING_STATE_WAITING || len(m.GetIssues()) != 1 || m.GetIssues()[0].GetId() != "failed-event" {
		t.Fatalf("after an invalid event: state %v issues %v", m.GetProvisioning(), m.GetIssues())
	}
	for range 3 {
		if err := l.report(ag, nil, "Crashed:disk on fire", "PXE Booting", "Preparing"); err != nil {
			t.Fatal(err)
		}
	}
	if is := l.get(id).GetIssues(); len(is) != 1 || is[0].GetId() != "crash-loop" {
		t.Fatalf("issues after three crashes %v", is)
	}
	if err := l.report(ag, nil, "Registering", "Waiting"); err != nil {
		t.Fatal(err)
	}
	if is := l.get(id).GetIssues(); len(is) != 0 {
		t.Fatalf("issues after reaching Waiting %v", is)
	}
	// Stuck: a machine Installing for longer than the timeout.
	if err := l.report(ag, nil, "Installing"); err != nil {
		t.Fatal(err)
	}
	if _, err := l.a.store.Pool().Exec(l.ctx, `UPDATE machines SET last_event_at = now() - interval '2 hours' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	if is := l.get(id).GetIssues(); len(is) != 1 || is[0].GetId() != "stuck" {
		t.Fatalf("issues of a machine installing for 2h: %v", is)
	}
	r, err := (&machineService{API: l.a}).Issues(l.ctx, &apiv1.MachineServiceIssuesRequest{PartitionId: "p1"})
	if err != nil || len(r.GetIssues()) != 1 || r.GetIssues()[0].GetMachineId() != id {
		t.Fatalf("Issues() = %v, %v", r.GetIssues(), err)
	}
}

// TestAllocateConcurrently: 1,000 concurrent requests for 500 waiting
// machines, twice (freeing everything in between): exactly 500 succeed,
// no machine or IP is handed out twice, nothing is left half-allocated.
func TestAllocateConcurrently(t *testing.T) {
	if testing.Short() {
		t.Skip("500 machines")
	}
	l := newLab(t, 64)
	const machines, requests = 500, 1000
	agents := map[string]fleet.Agent{}
	for i := range machines {
		id, ag := l.machine(i, fmt.Sprintf("r%d", i%5))
		agents[id] = ag
	}
	for round := range 2 {
		var (
			mu       sync.Mutex
			won      = map[string]bool{}
			ips      = map[string]bool{}
			failures = map[codes.Code]int{}
			wg       sync.WaitGroup
			sem      = make(chan struct{}, 64)
		)
		for range requests {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				m, err := l.create(&apiv1.MachineServiceCreateRequest{Networks: []string{"internet"}})
				mu.Lock()
				defer mu.Unlock()
				if err != nil {
					failures[status.Code(err)]++
					return
				}
				if won[m.GetId()] {
					t.Errorf("round %d: machine %s allocated twice", round, m.GetId())
				}
				won[m.GetId()] = true
				for _, ip := range m.GetAllocation().GetIps() {
					if ips[ip] {
						t.Errorf("round %d: ip %s handed out twice", round, ip)
					}
					ips[ip] = true
				}
			})
		}
		wg.Wait()
		if len(won) != machines || failures[codes.ResourceExhausted] != requests-machines || len(failures) != 1 {
			t.Fatalf("round %d: %d allocated, failures %v; want %d and %d ResourceExhausted", round, len(won), failures, machines, requests-machines)
		}
		if len(ips) != 2*machines {
			t.Fatalf("round %d: %d IPs, want one IPv4 and one IPv6 per machine", round, len(ips))
		}
		if n := l.count(`SELECT count(*) FROM audit WHERE method = '/metalfleet.api.v1.MachineService/Create' AND target LIKE 'machine/%'`); n != (2*round+1)*machines {
			// The test context names every call Create, the frees of the
			// round before included.
			t.Fatalf("round %d: %d audit rows of allocations and frees, want %d", round, n, (2*round+1)*machines)
		}
		if n := l.count(`SELECT count(*) FROM machine_events WHERE event = 'Allocated'`); n != (round+1)*machines {
			t.Fatalf("round %d: %d Allocated events, want %d", round, n, (round+1)*machines)
		}
		if n := l.count(`SELECT count(*) FROM machines WHERE project_id IS NOT NULL`); n != machines {
			t.Fatalf("round %d: %d machines with a project", round, n)
		}
		if n := l.count(`SELECT count(*) FROM ips WHERE machine_id IS NOT NULL`); n != 2*machines {
			t.Fatalf("round %d: %d machine IP rows", round, n)
		}
		for id, ag := range agents {
			d := l.doc(ag.ID).GetMachine()
			if d.GetAllocation().GetId() == "" || len(d.GetAllocation().GetNetworks()) != 1 || len(d.GetAllocation().GetNetworks()[0].GetIps()) != 2 {
				t.Fatalf("round %d: machine %s document %v", round, id, d)
			}
		}
		if batches, calls := l.a.machines.AllocBatchStats(); batches >= calls {
			t.Fatalf("round %d: %d calls in %d batches: concurrent allocations were not combined", round, calls, batches)
		} else {
			t.Logf("round %d: %d calls in %d batches", round, calls, batches)
		}
		// Free everything and bring it back to Waiting.
		for id, ag := range agents {
			if _, err := (&machineService{API: l.a}).Delete(l.ctx, &apiv1.MachineServiceDeleteRequest{Id: id}); err != nil {
				t.Fatal(err)
			}
			if err := l.report(ag, nil, "Preparing", "Registering", "Waiting"); err != nil {
				t.Fatal(err)
			}
		}
		if n := l.count(`SELECT count(*) FROM ips`); n != 0 {
			t.Fatalf("round %d: %d IPs left after freeing", round, n)
		}
	}
}

// TestAllocateMixedGoodAndBad: concurrent calls that share batches, half
// of them naming a network that does not exist: each bad call gets its own
// NotFound, every good one a machine.
func TestAllocateMixedGoodAndBad(t *testing.T) {
	l := newLab(t, 32)
	for i := range 20 {
		l.machine(i, "")
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	got := map[string]int{}
	for i := range 40 {
		wg.Go(func() {
			net := "internet"
			if i%2 == 1 {
				net = "nope"
			}
			_, err := l.create(&apiv1.MachineServiceCreateRequest{Networks: []string{net}})
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil && net == "internet":
				got["ok"]++
			case status.Code(err) == codes.NotFound && net == "nope" && strings.Contains(err.Error(), "networks[0]"):
				got["notfound"]++
			default:
				t.Errorf("network %s: %v", net, err)
			}
		})
	}
	wg.Wait()
	if got["ok"] != 20 || got["notfound"] != 20 {
		t.Fatalf("outcomes %v, want 20 ok and 20 NotFound", got)
	}
	if n := l.count(`SELECT count(*) FROM ips`); n != 40 {
		t.Fatalf("%d IPs, want 2 for each of 20 machines", n)
	}
}

func TestAllocateHonoursReservationsAndRacks(t *testing.T) {
	l := newLab(t, 8)
	for i := range 6 {
		l.machine(i, fmt.Sprintf("rack-%d", i%3))
	}
	other := l.newProject("other")
	if _, err := (&sizeReservationService{API: l.a}).Create(l.ctx, &apiv1.SizeReservationServiceCreateRequest{SizeReservation: &apiv1.SizeReservation{
		SizeId: "s1", PartitionId: "p1", ProjectId: other, Amount: 2}}); err != nil {
		t.Fatal(err)
	}
	racks := map[string]int{}
	for i := range 4 {
		m, err := l.create(&apiv1.MachineServiceCreateRequest{})
		if err != nil {
			t.Fatalf("allocation %d: %v", i, err)
		}
		racks[m.GetRack()]++
	}
	if len(racks) != 3 {
		t.Fatalf("4 machines of one project over 3 racks: %v", racks)
	}
	for r, n := range racks {
		if n > 2 {
			t.Fatalf("rack %s got %d of the project's 4 machines: %v", r, n, racks)
		}
	}
	_, err := l.create(&apiv1.MachineServiceCreateRequest{})
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), "reservations") {
		t.Fatalf("taking a reserved machine: %v", err)
	}
	for range 2 {
		if _, err := l.create(&apiv1.MachineServiceCreateRequest{ProjectId: other}); err != nil {
			t.Fatalf("reserving project: %v", err)
		}
	}
	if _, err := l.create(&apiv1.MachineServiceCreateRequest{ProjectId: other}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("no machine left: %v", err)
	}
}

func TestAllocateByIDAndBadRequests(t *testing.T) {
	l := newLab(t, 4)
	id, ag := l.machine(1, "")
	dead, _ := l.machine(2, "")
	if _, err := l.a.store.Pool().Exec(l.ctx, `UPDATE agents SET last_contact = now() - interval '1 hour' WHERE identity = $1`, dead); err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name string
		req  *apiv1.MachineServiceCreateRequest
		code codes.Code
		text string
	}{
		{"no project", &apiv1.MachineServiceCreateRequest{ProjectId: "x"}, codes.InvalidArgument, "project_id"},
		{"bad hostname", &apiv1.MachineServiceCreateRequest{Hostname: "Not_A_Host"}, codes.InvalidArgument, "hostname"},
		{"bad ssh key", &apiv1.MachineServiceCreateRequest{SshPublicKeys: []string{"hello"}}, codes.InvalidArgument, "ssh_public_keys[0]"},
		{"unknown image", &apiv1.MachineServiceCreateRequest{ImageId: "nope"}, codes.NotFound, "image"},
		{"unknown network", &apiv1.MachineServiceCreateRequest{Networks: []string{"nope"}}, codes.NotFound, "networks[0]"},
		{"dead machine", &apiv1.MachineServiceCreateRequest{Id: dead}, codes.FailedPrecondition, "not alive"},
		{"unknown machine", &apiv1.MachineServiceCreateRequest{Id: uuid.NewString()}, codes.NotFound, "not found"},
		{"other partition", &apiv1.MachineServiceCreateRequest{Id: id, PartitionId: "p2", SizeId: "s1"}, codes.FailedPrecondition, "partition"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, err := l.create(tt.req)
			if status.Code(err) != tt.code || !strings.Contains(err.Error(), tt.text) {
				t.Fatalf("err %v, want %v mentioning %q", err, tt.code, tt.text)
			}
			if n := l.count(`SELECT count(*) FROM machines WHERE project_id IS NOT NULL`); n != 0 {
				t.Fatalf("%d machines allocated by a bad request", n)
			}
			if n := l.count(`SELECT count(*) FROM ips`); n != 0 {
				t.Fatalf("%d IPs left by a bad request", n)
			}
		})
	}
	// Locked machines are not allocated, reserved ones only by id.
	svc := &machineService{API: l.a}
	if _, err := svc.SetState(l.ctx, &apiv1.MachineServiceSetStateRequest{Id: id, State: apiv1.MachineState_MACHINE_STATE_LOCKED}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("lock without a reason: %v", err)
	}
	if _, err := svc.SetState(l.ctx, &apiv1.MachineServiceSetStateRequest{Id: id, State: apiv1.MachineState_MACHINE_STATE_RESERVED, Reason: "for a demo"}); err != nil {
		t.Fatal(err)
	}
	if _, err := l.create(&apiv1.MachineServiceCreateRequest{}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("a reserved machine was allocated by size: %v", err)
	}
	m, err := l.create(&apiv1.MachineServiceCreateRequest{Id: id, Hostname: "web-1", SshPublicKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMw test"}})
	if err != nil {
		t.Fatal(err)
	}
	if m.GetAllocation().GetHostname() != "web-1" || m.GetState() != apiv1.MachineState_MACHINE_STATE_RESERVED {
		t.Fatalf("allocated %v", m)
	}
	d := l.doc(ag.ID).GetMachine().GetAllocation()
	if d.GetHostname() != "web-1" || d.GetImage().GetUrl() != "http://images/debian.tar.zst" || len(d.GetLayout().GetFilesystems()) != 2 ||
		d.GetLayout().GetDisks()[0].GetDevice() != "/dev/vda" || d.GetDnsServers()[0] != "192.0.2.53" {
		t.Fatalf("installer allocation %v", d)
	}
	if _, err := l.create(&apiv1.MachineServiceCreateRequest{Id: id}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("allocating an allocated machine: %v", err)
	}
	if _, err := svc.SetState(l.ctx, &apiv1.MachineServiceSetStateRequest{Id: id, State: apiv1.MachineState_MACHINE_STATE_LOCKED, Reason: "legal hold"}); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Delete(l.ctx, &apiv1.MachineServiceDeleteRequest{Id: id}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("freeing a locked machine: %v", err)
	}
}

// TestInstallFreeReinstall walks one machine through install, reinstall
// and free, checking what the PXE service is told at each step.
func TestInstallFreeReinstall(t *testing.T) {
	l := newLab(t, 4)
	id, ag := l.machine(1, "")
	svc := &machineService{API: l.a}
	boot := func() *agentv1.BootResponse {
		t.Helper()
		r, err := l.dom.Boot(l.ctx, l.pixie, &agentv1.BootRequest{Mac: strings.ToUpper(mac(1, 1)), Arch: "efi"})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	if r := boot(); r.GetAction() != agentv1.BootAction_BOOT_ACTION_INSTALLER || r.GetMachineId() != id || !strings.HasPrefix(r.GetBootToken(), "mfb_") ||
		!strings.Contains(r.GetCmdline(), "metal.partition=p1") || !strings.Contains(r.GetCmdline(), "metal.central=[2001:db8::1]:8443,central:8443") ||
		!strings.Contains(r.GetCmdline(), "console=ttyS0") {
		t.Fatalf("boot of a waiting machine %v", r)
	}
	m, err := l.create(&apiv1.MachineServiceCreateRequest{Networks: []string{"internet"}})
	if err != nil {
		t.Fatal(err)
	}
	first := m.GetAllocation().GetId()
	ph := fleet.Agent{ID: ag.ID, Kind: agentv1.Kind_KIND_PHONEHOME, Identity: id, Partition: "p1"}
	if err := l.report(ag, nil, "Installing:image 50%", "Installing", "Booting New Kernel"); err != nil {
		t.Fatal(err)
	}
	if r := boot(); r.GetAction() != agentv1.BootAction_BOOT_ACTION_INSTALLER {
		t.Fatalf("boot before phoning home: %v", r.GetAction())
	}
	if err := l.report(ph, nil, "Phoned Home"); err != nil {
		t.Fatal(err)
	}
	if got := l.get(id); got.GetProvisioning() != apiv1.ProvisioningState_PROVISIONING_STATE_PHONED_HOME {
		t.Fatalf("state %v", got.GetProvisioning())
	}
	if r := boot(); r.GetAction() != agentv1.BootAction_BOOT_ACTION_DISK || r.GetBootToken() != "" {
		t.Fatalf("boot of an installed machine %v", r)
	}
	// The PXE service sees the installed machine pass by: logged, no state change.
	pxe := &agentv1.Report{Events: []*agentv1.Event{{Type: "PXE Booting", Subject: mac(1, 0)}}}
	if err := l.tx(func(tx pgx.Tx) error { return l.dom.Report(l.ctx, tx, l.pixie, pxe) }); err != nil {
		t.Fatal(err)
	}
	if got := l.get(id); got.GetProvisioning() != apiv1.ProvisioningState_PROVISIONING_STATE_PHONED_HOME || got.GetLastEvent() != "PXE Booting" {
		t.Fatalf("after passing PXE: %v %v", got.GetProvisioning(), got.GetLastEvent())
	}

	// Reinstall: new allocation id, same IPs, reboot intent, installer again.
	gen := l.doc(ag.ID).GetMachine().GetRebootGeneration()
	r, err := svc.Reinstall(l.ctx, &apiv1.MachineServiceReinstallRequest{Id: id, ImageId: "debian-13"})
	if err != nil {
		t.Fatal(err)
	}
	d := l.doc(ag.ID).GetMachine()
	if r.GetMachine().GetAllocation().GetId() == first || d.GetAllocation().GetId() != r.GetMachine().GetAllocation().GetId() ||
		!d.GetAllocation().GetReinstall() || d.GetAllocation().GetImage().GetId() != "debian-13" || d.GetRebootGeneration() != gen+1 {
		t.Fatalf("reinstall document %v", d)
	}
	if len(r.GetMachine().GetAllocation().GetIps()) != 2 || r.GetMachine().GetAllocation().GetIps()[0] != m.GetAllocation().GetIps()[0] {
		t.Fatalf("reinstall changed the IPs: %v vs %v", r.GetMachine().GetAllocation().GetIps(), m.GetAllocation().GetIps())
	}
	if b := boot(); b.GetAction() != agentv1.BootAction_BOOT_ACTION_INSTALLER {
		t.Fatalf("boot during reinstall: %v", b.GetAction())
	}
	if err := l.report(ph, nil, "Planned Reboot"); err != nil {
		t.Fatal(err)
	}
	if err := l.report(ag, nil, "Preparing", "Registering", "Waiting", "Installing", "Booting New Kernel"); err != nil {
		t.Fatal(err)
	}
	if err := l.report(ph, nil, "Phoned Home"); err != nil {
		t.Fatal(err)
	}

	// Free: IPs back, allocation gone, wipe and reboot intents, installer.
	gen = l.doc(ag.ID).GetMachine().GetRebootGeneration()
	wipe := l.doc(ag.ID).GetMachine().GetWipeGeneration()
	f, err := svc.Delete(l.ctx, &apiv1.MachineServiceDeleteRequest{Id: id})
	if err != nil {
		t.Fatal(err)
	}
	if f.GetMachine().GetAllocation() != nil || f.GetMachine().GetProvisioning() != apiv1.ProvisioningState_PROVISIONING_STATE_MACHINE_RECLAIM {
		t.Fatalf("freed machine %v", f.GetMachine())
	}
	d = l.doc(ag.ID).GetMachine()
	if d.GetAllocation() != nil || d.GetRebootGeneration() != gen+1 || d.GetWipeGeneration() != wipe+1 {
		t.Fatalf("document after free %v", d)
	}
	if n := l.count(`SELECT count(*) FROM ips`); n != 0 {
		t.Fatalf("%d IPs left after free", n)
	}
	if b := boot(); b.GetAction() != agentv1.BootAction_BOOT_ACTION_INSTALLER {
		t.Fatalf("boot after free: %v", b.GetAction())
	}
	if _, err := svc.Delete(l.ctx, &apiv1.MachineServiceDeleteRequest{Id: id}); status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("freeing twice: %v", err)
	}
	if err := l.report(ag, nil, "PXE Booting", "Preparing", "Registering", "Waiting"); err != nil {
		t.Fatal(err)
	}
	if got := l.get(id); got.GetProvisioning() != apiv1.ProvisioningState_PROVISIONING_STATE_WAITING {
		t.Fatalf("back in the pool: %v", got.GetProvisioning())
	}
}

func TestBootBadRequests(t *testing.T) {
	l := newLab(t, 4)
	l.machine(1, "")
	other := l.enroll(agentv1.Kind_KIND_PIXIE, "pixie-p2", "p2")
	tests := []struct {
		name  string
		agent fleet.Agent
		req   *agentv1.BootRequest
		code  codes.Code
	}{
		{"bad mac", l.pixie, &agentv1.BootRequest{Mac: "zz"}, codes.InvalidArgument},
		{"bad arch", l.pixie, &agentv1.BootRequest{Mac: mac(9, 0), Arch: "sparc"}, codes.InvalidArgument},
		{"other partition's machine", other, &agentv1.BootRequest{Mac: mac(1, 0)}, codes.PermissionDenied},
	}
	before := l.count(`SELECT count(*) FROM boot_tokens`)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := l.dom.Boot(l.ctx, tt.agent, tt.req); status.Code(err) != tt.code {
				t.Fatalf("err %v, want %v", err, tt.code)
			}
		})
	}
	if n := l.count(`SELECT count(*) FROM boot_tokens`); n != before {
		t.Fatalf("bad boot requests stored %d boot tokens", n-before)
	}
	// An unknown MAC boots the installer with a token of the partition.
	r, err := l.dom.Boot(l.ctx, l.pixie, &agentv1.BootRequest{Mac: mac(42, 0), Arch: "bios"})
	if err != nil || r.GetMachineId() != "" || r.GetAction() != agentv1.BootAction_BOOT_ACTION_INSTALLER {
		t.Fatalf("unknown mac: %v %v", r, err)
	}
	if n := l.count(`SELECT count(*) FROM boot_tokens WHERE partition_id = 'p1' AND used_at IS NULL`); n != before+1 {
		t.Fatalf("boot tokens %d, want %d", n, before+1)
	}
	// The PXE service's document carries the partition's boot config
	// (enrolment through the API and central's start fill it in).
	if err := l.a.RefreshPixies(l.ctx); err != nil {
		t.Fatal(err)
	}
	d := l.doc(l.pixie.ID).GetPixie()
	if d.GetPartitionId() != "p1" || d.GetCaSha256() != strings.Repeat("ab", 32) || !strings.Contains(d.GetCmdline(), "metal.ca=") {
		t.Fatalf("pixie document %v", d)
	}
}

// BenchmarkAllocateMachine: allocations per second with 64 concurrent
// clients, each taking a waiting machine of the size with an IPv4 and an
// IPv6 address of an external network (the whole MachineService.Create).
// Run it with a fixed count, e.g. -benchtime=2000x: the pool holds b.N+1
// waiting machines, built before the timer starts. After the run it checks
// that no machine and no address was handed out twice.
func BenchmarkAllocateMachine(b *testing.B) {
	for _, clients := range []int{1, 64} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) { benchmarkAllocateMachine(b, clients) })
	}
}

func benchmarkAllocateMachine(b *testing.B, clients int) {
	l := newLab(b, clients)
	var wg sync.WaitGroup
	jobs := make(chan int)
	for range 8 {
		wg.Go(func() {
			for i := range jobs {
				l.machine(i, fmt.Sprintf("r%d", i%8))
			}
		})
	}
	for i := range b.N + 1 {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	// Building the pool takes longer than the alive threshold: every
	// installer counts as just heard from when timing starts.
	if _, err := l.a.store.Pool().Exec(l.ctx, `UPDATE agents SET last_contact = now()`); err != nil {
		b.Fatal(err)
	}
	pgtest.Warm(b, l.a.store.Pool(), clients)
	runCombined(b, clients, statsFunc(l.a.machines.AllocBatchStats), func() error {
		_, err := l.create(&apiv1.MachineServiceCreateRequest{Networks: []string{"internet"}})
		return err
	})
	if n := l.count(`SELECT count(*) FROM machines WHERE project_id IS NOT NULL`); n != b.N {
		b.Logf("free waiting %d, alive %d, stale %d", l.count(`SELECT count(*) FROM machines WHERE project_id IS NULL AND provisioning = 'Waiting'`),
			l.count(`SELECT count(*) FROM machines m JOIN agents a ON a.id = m.agent_id WHERE m.project_id IS NULL AND a.last_contact > now() - interval '70 seconds'`),
			l.count(`SELECT count(*) FROM agents WHERE last_contact < now() - interval '70 seconds'`))
		b.Fatalf("%d machines allocated by %d calls", n, b.N)
	}
	if n := l.count(`SELECT count(DISTINCT machine_id) FROM ips`); n != b.N {
		b.Fatalf("IPs on %d machines, want %d", n, b.N)
	}
	if n := l.count(`SELECT count(*) FROM ips`); n != 2*b.N {
		b.Fatalf("%d IP rows, want %d", n, 2*b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "allocs/s")
}

func TestSweepBootTokens(t *testing.T) {
	l := newLab(t, 4)
	for i := range 3 {
		if _, err := l.dom.Boot(l.ctx, l.pixie, &agentv1.BootRequest{Mac: mac(7, i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.a.store.Pool().Exec(l.ctx, `UPDATE boot_tokens SET expires_at = now() - interval '2 days' WHERE id IN (SELECT id FROM boot_tokens LIMIT 2)`); err != nil {
		t.Fatal(err)
	}
	n, err := l.hub.SweepBootTokens(l.ctx, time.Now().Add(-24*time.Hour))
	if err != nil || n != 2 {
		t.Fatalf("swept %d, %v; want 2", n, err)
	}
	if left := l.count(`SELECT count(*) FROM boot_tokens`); left != 1 {
		t.Fatalf("%d boot tokens left, want the fresh one", left)
	}
}

// TestClaim: which boot token exchanges may claim which machine (the
// domain's half; the token's own MAC and machine binding is the hub's).
func TestClaim(t *testing.T) {
	l := newLab(t, 4)
	installed, ag := l.machine(1, "")
	waiting, _ := l.machine(2, "")
	if _, err := l.create(&apiv1.MachineServiceCreateRequest{Id: installed, Networks: []string{"internet"}}); err != nil {
		t.Fatal(err)
	}
	ph := fleet.Agent{ID: ag.ID, Kind: agentv1.Kind_KIND_PHONEHOME, Identity: installed, Partition: "p1"}
	if err := l.report(ag, nil, "Installing", "Booting New Kernel"); err != nil {
		t.Fatal(err)
	}
	if err := l.report(ph, nil, "Phoned Home"); err != nil {
		t.Fatal(err)
	}
	claimer := l.dom.(fleet.Claimer)
	claim := func(c fleet.Claim) error {
		c.Partition = "p1"
		return l.tx(func(tx pgx.Tx) error { return claimer.Claim(l.ctx, tx, c) })
	}
	tests := []struct {
		name  string
		claim fleet.Claim
		want  codes.Code
	}{
		{"a new machine", fleet.Claim{Identity: uuid.NewString(), MAC: mac(9, 0)}, codes.OK},
		{"a new machine, admin's token", fleet.Claim{Identity: uuid.NewString()}, codes.OK},
		{"the installed machine with its own MAC", fleet.Claim{Identity: installed, MAC: mac(1, 0), Machine: installed}, codes.PermissionDenied},
		{"the installed machine, admin's token", fleet.Claim{Identity: installed}, codes.PermissionDenied},
		{"the installed machine with a fresh MAC", fleet.Claim{Identity: installed, MAC: mac(9, 1)}, codes.PermissionDenied},
		{"a waiting machine with its own MAC", fleet.Claim{Identity: waiting, MAC: mac(2, 1), Machine: waiting}, codes.OK},
		{"a waiting machine with another machine's MAC", fleet.Claim{Identity: waiting, MAC: mac(1, 0), Machine: installed}, codes.PermissionDenied},
		{"a waiting machine with a MAC unknown when minted", fleet.Claim{Identity: waiting, MAC: mac(9, 2)}, codes.PermissionDenied},
		{"a waiting machine, admin's token", fleet.Claim{Identity: waiting}, codes.OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := claim(tt.claim); status.Code(err) != tt.want {
				t.Fatalf("claim %+v: %v, want %v", tt.claim, err, tt.want)
			}
		})
	}

	// Reinstall asks the machine to boot the installer: now it may be
	// claimed, by a token of its own MAC only.
	if _, err := (&machineService{API: l.a}).Reinstall(l.ctx, &apiv1.MachineServiceReinstallRequest{Id: installed}); err != nil {
		t.Fatal(err)
	}
	if err := claim(fleet.Claim{Identity: installed, MAC: mac(1, 1), Machine: installed}); err != nil {
		t.Fatalf("claim during reinstall: %v", err)
	}
	if err := claim(fleet.Claim{Identity: installed, MAC: mac(2, 0), Machine: waiting}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("claim during reinstall with another machine's MAC: %v", err)
	}
}

// TestDuplicateMAC: a machine reporting another machine's NIC does not
// take it over; both get an issue until an admin resolves it.
func TestDuplicateMAC(t *testing.T) {
	l := newLab(t, 4)
	victim, _ := l.machine(1, "")
	thief, ag := l.machine(2, "")
	f := facts(thief, 2, 4)
	f.Nics = append(f.Nics, &agentv1.NICFact{Name: "eth2", Mac: strings.ToUpper(mac(1, 0))})
	if err := l.report(ag, f, "Registering"); err != nil {
		t.Fatalf("registration with a foreign MAC: %v", err)
	}
	owner := func(m string) string {
		t.Helper()
		var id string
		if err := l.a.store.Pool().QueryRow(l.ctx, `SELECT machine_id FROM machine_nics WHERE mac = $1`, m).Scan(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	if got := owner(mac(1, 0)); got != victim {
		t.Fatalf("NIC %s moved to %s", mac(1, 0), got)
	}
	if b, err := l.dom.Boot(l.ctx, l.pixie, &agentv1.BootRequest{Mac: mac(1, 0)}); err != nil || b.GetMachineId() != victim {
		t.Fatalf("boot of the victim's MAC: %v, %v", b, err)
	}
	hasIssue := func(id string) bool {
		for _, is := range l.get(id).GetIssues() {
			if is.GetId() == issueDuplicateMAC && strings.Contains(is.GetDescription(), mac(1, 0)) {
				return true
			}
		}
		return false
	}
	if !hasIssue(victim) || !hasIssue(thief) {
		t.Fatalf("duplicate-mac issue: victim %v, reporter %v", l.get(victim).GetIssues(), l.get(thief).GetIssues())
	}
	// Registering again (same facts) keeps one conflict, not two.
	if err := l.report(ag, f, "Registering"); err != nil {
		t.Fatal(err)
	}
	if n := l.count(`SELECT count(*) FROM machine_mac_conflicts`); n != 1 {
		t.Fatalf("%d conflicts, want 1", n)
	}

	svc := &machineService{API: l.a}
	bad := []struct {
		name string
		req  *apiv1.MachineServiceResolveMacRequest
		want codes.Code
	}{
		{"bad mac", &apiv1.MachineServiceResolveMacRequest{Mac: "nope", OwnerId: thief}, codes.InvalidArgument},
		{"bad owner", &apiv1.MachineServiceResolveMacRequest{Mac: mac(1, 0), OwnerId: "x"}, codes.InvalidArgument},
		{"unknown mac", &apiv1.MachineServiceResolveMacRequest{Mac: mac(9, 9), OwnerId: thief}, codes.NotFound},
		{"uninvolved machine", &apiv1.MachineServiceResolveMacRequest{Mac: mac(1, 0), OwnerId: uuid.NewString()}, codes.FailedPrecondition},
	}
	for _, tt := range bad {
		if _, err := svc.ResolveMac(l.ctx, tt.req); status.Code(err) != tt.want {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
	// The admin finds the NIC really is in the reporter now.
	m, err := svc.ResolveMac(l.ctx, &apiv1.MachineServiceResolveMacRequest{Mac: mac(1, 0), OwnerId: strings.ToUpper(thief)})
	if err != nil {
		t.Fatal(err)
	}
	if got := owner(mac(1, 0)); got != thief || m.GetMachine().GetId() != thief {
		t.Fatalf("after resolving: NIC owned by %s, answer %s", got, m.GetMachine().GetId())
	}
	if hasIssue(victim) || hasIssue(thief) || l.count(`SELECT count(*) FROM machine_mac_conflicts`) != 0 {
		t.Fatal("issues left after resolving")
	}
}
