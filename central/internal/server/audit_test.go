package server_test

import (
	"strings"
	"testing"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// insertMachine stands in for provisioning (whose own tests are in
// service and lab/e2e): a machine allocated to project (or free when
// project is "").
func (e *env) insertMachine(t testing.TB, id, project string) {
	t.Helper()
	m := &apiv1.Machine{Id: id, Rack: "r1", State: apiv1.MachineState_MACHINE_STATE_AVAILABLE, Hardware: &agentv1.MachineFacts{Cores: 8}}
	var proj, alloc any
	state := "available"
	if project != "" {
		state, alloc = "reserved", "alloc-"+id
		m.State = apiv1.MachineState_MACHINE_STATE_RESERVED
		m.Allocation = &apiv1.MachineAllocation{ProjectId: project, Hostname: id}
		proj = project
	}
	spec, err := protojson.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	e.exec(t, `INSERT INTO machines (id, project_id, rack, spec, allocation_id, state) VALUES ($1, $2, 'r1', $3, $4, $5)`, id, proj, spec, alloc, state)
}

// waitingMachine stands in for an installer that registered in fra1 with
// size "fix" and is waiting, alive.
func (e *env) waitingMachine(t testing.TB) string {
	t.Helper()
	id := uuid.NewString()
	agent := uuid.NewString()
	e.exec(t, `INSERT INTO agents (id, kind, identity, partition_id, token_hash, enrolled_by, desired_revision, desired, desired_at, last_contact)
		VALUES ($1, 'installer', $2, 'fra1', $3, 'test', 1, '{"revision":"1"}', now(), now())`, agent, id, []byte(agent))
	spec, err := protojson.Marshal(&apiv1.Machine{Id: id, PartitionId: "fra1", Hardware: &agentv1.MachineFacts{Uuid: id, Cores: 8, MemoryBytes: 1 << 30,
		Disks: []*agentv1.DiskFact{{Name: "sda", SizeBytes: 1 << 35}}}})
	if err != nil {
		t.Fatal(err)
	}
	e.exec(t, `INSERT INTO machines (id, partition_id, size_id, agent_id, provisioning, last_event, last_event_at, spec)
		VALUES ($1, 'fra1', 'fix', $2, 'Waiting', 'Waiting', now(), $3)`, id, agent, spec)
	return id
}

// allocatedMachine is a waiting machine the admin allocated to project.
func (e *env) allocatedMachine(t testing.TB, project string) string {
	t.Helper()
	id := e.waitingMachine(t)
	if _, err := e.api.Machine.Create(e.as(t, e.admin), &apiv1.MachineServiceCreateRequest{ProjectId: project, Id: id, ImageId: "fix"}); err != nil {
		t.Fatal(err)
	}
	return id
}

func (e *env) insertSwitch(t testing.TB, id, partition string) {
	t.Helper()
	spec, err := protojson.Marshal(&apiv1.Switch{Id: id, PartitionId: partition, Rack: "r1", Ports: []*apiv1.SwitchPort{{Name: "swp1", Mac: "aa:bb:cc:dd:ee:01"}}})
	if err != nil {
		t.Fatal(err)
	}
	e.exec(t, `INSERT INTO switches (id, partition_id, rack, spec) VALUES ($1, $2, 'r1', $3)`, id, partition, spec)
}

func TestMachinesAndSwitches(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	admin := e.as(t, e.admin)

	// Nothing provisioned yet: empty lists, NotFound.
	if got := ok(e.api.Machine.List(admin, &apiv1.MachineServiceListRequest{}))(t).GetMachines(); len(got) != 0 {
		t.Fatalf("Machine List = %v", got)
	}
	if got := ok(e.api.Switch.List(admin, &apiv1.SwitchServiceListRequest{}))(t).GetSwitches(); len(got) != 0 {
		t.Fatalf("Switch List = %v", got)
	}
	_, err := e.api.Machine.Get(admin, &apiv1.MachineServiceGetRequest{Id: "m1"})
	wantCode(t, err, codes.NotFound)
	_, err = e.api.Switch.Get(admin, &apiv1.SwitchServiceGetRequest{Id: "leaf1"})
	wantCode(t, err, codes.NotFound)
	_, err = e.api.Machine.Get(admin, &apiv1.MachineServiceGetRequest{})
	wantField(t, err, "id")

	ok(e.api.Partition.Create(admin, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "fra1"}}))(t)
	e.insertMachine(t, "m-p1", e.p1)
	e.insertMachine(t, "m-p2", e.p2)
	e.insertMachine(t, "m-free", "")
	e.insertSwitch(t, "leaf1", "fra1")

	list := func(c *caller, req *apiv1.MachineServiceListRequest) []string {
		t.Helper()
		var out []string
		for _, m := range ok(e.api.Machine.List(e.as(t, c), req))(t).GetMachines() {
			out = append(out, m.GetId())
		}
		return out
	}
	for _, tt := range []struct {
		c    *caller
		req  *apiv1.MachineServiceListRequest
		want string
	}{
		{e.admin, &apiv1.MachineServiceListRequest{}, "m-free m-p1 m-p2"},
		{e.admin, &apiv1.MachineServiceListRequest{ProjectId: e.p2}, "m-p2"},
		{e.p1Viewer, &apiv1.MachineServiceListRequest{}, "m-p1"},
		{e.t1Viewer, &apiv1.MachineServiceListRequest{}, "m-p1"},
		{e.p2Editor, &apiv1.MachineServiceListRequest{}, "m-p2"},
		{e.p2Editor, &apiv1.MachineServiceListRequest{ProjectId: e.p1}, ""},
	} {
		if got := strings.Join(list(tt.c, tt.req), " "); got != tt.want {
			t.Errorf("Machine List(%v) as %s = %q, want %q", tt.req, tt.c.name, got, tt.want)
		}
	}
	for _, tt := range []struct {
		c    *caller
		id   string
		want codes.Code
	}{
		{e.admin, "m-free", codes.OK},
		{e.p1Viewer, "m-p1", codes.OK},
		{e.p1Viewer, "m-p2", codes.NotFound},
		{e.p1Viewer, "m-free", codes.NotFound},
		{e.p2Editor, "m-p1", codes.NotFound},
	} {
		resp, err := e.api.Machine.Get(e.as(t, tt.c), &apiv1.MachineServiceGetRequest{Id: tt.id})
		if status.Code(err) != tt.want {
			t.Errorf("Machine Get(%s) as %s = %v, want %v", tt.id, tt.c.name, err, tt.want)
		} else if err == nil && (resp.GetMachine().GetId() != tt.id || resp.GetMachine().GetMeta().GetGeneration() != 1) {
			t.Errorf("Machine Get(%s) = %v", tt.id, resp)
		}
	}
	sw := ok(e.api.Switch.Get(admin, &apiv1.SwitchServiceGetRequest{Id: "leaf1"}))(t).GetSwitch()
	if sw.GetPartitionId() != "fra1" || len(sw.GetPorts()) != 1 {
		t.Fatalf("Switch Get = %v", sw)
	}
	if got := ok(e.api.Switch.List(admin, &apiv1.SwitchServiceListRequest{PartitionId: "fra1"}))(t).GetSwitches(); len(got) != 1 {
		t.Fatalf("Switch List(fra1) = %v", got)
	}
	if got := ok(e.api.Switch.List(admin, &apiv1.SwitchServiceListRequest{PartitionId: "ams1"}))(t).GetSwitches(); len(got) != 0 {
		t.Fatalf("Switch List(ams1) = %v", got)
	}
}

