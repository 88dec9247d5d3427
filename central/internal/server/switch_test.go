package server_test

import (
	"strings"
	"testing"
	"time"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// TestSwitchReports: an enrolled switch agent's reports make the switch:
// its ports with their state and LLDP neighbours, the machine on each
// port (by the NIC's MAC), BGP sessions, rack and sync status; malformed
// facts end the stream with InvalidArgument naming the field and change
// nothing.
func TestSwitchReports(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	admin := e.as(t, e.admin)
	ok(e.api.Partition.Create(admin, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "fra1"}}))(t)
	enrolled := ok(e.api.Agent.Enroll(admin, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf01", PartitionId: "fra1"}))(t)
	const mac = "52:54:00:aa:00:07"
	e.exec(t, `INSERT INTO machines (id, partition_id, spec) VALUES ('m7', 'fra1', '{}')`)
	e.exec(t, `INSERT INTO machine_nics (mac, machine_id, name) VALUES ($1, 'm7', 'eth1')`, mac)

	hello := &agentv1.Hello{Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf01",
		Credential: &agentv1.Credential{Secret: &agentv1.Credential_Token{Token: enrolled.GetSecret()}}}
	sw := openAgent(t, e, hello)
	facts := &agentv1.SwitchFacts{Name: "leaf01", SonicVersion: "SONiC.202311", Rack: "r01", ManagementAddress: "10.0.0.11",
		Ports: []*agentv1.SwitchPortFact{
			{Name: "Ethernet0", Identifier: "Eth1/1", SpeedMbps: 25000, Mtu: 9000,
				AdminState: agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_UP, OperState: agentv1.SwitchOperState_SWITCH_OPER_STATE_UP,
				Neighbours: []*agentv1.LLDPNeighbour{{ChassisId: mac, PortId: mac, SystemName: "m7"}}},
			{Name: "Ethernet120", Identifier: "Eth31/1", OperState: agentv1.SwitchOperState_SWITCH_OPER_STATE_DOWN},
		},
		BgpSessions: []*agentv1.BgpSessionFact{{Port: "Ethernet120", Vrf: "default", PeerGroup: "FABRIC", State: agentv1.BgpState_BGP_STATE_ACTIVE}},
	}
	sw.send(&agentv1.Report{AppliedRevision: 1, Health: agentv1.Health_HEALTH_OK, Facts: &agentv1.Facts{Switch: facts}})
	got := waitSwitch(t, e, "leaf01", func(s *apiv1.Switch) bool { return len(s.GetPorts()) == 2 })
	p := got.GetPorts()[0]
	if got.GetPartitionId() != "fra1" || got.GetRack() != "r01" || got.GetSonicVersion() != "SONiC.202311" || got.GetSync().GetAppliedRevision() != 1 || got.GetSync().GetError() != "" {
		t.Errorf("switch %v", got)
	}
	if p.GetMachineId() != "m7" || p.GetMachineNic() != "eth1" || p.GetOperState() != "up" || p.GetAdminState() != "up" || p.GetIdentifier() != "Eth1/1" || p.GetMac() != mac {
		t.Errorf("port with the machine: %v", p)
	}
	if b := got.GetBgpSessions(); len(b) != 1 || b[0].GetState() != "active" || b[0].GetPeerGroup() != "FABRIC" {
		t.Errorf("bgp sessions %v", b)
	}

	// An apply that failed: the sync status says so; the ports stay.
	sw.send(&agentv1.Report{AppliedRevision: 1, Health: agentv1.Health_HEALTH_ERROR, Message: "port Ethernet4: unknown on the switch"})
	got = waitSwitch(t, e, "leaf01", func(s *apiv1.Switch) bool { return s.GetSync().GetError() != "" })
	if !strings.Contains(got.GetSync().GetError(), "Ethernet4") || len(got.GetPorts()) != 2 {
		t.Errorf("after a failed apply: %v", got)
	}

	// Hostile facts: the stream ends naming the field; nothing changes.
	bad := &agentv1.SwitchFacts{Ports: []*agentv1.SwitchPortFact{{Name: "Ethernet0"}, {Name: "Ethernet0"}}}
	sw.send(&agentv1.Report{AppliedRevision: 1, Facts: &agentv1.Facts{Switch: bad}})
	sw.refused("report.facts.switch.ports[1].name")
	after := ok(e.api.Switch.Get(admin, &apiv1.SwitchServiceGetRequest{Id: "leaf01"}))(t).GetSwitch()
	if len(after.GetPorts()) != 2 || after.GetSync().GetAppliedRevision() != 1 {
		t.Errorf("malformed facts changed the switch: %v", after)
	}
}

func waitSwitch(t *testing.T, e *env, id string, cond func(*apiv1.Switch) bool) *apiv1.Switch {
	t.Helper()
	admin := e.as(t, e.admin)
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := e.api.Switch.Get(admin, &apiv1.SwitchServiceGetRequest{Id: id})
		if err == nil && cond(resp.GetSwitch()) {
			return resp.GetSwitch()
		}
		if time.Now().After(deadline) {
			t.Fatalf("switch %s: not as wanted within 10 s: %v %v", id, resp.GetSwitch(), err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
