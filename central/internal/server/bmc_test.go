package server_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// storedBMCDoc is the bmc document in the desired document of metal-bmc
// agent identity, as stored (with the password the API redacts).
func storedBMCDoc(t *testing.T, e *env, identity string) (*agentv1.BmcDocument, uint64) {
	t.Helper()
	var (
		raw []byte
		rev int64
	)
	if err := e.db.QueryRow(context.Background(), `SELECT desired, desired_revision FROM agents WHERE kind = 'bmc' AND identity = $1`, identity).Scan(&raw, &rev); err != nil {
		t.Fatal(err)
	}
	d := &agentv1.Desired{}
	if err := protojson.Unmarshal(raw, d); err != nil {
		t.Fatal(err)
	}
	return d.GetBmc(), uint64(rev)
}

// TestBMCSettings: a partition's BMC credentials, static BMCs and lease
// prefixes reach the documents of its metal-bmc agents — those enrolled
// before (in the transaction of the change) and after (at enrolment) —
// while no read returns the password; an empty password keeps it; an
// unchanged setting does not raise the agents' revisions; hostile input
// is refused naming the field and never echoing a credential.
func TestBMCSettings(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	admin := e.as(t, e.admin)
	for _, p := range []string{"fra1", "ams1"} {
		ok(e.api.Partition.Create(admin, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: p}}))(t)
	}
	early := ok(e.api.Agent.Enroll(admin, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc-fra1", PartitionId: "fra1"}))(t)
	ok(e.api.Agent.Enroll(admin, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc-ams1", PartitionId: "ams1"}))(t)
	if doc, _ := storedBMCDoc(t, e, "bmc-fra1"); doc.GetPartitionId() != "fra1" || doc.GetCredentials() != nil {
		t.Fatalf("document at enrolment without settings: %v", doc)
	}
	// The agent is connected while the settings change: it receives them.
	bmcAgent := openAgent(t, e, &agentv1.Hello{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc-fra1",
		Credential: &agentv1.Credential{Secret: &agentv1.Credential_Token{Token: early.GetSecret()}}})

	const password = "s3cr3t-pa55"
	set := &apiv1.PartitionBMC{PartitionId: "fra1", User: "metal", Password: password,
		StaticBmcs:          []*apiv1.PartitionBMCEndpoint{{Address: "10.1.0.5"}, {Address: "https://[2001:db8::5]:8443"}, {Address: "bmc7.example:623", Ipmi: true}},
		LeaseCidrs:          []string{"10.1.0.0/24"},
		PollIntervalSeconds: 30,
	}
	got := ok(e.api.BMC.SetSettings(admin, &apiv1.BMCServiceSetSettingsRequest{Settings: set}))(t).GetSettings()
	if got.GetPassword() != "" || !got.GetPasswordSet() || got.GetUser() != "metal" || len(got.GetStaticBmcs()) != 3 ||
		!got.GetStaticBmcs()[2].GetIpmi() || got.GetPollIntervalSeconds() != 30 || got.GetUpdatedAt() == nil {
		t.Fatalf("SetSettings answered %v", got)
	}
	read := ok(e.api.BMC.GetSettings(admin, &apiv1.BMCServiceGetSettingsRequest{PartitionId: "fra1"}))(t).GetSettings()
	if read.GetPassword() != "" || !read.GetPasswordSet() || read.GetLeaseCidrs()[0] != "10.1.0.0/24" {
		t.Fatalf("GetSettings %v", read)
	}
	if other := ok(e.api.BMC.GetSettings(admin, &apiv1.BMCServiceGetSettingsRequest{PartitionId: "ams1"}))(t).GetSettings(); other.GetPasswordSet() || other.GetUser() != "" ||
		other.GetStuckCycleDisabled() || other.GetStuckMaxCycles() != 3 {
		t.Fatalf("another partition's settings: %v", other)
	}
	// Stuck machines are cycled by default, three times.
	if read.GetStuckCycleDisabled() || read.GetStuckMaxCycles() != 3 {
		t.Fatalf("stuck policy by default: %v", read)
	}

	doc, rev := storedBMCDoc(t, e, "bmc-fra1")
	want := func(doc *agentv1.BmcDocument) {
		t.Helper()
		if doc.GetPartitionId() != "fra1" || doc.GetCredentials().GetUser() != "metal" || doc.GetCredentials().GetPassword() != password ||
			len(doc.GetStaticBmcs()) != 3 || doc.GetStaticBmcs()[2].GetProtocol() != agentv1.BmcProtocol_BMC_PROTOCOL_IPMI ||
			doc.GetStaticBmcs()[0].GetProtocol() != agentv1.BmcProtocol_BMC_PROTOCOL_REDFISH ||
			doc.GetPollInterval().AsDuration() != 30*time.Second || len(doc.GetLeaseCidrs()) != 1 {
			t.Fatalf("bmc document %v", doc)
		}
	}
	want(doc)
	if d, _ := storedBMCDoc(t, e, "bmc-ams1"); d.GetCredentials() != nil {
		t.Fatalf("the other partition's agent got %v", d)
	}
	// The connected agent receives the document with the password.
	deadline := time.After(10 * time.Second)
	for received := false; !received; {
		select {
		case d := <-bmcAgent.docs:
			received = d.GetBmc().GetCredentials().GetPassword() == password
		case <-deadline:
			t.Fatal("the connected metal-bmc did not receive its document")
		}
	}
	// A person reading the agent sees no password.
	ag := ok(e.api.Agent.Get(admin, &apiv1.AgentServiceGetRequest{Id: "bmc/bmc-fra1"}))(t).GetAgent()
	if p := ag.GetDesired().GetBmc().GetCredentials().GetPassword(); p != "<redacted>" || strings.Contains(protojson.Format(ag), password) {
		t.Fatalf("agent read shows the password: %q", p)
	}
	list := ok(e.api.Agent.List(admin, &apiv1.AgentServiceListRequest{Kind: agentv1.Kind_KIND_BMC}))(t)
	if strings.Contains(protojson.Format(list), password) {
		t.Fatal("agent list shows the password")
	}

	// The same settings again, with an empty password: it is kept and no
	// document changes.
	again := &apiv1.PartitionBMC{PartitionId: "fra1", User: "metal", StaticBmcs: set.GetStaticBmcs(), LeaseCidrs: set.GetLeaseCidrs(), PollIntervalSeconds: 30}
	ok(e.api.BMC.SetSettings(admin, &apiv1.BMCServiceSetSettingsRequest{Settings: again}))(t)
	doc2, rev2 := storedBMCDoc(t, e, "bmc-fra1")
	want(doc2)
	if rev2 != rev {
		t.Errorf("unchanged settings raised the revision %d → %d", rev, rev2)
	}

	// A metal-bmc enrolled later gets the settings at once.
	ok(e.api.Agent.Enroll(admin, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc-fra1-b", PartitionId: "fra1"}))(t)
	late, _ := storedBMCDoc(t, e, "bmc-fra1-b")
	want(late)

	// Each write is audited, without the request.
	if n := e.count(t, `SELECT count(*) FROM audit WHERE target = 'partition-bmc/fra1' AND method = '/metalfleet.api.v1.BMCService/SetSettings'`); n != 2 {
		t.Errorf("%d audit rows, want 2", n)
	}

	// The stuck policy is kept as set and shown as in effect.
	stuck := proto.Clone(again).(*apiv1.PartitionBMC)
	stuck.StuckCycleDisabled, stuck.StuckMaxCycles = true, 5
	if got := ok(e.api.BMC.SetSettings(admin, &apiv1.BMCServiceSetSettingsRequest{Settings: stuck}))(t).GetSettings(); !got.GetStuckCycleDisabled() || got.GetStuckMaxCycles() != 5 {
		t.Fatalf("stuck policy set: %v", got)
	}
	ok(e.api.BMC.SetSettings(admin, &apiv1.BMCServiceSetSettingsRequest{Settings: again}))(t)
	if got := ok(e.api.BMC.GetSettings(admin, &apiv1.BMCServiceGetSettingsRequest{PartitionId: "fra1"}))(t).GetSettings(); got.GetStuckCycleDisabled() || got.GetStuckMaxCycles() != 3 {
		t.Fatalf("stuck policy back to the defaults: %v", got)
	}

	// Hostile input: the field is named, a credential never echoed.
	long := strings.Repeat("x", 300)
	for _, tc := range []struct {
		name  string
		in    *apiv1.PartitionBMC
		field string
		code  codes.Code
	}{
		{"no settings", nil, "settings", codes.InvalidArgument},
		{"no partition", &apiv1.PartitionBMC{}, "settings.partition_id", codes.InvalidArgument},
		{"unknown partition", &apiv1.PartitionBMC{PartitionId: "nope"}, "settings.partition_id", codes.NotFound},
		{"password with newline", &apiv1.PartitionBMC{PartitionId: "fra1", Password: "a\nsecretvalue"}, "settings.password", codes.InvalidArgument},
		{"long user", &apiv1.PartitionBMC{PartitionId: "fra1", User: long}, "settings.user", codes.InvalidArgument},
		{"password_set given", &apiv1.PartitionBMC{PartitionId: "fra1", PasswordSet: true}, "settings.password_set", codes.InvalidArgument},
		{"empty address", &apiv1.PartitionBMC{PartitionId: "fra1", StaticBmcs: []*apiv1.PartitionBMCEndpoint{{}}}, "settings.static_bmcs[0].address", codes.InvalidArgument},
		{"address with space", &apiv1.PartitionBMC{PartitionId: "fra1", StaticBmcs: []*apiv1.PartitionBMCEndpoint{{Address: "10.0.0.1 "}}}, "settings.static_bmcs[0].address", codes.InvalidArgument},
		{"bad port", &apiv1.PartitionBMC{PartitionId: "fra1", StaticBmcs: []*apiv1.PartitionBMCEndpoint{{Address: "h"}, {Address: "h:99999"}}}, "settings.static_bmcs[1].address", codes.InvalidArgument},
		{"url with user", &apiv1.PartitionBMC{PartitionId: "fra1", StaticBmcs: []*apiv1.PartitionBMCEndpoint{{Address: "https://u:p@h"}}}, "settings.static_bmcs[0].address", codes.InvalidArgument},
		{"ipmi url", &apiv1.PartitionBMC{PartitionId: "fra1", StaticBmcs: []*apiv1.PartitionBMCEndpoint{{Address: "https://h", Ipmi: true}}}, "settings.static_bmcs[0].address", codes.InvalidArgument},
		{"twice", &apiv1.PartitionBMC{PartitionId: "fra1", StaticBmcs: []*apiv1.PartitionBMCEndpoint{{Address: "h"}, {Address: "h"}}}, "settings.static_bmcs[1].address", codes.InvalidArgument},
		{"bad cidr", &apiv1.PartitionBMC{PartitionId: "fra1", LeaseCidrs: []string{"10.0.0.1/24"}}, "settings.lease_cidrs[0]", codes.InvalidArgument},
		{"poll too long", &apiv1.PartitionBMC{PartitionId: "fra1", PollIntervalSeconds: 3601}, "settings.poll_interval_seconds", codes.InvalidArgument},
		{"too many stuck cycles", &apiv1.PartitionBMC{PartitionId: "fra1", StuckMaxCycles: 101}, "settings.stuck_max_cycles", codes.InvalidArgument},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := e.api.BMC.SetSettings(admin, &apiv1.BMCServiceSetSettingsRequest{Settings: tc.in})
			wantCode(t, err, tc.code)
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %v does not name %s", err, tc.field)
			}
			if strings.Contains(err.Error(), "secretvalue") {
				t.Errorf("error %v echoes the password", err)
			}
		})
	}
	if d, _ := storedBMCDoc(t, e, "bmc-fra1"); d.GetCredentials().GetPassword() != password {
		t.Error("a refused request changed the document")
	}
}

// waitMachines lists machines as ctx's caller until cond holds.
func waitMachines(t *testing.T, e *env, ctx context.Context, cond func([]*apiv1.Machine) bool) []*apiv1.Machine {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := e.api.Machine.List(ctx, &apiv1.MachineServiceListRequest{})
		if err == nil && cond(resp.GetMachines()) {
			return resp.GetMachines()
		}
		if time.Now().After(deadline) {
			t.Fatalf("machines not as wanted within 10 s: %v %v", resp.GetMachines(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestBMCFacts: metal-bmc's facts are stored per BMC by the machine UUID
// the BMC returns: a machine known only from its BMC is listed (to admins)
// in state "known from BMC" before its first PXE boot, with its power
// state and the rest in describe; a registered machine shows its BMC's
// facts; an unreachable BMC is an issue on its machine; a finished intent
// is a machine event once, also when the report comes again; a BMC no
// longer reported is forgotten; hostile facts end the stream naming the
// field.
func TestBMCFacts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	admin := e.as(t, e.admin)
	ok(e.api.Partition.Create(admin, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "fra1"}}))(t)
	enrolled := ok(e.api.Agent.Enroll(admin, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc-fra1", PartitionId: "fra1"}))(t)
	const (
		fresh      = "0b5a1c7e-0000-4000-8000-000000000001" // known only from its BMC
		down       = "0b5a1c7e-0000-4000-8000-000000000002" // its BMC does not answer
		registered = "0b5a1c7e-0000-4000-8000-000000000003"
	)
	e.exec(t, `INSERT INTO machines (id, partition_id, spec) VALUES ($1, 'fra1', $2)`, registered, `{"id":"`+registered+`","partitionId":"fra1"}`)
	// Results count for intents central raised: power generation 1.
	if g := ok(e.api.Machine.Power(admin, &apiv1.MachineServicePowerRequest{Id: registered, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE}))(t).GetGeneration(); g != 1 {
		t.Fatalf("generation %d", g)
	}
	a := openAgent(t, e, &agentv1.Hello{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc-fra1",
		Credential: &agentv1.Credential{Secret: &agentv1.Credential_Token{Token: enrolled.GetSecret()}}})
	send := func(f *agentv1.BmcFacts) {
		t.Helper()
		a.send(&agentv1.Report{AppliedRevision: 1, Health: agentv1.Health_HEALTH_OK, Facts: &agentv1.Facts{Bmc: f}})
	}
	done := &agentv1.BmcIntentResult{Kind: agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, Generation: 1,
		Outcome: agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED, Message: "power cycle"}
	facts := &agentv1.BmcFacts{
		Bmcs: []*agentv1.BmcFact{
			{MachineUuid: fresh, Address: "10.1.0.11:443", Source: "lease", Vendor: "Supermicro", Model: "X11", Serial: "S1",
				BmcVersion: "1.2", BiosVersion: "3.4", PowerState: agentv1.BmcPowerState_BMC_POWER_STATE_OFF, PowerWatts: 12, Reachable: true,
				PowerSupplies: []*agentv1.BmcPowerSupply{{Id: "PSU1", Health: "OK", CapacityWatts: 800}}},
			{MachineUuid: down, Address: "10.1.0.12:443", Reachable: false, LastError: "dial tcp: i/o timeout", Failures: 3},
			{MachineUuid: strings.ToUpper(registered), Address: "10.1.0.13:443", PowerState: agentv1.BmcPowerState_BMC_POWER_STATE_ON, Reachable: true},
			{Address: "10.1.0.14:443", LastError: "never answered"}, // never read: no UUID, no row
		},
		Machines: []*agentv1.BmcMachineResults{{MachineId: registered, Results: []*agentv1.BmcIntentResult{done,
			{Kind: agentv1.BmcIntentKind_BMC_INTENT_KIND_BOOT, Generation: 1, Outcome: agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_PENDING}}}},
	}
	send(facts)
	// Registered and BMC-only machines are two reads: wait for both.
	list := waitMachines(t, e, admin, func(ms []*apiv1.Machine) bool {
		return len(ms) == 3 && slices.ContainsFunc(ms, func(m *apiv1.Machine) bool { return m.GetBmc() != nil && m.GetId() == registered })
	})
	byID := map[string]*apiv1.Machine{}
	for _, m := range list {
		byID[m.GetId()] = m
	}
	if m := byID[fresh]; m.GetProvisioning() != apiv1.ProvisioningState_PROVISIONING_STATE_KNOWN_FROM_BMC || m.GetPartitionId() != "fra1" ||
		m.GetBmc().GetVendor() != "Supermicro" || m.GetBmc().GetPowerState() != agentv1.BmcPowerState_BMC_POWER_STATE_OFF || len(m.GetIssues()) != 0 {
		t.Errorf("machine known from its BMC: %v", m)
	}
	if m := byID[down]; m.GetProvisioning() != apiv1.ProvisioningState_PROVISIONING_STATE_KNOWN_FROM_BMC ||
		len(m.GetIssues()) != 1 || m.GetIssues()[0].GetId() != "bmc-unreachable" || !strings.Contains(m.GetIssues()[0].GetDescription(), "i/o timeout") {
		t.Errorf("machine with an unreachable BMC: %v", m)
	}
	if m := byID[registered]; m.GetProvisioning() == apiv1.ProvisioningState_PROVISIONING_STATE_KNOWN_FROM_BMC ||
		m.GetBmc().GetPowerState() != agentv1.BmcPowerState_BMC_POWER_STATE_ON || len(m.GetBmcResults()) != 2 {
		t.Errorf("registered machine: %v; rows %d", m, e.count(t, `SELECT count(*) FROM machine_bmcs WHERE machine_uuid = $1`, registered))
	}
	got := ok(e.api.Machine.Get(admin, &apiv1.MachineServiceGetRequest{Id: fresh}))(t).GetMachine()
	if got.GetBmc().GetBiosVersion() != "3.4" || len(got.GetBmc().GetPowerSupplies()) != 1 {
		t.Errorf("describe of a machine known from its BMC: %v", got)
	}
	// Only admins see machines nobody owns.
	if ms := ok(e.api.Machine.List(e.as(t, e.p1Owner), &apiv1.MachineServiceListRequest{}))(t).GetMachines(); len(ms) != 0 {
		t.Errorf("a project owner sees %v", ms)
	}
	// The finished power intent is an event once; the pending boot none.
	events := func() int {
		return e.count(t, `SELECT count(*) FROM machine_events WHERE machine_id = $1 AND event LIKE 'BMC %'`, registered)
	}
	if n := events(); n != 1 {
		t.Fatalf("%d BMC events, want 1", n)
	}
	facts.Bmcs = facts.Bmcs[:3] // the same again, minus the BMC never read
	send(facts)
	facts.Bmcs = []*agentv1.BmcFact{facts.Bmcs[0], facts.Bmcs[2]} // the unreachable one is gone
	send(facts)
	waitMachines(t, e, admin, func(ms []*apiv1.Machine) bool { return len(ms) == 2 })
	// The registered machine's BMC gone from the facts, its results still
	// reported: still one event.
	facts.Bmcs = facts.Bmcs[:1]
	send(facts)
	waitMachines(t, e, admin, func(ms []*apiv1.Machine) bool {
		return len(ms) == 2 && slices.ContainsFunc(ms, func(m *apiv1.Machine) bool { return m.GetId() == registered && m.GetBmc() == nil })
	})
	if n := events(); n != 1 {
		t.Errorf("%d BMC events after the report came again, want 1", n)
	}
	if m := ok(e.api.Machine.Get(admin, &apiv1.MachineServiceGetRequest{Id: registered}))(t).GetMachine(); len(m.GetBmcResults()) != 2 {
		t.Errorf("results of a machine whose BMC is gone: %v", m.GetBmcResults())
	}
	var ev, msg string
	if err := e.db.QueryRow(context.Background(), `SELECT event, message FROM machine_events WHERE machine_id = $1 AND event LIKE 'BMC %'`, registered).Scan(&ev, &msg); err != nil {
		t.Fatal(err)
	}
	if ev != "BMC power" || !strings.Contains(msg, "generation 1: succeeded") {
		t.Errorf("event %q %q", ev, msg)
	}

	// Hostile facts end the stream naming the field; nothing changes.
	send(&agentv1.BmcFacts{Bmcs: []*agentv1.BmcFact{{MachineUuid: "../../etc", Reachable: true}}})
	a.refused("report.facts.bmc.bmcs[0].machine_uuid")
	if ms := ok(e.api.Machine.List(admin, &apiv1.MachineServiceListRequest{}))(t).GetMachines(); len(ms) != 2 {
		t.Errorf("after hostile facts: %v", ms)
	}
}

// TestBMCIntents: power, boot, identify and firmware calls raise the
// machine's intents, each to its next generation, in the partition's
// metal-bmc document (with the credentials); free raises PXE + reset and
// reinstall PXE + cycle; a machine known only from its BMC takes intents
// too (admins); hostile input names the field.
func TestBMCIntents(t *testing.T) {
	t.Parallel()
	e := newMatrixEnv(t)
	admin := e.as(t, e.admin)
	enrolled := ok(e.api.Agent.Enroll(admin, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc-intents", PartitionId: "fra1"}))(t)
	ok(e.api.BMC.SetSettings(admin, &apiv1.BMCServiceSetSettingsRequest{Settings: &apiv1.PartitionBMC{PartitionId: "fra1", User: "u", Password: "p"}}))(t)
	discard := func(_ any, err error) error { return err }
	id := e.allocatedMachine(t, e.p1)
	owner := e.as(t, e.p1Owner)
	intent := func() *agentv1.BmcMachine {
		t.Helper()
		doc, _ := storedBMCDoc(t, e.env, "bmc-intents")
		if doc.GetCredentials().GetPassword() != "p" {
			t.Fatalf("document lost its credentials: %v", doc)
		}
		for _, m := range doc.GetMachines() {
			if m.GetMachineId() == id {
				return m
			}
		}
		return nil
	}
	p := ok(e.api.Machine.Power(owner, &apiv1.MachineServicePowerRequest{Id: id, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_OFF}))(t)
	if p.GetGeneration() != 1 || p.GetMachine().GetId() != id {
		t.Fatalf("Power answered %v", p)
	}
	p = ok(e.api.Machine.Power(owner, &apiv1.MachineServicePowerRequest{Id: id, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_ON}))(t)
	ok(e.api.Machine.Boot(owner, &apiv1.MachineServiceBootRequest{Id: id, Device: agentv1.BmcBootDevice_BMC_BOOT_DEVICE_DISK}))(t)
	ok(e.api.Machine.Identify(owner, &apiv1.MachineServiceIdentifyRequest{Id: id, On: true}))(t)
	ok(e.api.Machine.UpdateFirmware(owner, &apiv1.MachineServiceUpdateFirmwareRequest{Id: id, Component: agentv1.BmcFirmwareComponent_BMC_FIRMWARE_COMPONENT_BMC,
		Url: "https://fw.example/bmc.bin", Sha256: strings.Repeat("ab", 32)}))(t)
	m := intent()
	if p.GetGeneration() != 2 || m.GetPower().GetGeneration() != 2 || m.GetPower().GetAction() != agentv1.BmcPowerAction_BMC_POWER_ACTION_ON ||
		m.GetBoot().GetGeneration() != 1 || m.GetBoot().GetDevice() != agentv1.BmcBootDevice_BMC_BOOT_DEVICE_DISK || m.GetBoot().GetPersistent() ||
		m.GetIdentify().GetGeneration() != 1 || !m.GetIdentify().GetOn() ||
		m.GetFirmware().GetGeneration() != 1 || m.GetFirmware().GetUrl() != "https://fw.example/bmc.bin" {
		t.Fatalf("intents %v", m)
	}

	// Reinstall: PXE (for good: it undoes the disk set at the last install)
	// and a power cycle, in the reinstall's transaction.
	ok(e.api.Machine.Reinstall(owner, &apiv1.MachineServiceReinstallRequest{Id: id}))(t)
	m = intent()
	if m.GetPower().GetGeneration() != 3 || m.GetPower().GetAction() != agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE ||
		m.GetBoot().GetGeneration() != 2 || m.GetBoot().GetDevice() != agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE || !m.GetBoot().GetPersistent() {
		t.Fatalf("after reinstall: %v", m)
	}
	// Free: PXE and a reset.
	ok(e.api.Machine.Delete(owner, &apiv1.MachineServiceDeleteRequest{Id: id}))(t)
	m = intent()
	if m.GetPower().GetGeneration() != 4 || m.GetPower().GetAction() != agentv1.BmcPowerAction_BMC_POWER_ACTION_RESET ||
		m.GetBoot().GetGeneration() != 3 || m.GetBoot().GetDevice() != agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE || !m.GetBoot().GetPersistent() || m.GetIdentify().GetGeneration() != 1 {
		t.Fatalf("after free: %v", m)
	}

	// Finished intents leave the document (a metal-bmc that lost its
	// journal must not run them again); a new generation comes back.
	a := openAgent(t, e.env, &agentv1.Hello{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc-intents",
		Credential: &agentv1.Credential{Secret: &agentv1.Credential_Token{Token: enrolled.GetSecret()}}})
	report := func(rs ...*agentv1.BmcIntentResult) {
		t.Helper()
		if err := a.stream.Send(&agentv1.SyncRequest{Msg: &agentv1.SyncRequest_Report{Report: &agentv1.Report{AppliedRevision: 1, Facts: &agentv1.Facts{Bmc: &agentv1.BmcFacts{
			Bmcs:     []*agentv1.BmcFact{{MachineUuid: id, Address: "10.1.0.9", Reachable: true}},
			Machines: []*agentv1.BmcMachineResults{{MachineId: id, Results: rs}}}}}}}); err != nil {
			t.Fatal(err)
		}
	}
	waitIntent := func(cond func(*agentv1.BmcMachine) bool) *agentv1.BmcMachine {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			m := intent()
			if cond(m) {
				return m
			}
			if time.Now().After(deadline) {
				t.Fatalf("intents not as wanted within 10 s: %v", m)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	result := func(kind agentv1.BmcIntentKind, gen uint64, o agentv1.BmcIntentOutcome) *agentv1.BmcIntentResult {
		return &agentv1.BmcIntentResult{Kind: kind, Generation: gen, Outcome: o}
	}
	report(result(agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, 4, agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED),
		result(agentv1.BmcIntentKind_BMC_INTENT_KIND_BOOT, 3, agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED),
		result(agentv1.BmcIntentKind_BMC_INTENT_KIND_IDENTIFY, 1, agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_PENDING))
	m = waitIntent(func(m *agentv1.BmcMachine) bool { return m.GetPower() == nil })
	if m.GetBoot() != nil || m.GetIdentify().GetGeneration() != 1 || m.GetFirmware().GetGeneration() != 1 {
		t.Fatalf("after power and boot finished: %v", m)
	}
	report(result(agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, 4, agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED),
		result(agentv1.BmcIntentKind_BMC_INTENT_KIND_BOOT, 3, agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED),
		result(agentv1.BmcIntentKind_BMC_INTENT_KIND_IDENTIFY, 1, agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED),
		result(agentv1.BmcIntentKind_BMC_INTENT_KIND_FIRMWARE, 1, agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_FAILED))
	waitIntent(func(m *agentv1.BmcMachine) bool { return m == nil })
	p = ok(e.api.Machine.Power(admin, &apiv1.MachineServicePowerRequest{Id: id, Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_ON}))(t)
	if m := intent(); p.GetGeneration() != 5 || m.GetPower().GetGeneration() != 5 || m.GetBoot() != nil || m.GetIdentify() != nil {
		t.Fatalf("a new generation after all finished: %v (answer %d)", m, p.GetGeneration())
	}
	if n := e.count(t, `SELECT count(*) FROM machine_events WHERE machine_id = $1 AND event LIKE 'BMC %'`, id); n != 4 {
		t.Errorf("%d BMC events, want 4 (power, boot, identify, firmware)", n)
	}

	// Refused: hostile input names the field; an unknown machine is
	// NotFound; a machine whose id is no UUID has no BMC.
	for _, tc := range []struct {
		name  string
		call  func() error
		code  codes.Code
		field string
	}{
		{"bad action", func() error {
			return discard(e.api.Machine.Power(admin, &apiv1.MachineServicePowerRequest{Id: id, Action: 9}))
		}, codes.InvalidArgument, "action"},
		{"no device", func() error {
			return discard(e.api.Machine.Boot(admin, &apiv1.MachineServiceBootRequest{Id: id}))
		}, codes.InvalidArgument, "device"},
		{"ftp url", func() error {
			return discard(e.api.Machine.UpdateFirmware(admin, &apiv1.MachineServiceUpdateFirmwareRequest{Id: id, Component: 1, Url: "ftp://x/y"}))
		}, codes.InvalidArgument, "url"},
		{"url with credentials", func() error {
			return discard(e.api.Machine.UpdateFirmware(admin, &apiv1.MachineServiceUpdateFirmwareRequest{Id: id, Component: 1, Url: "https://u:p@x/y"}))
		}, codes.InvalidArgument, "url"},
		{"bad sha256", func() error {
			return discard(e.api.Machine.UpdateFirmware(admin, &apiv1.MachineServiceUpdateFirmwareRequest{Id: id, Component: 2, Url: "https://x/y", Sha256: "AB"}))
		}, codes.InvalidArgument, "sha256"},
		{"unknown machine", func() error {
			return discard(e.api.Machine.Identify(admin, &apiv1.MachineServiceIdentifyRequest{Id: "0b5a1c7e-0000-4000-8000-00000000ffff"}))
		}, codes.NotFound, "not found"},
		{"id no uuid", func() error {
			return discard(e.api.Machine.Identify(admin, &apiv1.MachineServiceIdentifyRequest{Id: "m-p1"}))
		}, codes.FailedPrecondition, "UUID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			wantCode(t, err, tc.code)
			if !strings.Contains(err.Error(), tc.field) {
				t.Errorf("error %v does not name %s", err, tc.field)
			}
		})
	}
}

// TestBMCGUIDByteOrder: an IPMI BMC whose GUID metal-bmc decoded in
// another byte order than the machine's SMBIOS UUID is still the
// machine's. A registered machine's BMC is stored under the alias that
// names it; a machine known only from its BMC goes by the reported UUID
// until its installer registers, when the registration adopts the row;
// later reports keep it there. Bad aliases are refused naming the field.
func TestBMCGUIDByteOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	admin := e.as(t, e.admin)
	ok(e.api.Partition.Create(admin, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "fra1", AllowSingleAttach: true}}))(t)
	ok(e.api.Size.Create(admin, &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: "s1", Constraints: []*apiv1.SizeConstraint{cores(1, 8)}}}))(t)
	enrolled := ok(e.api.Agent.Enroll(admin, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc-fra1", PartitionId: "fra1"}))(t)
	const (
		registered = "0b5a1c7e-0000-4000-8000-000000000003"
		// What the registered machine's BMC reports: its GUID decoded in
		// the wrong byte order.
		registeredAsBMC = "03000000-0000-0080-0040-00007e1c5a0b"
	)
	installer := uuid.NewString()
	installerAsBMC := uuid.NewString()
	e.exec(t, `INSERT INTO machines (id, partition_id, spec) VALUES ($1, 'fra1', $2)`, registered, `{"id":"`+registered+`","partitionId":"fra1"}`)
	a := openAgent(t, e, &agentv1.Hello{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc-fra1",
		Credential: &agentv1.Credential{Secret: &agentv1.Credential_Token{Token: enrolled.GetSecret()}}})
	send := func(f *agentv1.BmcFacts) {
		t.Helper()
		a.send(&agentv1.Report{AppliedRevision: 1, Health: agentv1.Health_HEALTH_OK, Facts: &agentv1.Facts{Bmc: f}})
	}
	facts := &agentv1.BmcFacts{Bmcs: []*agentv1.BmcFact{
		{MachineUuid: registeredAsBMC, MachineUuidAliases: []string{strings.ToUpper(registered)}, Address: "10.1.0.11:623",
			Protocol: agentv1.BmcProtocol_BMC_PROTOCOL_IPMI, PowerState: agentv1.BmcPowerState_BMC_POWER_STATE_ON, Reachable: true},
		{MachineUuid: installerAsBMC, MachineUuidAliases: []string{installer}, Address: "10.1.0.12:623",
			Protocol: agentv1.BmcProtocol_BMC_PROTOCOL_IPMI, PowerState: agentv1.BmcPowerState_BMC_POWER_STATE_OFF, Reachable: true},
	}}
	send(facts)
	waitMachines(t, e, admin, func(ms []*apiv1.Machine) bool {
		return len(ms) == 2 && slices.ContainsFunc(ms, func(m *apiv1.Machine) bool { return m.GetId() == registered && m.GetBmc() != nil }) &&
			slices.ContainsFunc(ms, func(m *apiv1.Machine) bool {
				return m.GetId() == installerAsBMC && m.GetProvisioning() == apiv1.ProvisioningState_PROVISIONING_STATE_KNOWN_FROM_BMC
			})
	})
	if n := e.count(t, `SELECT count(*) FROM machine_bmcs WHERE machine_uuid = $1`, registeredAsBMC); n != 0 {
		t.Errorf("the registered machine's BMC is also stored under the UUID it reported (%d rows)", n)
	}

	// The machine known from its BMC boots the installer and registers
	// under its SMBIOS UUID: the BMC's row is its from then on.
	pix := ok(e.api.Agent.Enroll(admin, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_PIXIE, Identity: "pixie-fra1", PartitionId: "fra1"}))(t)
	const mac = "52:54:00:aa:00:02"
	boot := ok(agentv1.NewAgentServiceClient(e.conn).Boot(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+pix.GetSecret()),
		&agentv1.BootRequest{Mac: mac, Arch: "efi"}))(t)
	inst := openAgent(t, e, &agentv1.Hello{Kind: agentv1.Kind_KIND_INSTALLER, Identity: installer,
		Credential: &agentv1.Credential{Secret: &agentv1.Credential_BootToken{BootToken: boot.GetBootToken()}},
		Facts:      &agentv1.Facts{Machine: &agentv1.MachineFacts{Uuid: installer, Nics: []*agentv1.NICFact{{Name: "eth0", Mac: mac}}}}})
	inst.report(nil, "Preparing")
	inst.report(&agentv1.MachineFacts{Uuid: installer, Cores: 2, MemoryBytes: 2 << 30, Nics: []*agentv1.NICFact{{Name: "eth0", Mac: mac}}}, "Registering")
	inst.await("machine id", func(d *agentv1.Desired) bool { return d.GetMachine().GetMachineId() == installer })
	one := func(ms []*apiv1.Machine) bool {
		return len(ms) == 2 && slices.ContainsFunc(ms, func(m *apiv1.Machine) bool {
			return m.GetId() == installer && m.GetBmc().GetPowerState() == agentv1.BmcPowerState_BMC_POWER_STATE_OFF &&
				m.GetProvisioning() != apiv1.ProvisioningState_PROVISIONING_STATE_KNOWN_FROM_BMC
		})
	}
	waitMachines(t, e, admin, one)
	facts.Bmcs[1].PowerState = agentv1.BmcPowerState_BMC_POWER_STATE_ON
	send(facts)
	waitMachines(t, e, admin, func(ms []*apiv1.Machine) bool {
		return len(ms) == 2 && slices.ContainsFunc(ms, func(m *apiv1.Machine) bool {
			return m.GetId() == installer && m.GetBmc().GetPowerState() == agentv1.BmcPowerState_BMC_POWER_STATE_ON
		})
	})
	if n := e.count(t, `SELECT count(*) FROM machine_bmcs WHERE machine_uuid = $1`, installerAsBMC); n != 0 {
		t.Errorf("the adopted BMC is stored again under the UUID it reported (%d rows)", n)
	}

	// An alias that is no UUID ends the stream naming the field.
	send(&agentv1.BmcFacts{Bmcs: []*agentv1.BmcFact{{MachineUuid: installerAsBMC, MachineUuidAliases: []string{"'; DROP TABLE machines"}, Reachable: true}}})
	a.refused("report.facts.bmc.bmcs[0].machine_uuid_aliases[0]")
	if n := e.count(t, `SELECT count(*) FROM machine_bmcs`); n != 2 {
		t.Errorf("%d BMC rows after refused facts, want 2", n)
	}
}