// TestAudit: mutating calls are findable by the request id the client sent;
// rejected ones leave nothing. (Every call of every test is also checked
// row by row by the connection's auditInterceptor.)
func TestAudit(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	api := e.api.Audit
	admin := e.as(t, e.admin)

	rid := "req-" + uuid.NewString()
	ok(e.api.Tenant.Create(withRequestID(e.as(t, e.admin), rid), &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: "audited"}}))(t)
	entries := ok(api.List(admin, &apiv1.AuditServiceListRequest{Target: "tenant/audited"}))(t).GetEntries()
	if len(entries) != 1 {
		t.Fatalf("audit for tenant/audited = %v", entries)
	}
	got := entries[0]
	if got.GetRequestId() != rid || got.GetSubject() != e.admin.tokenID || got.GetMethod() != "/metalfleet.api.v1.TenantService/Create" ||
		got.GetProjectId() != "" || got.GetAt() == nil || got.GetId() == "" {
		t.Fatalf("audit entry = %v", got)
	}

	// Project-owned changes carry the project.
	pr := e.createProject(t, "audited", "web")
	rid2 := "req-" + uuid.NewString()
	ok(e.api.Project.Update(withRequestID(e.as(t, e.admin), rid2), &apiv1.ProjectServiceUpdateRequest{Project: &apiv1.Project{Id: pr, TenantId: "audited", Name: "www"}}))(t)
	entries = ok(api.List(admin, &apiv1.AuditServiceListRequest{Target: "project/" + pr}))(t).GetEntries()
	if len(entries) != 2 || entries[0].GetRequestId() != rid2 || entries[0].GetProjectId() != pr || entries[1].GetMethod() != "/metalfleet.api.v1.ProjectService/Create" {
		t.Fatalf("audit for project/%s (newest first) = %v", pr, entries)
	}

	// Rejected: invalid, duplicate, forbidden, unauthenticated.
	rejected := []struct {
		c    *caller
		call func(*caller, string) error
	}{
		{e.admin, func(c *caller, id string) error {
			_, err := e.api.Tenant.Create(withRequestID(e.as(t, c), id), &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: "audited"}})
			return err
		}},
		{e.admin, func(c *caller, id string) error {
			_, err := e.api.Tenant.Create(withRequestID(e.as(t, c), id), &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: "Bad"}})
			return err
		}},
		{e.p1Viewer, func(c *caller, id string) error {
			_, err := e.api.Project.Update(withRequestID(e.as(t, c), id), &apiv1.ProjectServiceUpdateRequest{Project: &apiv1.Project{Id: e.p1, TenantId: e.t1, Name: "x"}})
			return err
		}},
		{e.none, func(c *caller, id string) error {
			_, err := e.api.Tenant.Delete(withRequestID(e.as(t, c), id), &apiv1.TenantServiceDeleteRequest{Id: "audited"})
			return err
		}},
	}
	var rids []string
	for _, r := range rejected {
		id := "rejected-" + uuid.NewString()
		rids = append(rids, id)
		if err := r.call(r.c, id); err == nil {
			t.Fatalf("call as %s succeeded", r.c.name)
		}
	}
	for _, en := range ok(api.List(admin, &apiv1.AuditServiceListRequest{Limit: 1000}))(t).GetEntries() {
		for _, id := range rids {
			if en.GetRequestId() == id {
				t.Fatalf("rejected call audited: %v", en)
			}
		}
	}

	// Reads are not audited; a silly request id is replaced by a fresh one.
	long := strings.Repeat("x", 200)
	ok(e.api.Tenant.Update(unchecked(withRequestID(e.as(t, e.admin), long)), &apiv1.TenantServiceUpdateRequest{Tenant: &apiv1.Tenant{Id: "audited", Name: "A"}}))(t)
	entries = ok(api.List(admin, &apiv1.AuditServiceListRequest{Target: "tenant/audited", Limit: 1}))(t).GetEntries()
	if len(entries) != 1 || entries[0].GetMethod() != "/metalfleet.api.v1.TenantService/Update" {
		t.Fatalf("newest tenant/audited entry = %v", entries)
	}
	if _, err := uuid.Parse(entries[0].GetRequestId()); err != nil {
		t.Fatalf("over-long request id stored as %q, want a fresh UUID", entries[0].GetRequestId())
	}

	// Filters.
	mine := ok(api.List(admin, &apiv1.AuditServiceListRequest{Subject: e.admin.tokenID}))(t).GetEntries()
	all := ok(api.List(admin, &apiv1.AuditServiceListRequest{}))(t).GetEntries()
	sub := e.mint(t, "sub", e.p1Owner, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p1: viewer}})
	byOwner := ok(api.List(admin, &apiv1.AuditServiceListRequest{Subject: e.p1Owner.tokenID}))(t).GetEntries()
	if len(byOwner) != 1 || byOwner[0].GetTarget() != "token/"+sub.tokenID {
		t.Fatalf("audit by p1 owner = %v", byOwner)
	}
	if len(mine) != len(all) {
		t.Fatalf("before p1 owner acted, admin wrote all %d entries, filter found %d", len(all), len(mine))
	}
	if got := ok(api.List(admin, &apiv1.AuditServiceListRequest{Limit: 2}))(t).GetEntries(); len(got) != 2 || got[0].GetAt().AsTime().Before(got[1].GetAt().AsTime()) {
		t.Fatalf("List(limit 2) = %v", got)
	}
	_, err := api.List(admin, &apiv1.AuditServiceListRequest{Limit: 1001})
	wantField(t, err, "limit")
	// An admin viewer may read the log.
	av := e.mint(t, "admin-viewer", e.admin, &apiv1.TokenServiceCreateRequest{AdminRole: viewer})
	ok(api.List(e.as(t, av), &apiv1.AuditServiceListRequest{}))(t)
}
