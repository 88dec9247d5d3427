package service

import (
	"errors"
	"slices"
	"sync"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/metalfleet/metalfleet/central/internal/fabric"
	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/machine"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// TestSwitchPortsFollowTheMachine: a dual-attached machine's two leaf
// ports are in the PXE VLAN while it waits and installs, move into its
// tenant network's VRF when the installer reports the install done
// (Booting New Kernel), and go back to the PXE VLAN on reinstall and free
// — each in the transaction of the change that causes it. Uplinks are
// uplinks; a port with nothing on it is left alone; each leaf gets its
// ASN and loopback from its ordinal.
func TestSwitchPortsFollowTheMachine(t *testing.T) {
	l := newLab(t, 4)
	if _, err := (&partitionService{API: l.a}).Update(l.ctx, &apiv1.PartitionServiceUpdateRequest{Partition: &apiv1.Partition{Id: "p1"}}); err != nil {
		t.Fatal(err)
	}
	nets := &networkService{API: l.a}
	if _, err := nets.Create(l.ctx, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
		Id: "super", Type: apiv1.NetworkType_NETWORK_TYPE_SUPER, PartitionId: "p1", Prefixes: []string{"10.128.0.0/16"}, ChildPrefixLengthIpv4: 24,
	}}); err != nil {
		t.Fatal(err)
	}
	cr, err := nets.Allocate(l.ctx, &apiv1.NetworkServiceAllocateRequest{ProjectId: l.project, PartitionId: "p1", Name: "tenant"})
	if err != nil {
		t.Fatal(err)
	}
	child := cr.GetNetwork()

	leaves := map[string]fleet.Agent{}
	for i, name := range []string{"leaf01", "leaf02"} {
		leaves[name] = l.enroll(agentv1.Kind_KIND_SWITCH, name, "p1")
		facts := &agentv1.SwitchFacts{Name: name, Rack: "r1", Uplinks: []string{"Ethernet120"}, Ports: []*agentv1.SwitchPortFact{
			{Name: "Ethernet0", Neighbours: []*agentv1.LLDPNeighbour{{ChassisId: mac(1, i), PortId: mac(1, i)}}},
			{Name: "Ethernet4"},
			{Name: "Ethernet120", Neighbours: []*agentv1.LLDPNeighbour{{SystemName: "spine01", PortId: "swp" + string(rune('1'+i))}}},
		}}
		r := &agentv1.Report{Facts: &agentv1.Facts{Switch: facts}}
		if err := l.tx(func(tx pgx.Tx) error { return fabric.Report(l.ctx, tx, l.hub, name, "p1", r) }); err != nil {
			t.Fatal(err)
		}
	}

	// The machine, linked to both leaves by LLDP.
	id := uuid.NewString()
	ag := l.enroll(agentv1.Kind_KIND_INSTALLER, id, "p1")
	f := facts(id, 1, 4)
	f.Nics[0].Neighbours = []*agentv1.LLDPNeighbour{{SystemName: "leaf01", PortId: "Ethernet0"}}
	f.Nics[1].Neighbours = []*agentv1.LLDPNeighbour{{SystemName: "leaf02", PortId: "Ethernet0"}}
	for _, step := range []struct {
		facts *agentv1.MachineFacts
		event string
	}{{nil, "Preparing"}, {f, "Registering"}, {nil, "Waiting"}} {
		if err := l.report(ag, step.facts, step.event); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.a.store.Pool().Exec(l.ctx, `UPDATE agents SET last_contact = now() WHERE id = $1`, ag.ID); err != nil {
		t.Fatal(err)
	}

	type port struct {
		role agentv1.SwitchPortRole
		vni  uint32
	}
	check := func(when string, machinePort port) {
		t.Helper()
		for i, name := range []string{"leaf01", "leaf02"} {
			d := l.doc(leaves[name].ID).GetSwitch()
			if d.GetAsn() != 4200000001+uint32(i) || d.GetLoopback() != "10.255.0."+string(rune('1'+i)) || d.GetPxeVlanId() != 4000 {
				t.Fatalf("%s: %s: asn %d loopback %s pxe vlan %d", when, name, d.GetAsn(), d.GetLoopback(), d.GetPxeVlanId())
			}
			got := map[string]port{}
			for _, p := range d.GetPorts() {
				got[p.GetName()] = port{p.GetRole(), p.GetVrfVni()}
			}
			want := map[string]port{"Ethernet0": machinePort, "Ethernet120": {role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UPLINK}}
			if len(got) != len(want) || got["Ethernet0"] != want["Ethernet0"] || got["Ethernet120"] != want["Ethernet120"] {
				t.Fatalf("%s: %s ports %v, want %v", when, name, got, want)
			}
			wantVRFs := 0
			if machinePort.vni != 0 {
				wantVRFs = 1
				v := d.GetVrfs()
				if len(v) != 1 || v[0].GetVni() != child.GetVrf() || v[0].GetVlanId() != 1001 || !slices.Equal(v[0].GetCidrs(), child.GetPrefixes()) {
					t.Fatalf("%s: %s vrfs %v", when, name, v)
				}
			}
			if len(d.GetVrfs()) != wantVRFs {
				t.Fatalf("%s: %s vrfs %v, want %d", when, name, d.GetVrfs(), wantVRFs)
			}
		}
	}
	pxe := port{role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UNPROVISIONED}
	tenant := port{role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_TENANT, vni: child.GetVrf()}
	check("waiting", pxe)
	// boot checks the machine's boot intent for metal-bmc: the disk for
	// good once installed (PXE no longer reaches its ports), PXE for good
	// again on reinstall and free.
	intents := func(when string) *agentv1.BmcMachine {
		t.Helper()
		var raw []byte
		err := l.a.store.Pool().QueryRow(l.ctx, `SELECT intent FROM bmc_intents WHERE machine_uuid = $1`, id).Scan(&raw)
		if errors.Is(err, pgx.ErrNoRows) {
			return &agentv1.BmcMachine{}
		}
		if err != nil {
			t.Fatalf("%s: bmc intents: %v", when, err)
		}
		m := &agentv1.BmcMachine{}
		if err := protojson.Unmarshal(raw, m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	boot := func(when string, want agentv1.BmcBootDevice, gen uint64) {
		t.Helper()
		if b := intents(when).GetBoot(); b.GetDevice() != want || b.GetGeneration() != gen || (want != agentv1.BmcBootDevice_BMC_BOOT_DEVICE_UNSPECIFIED && !b.GetPersistent()) {
			t.Fatalf("%s: boot intent %v, want %v (persistent) generation %d", when, b, want, gen)
		}
	}

	if _, err := l.create(&apiv1.MachineServiceCreateRequest{Id: id, Networks: []string{child.GetId()}}); err != nil {
		t.Fatalf("allocate the dual-attached machine: %v", err)
	}
	check("allocated", pxe)
	if err := l.report(ag, nil, "Installing"); err != nil {
		t.Fatal(err)
	}
	check("installing", pxe)
	boot("installing", agentv1.BmcBootDevice_BMC_BOOT_DEVICE_UNSPECIFIED, 0)
	if err := l.report(ag, nil, "Booting New Kernel"); err != nil {
		t.Fatal(err)
	}
	check("install done", tenant)
	boot("install done", agentv1.BmcBootDevice_BMC_BOOT_DEVICE_DISK, 1)
	rev := l.doc(leaves["leaf01"].ID).GetRevision()
	ph := fleet.Agent{ID: ag.ID, Kind: agentv1.Kind_KIND_PHONEHOME, Identity: id, Partition: "p1"}
	if err := l.report(ph, nil, "Phoned Home"); err != nil {
		t.Fatal(err)
	}
	check("phoned home", tenant)
	if got := l.doc(leaves["leaf01"].ID).GetRevision(); got != rev {
		t.Fatalf("phoning home changed the switch's document: revision %d → %d", rev, got)
	}
	sw, err := (&switchService{API: l.a}).Get(l.ctx, &apiv1.SwitchServiceGetRequest{Id: "leaf01"})
	if err != nil {
		t.Fatal(err)
	}
	if p := sw.GetSwitch().GetPorts()[0]; p.GetRole() != "tenant" || p.GetVrf() != child.GetVrf() || p.GetMachineId() != id || sw.GetSwitch().GetRack() != "r1" {
		t.Fatalf("the switch as the API shows it: %v", sw.GetSwitch())
	}

	// An operator shuts the machine's port on leaf01: down whatever its
	// role, also after the switch reports its ports again; then up.
	sws := &switchService{API: l.a}
	adminOf := func() agentv1.SwitchAdminState {
		t.Helper()
		for _, p := range l.doc(leaves["leaf01"].ID).GetSwitch().GetPorts() {
			if p.GetName() == "Ethernet0" {
				return p.GetAdminState()
			}
		}
		t.Fatal("Ethernet0 not in leaf01's document")
		return 0
	}
	if _, err := sws.SetPort(l.ctx, &apiv1.SwitchServiceSetPortRequest{Id: "leaf01", Port: "Ethernet0"}); err != nil {
		t.Fatal(err)
	}
	if got := adminOf(); got != agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_DOWN {
		t.Fatalf("shut port: %v", got)
	}
	again := &agentv1.Report{Facts: &agentv1.Facts{Switch: &agentv1.SwitchFacts{Name: "leaf01", Rack: "r1", Uplinks: []string{"Ethernet120"}, Ports: []*agentv1.SwitchPortFact{
		{Name: "Ethernet0", Neighbours: []*agentv1.LLDPNeighbour{{ChassisId: mac(1, 0), PortId: mac(1, 0)}}},
		{Name: "Ethernet120", Neighbours: []*agentv1.LLDPNeighbour{{SystemName: "spine01", PortId: "swp1"}}},
	}}}}
	if err := l.tx(func(tx pgx.Tx) error { return fabric.Report(l.ctx, tx, l.hub, "leaf01", "p1", again) }); err != nil {
		t.Fatal(err)
	}
	if got := adminOf(); got != agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_DOWN {
		t.Fatalf("shut port after the switch reported again: %v", got)
	}
	if _, err := sws.SetPort(l.ctx, &apiv1.SwitchServiceSetPortRequest{Id: "leaf01", Port: "Ethernet9"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("unknown port: %v, want InvalidArgument", err)
	}
	if _, err := sws.SetPort(l.ctx, &apiv1.SwitchServiceSetPortRequest{Id: "leaf77", Port: "Ethernet0"}); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown switch: %v, want NotFound", err)
	}
	if _, err := sws.SetPort(l.ctx, &apiv1.SwitchServiceSetPortRequest{Id: "leaf01", Port: "Ethernet0", Up: true}); err != nil {
		t.Fatal(err)
	}
	if got := adminOf(); got != agentv1.SwitchAdminState_SWITCH_ADMIN_STATE_UP {
		t.Fatalf("port brought up: %v", got)
	}
	check("port up again", tenant)

	svc := &machineService{API: l.a}
	if _, err := svc.Reinstall(l.ctx, &apiv1.MachineServiceReinstallRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	check("reinstall", pxe)
	boot("reinstall", agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE, 2)
	// The reinstall's power cycle waits until both leaves applied the
	// document that moves the machine's ports back to the PXE VLAN: a
	// firmware that PXE-boots before would find no DHCP server.
	reboots := machine.NewReboots(l.a.store, nil, nil, 0)
	reconcile := func(when string, want ...string) {
		t.Helper()
		got, err := reboots.Reconcile(l.ctx)
		if err != nil || !slices.Equal(got, want) {
			t.Fatalf("%s: raised %v (%v), want %v", when, got, err, want)
		}
	}
	applied := func(leaf string) {
		t.Helper()
		r := &agentv1.Report{AppliedRevision: uint64(l.doc(leaves[leaf].ID).GetRevision())}
		if err := l.tx(func(tx pgx.Tx) error { return fabric.Report(l.ctx, tx, l.hub, leaf, "p1", r) }); err != nil {
			t.Fatal(err)
		}
	}
	reconcile("reinstall, no leaf applied")
	if p := intents("reinstall").GetPower(); p != nil {
		t.Fatalf("reinstall: power %v raised before the leaves applied the ports", p)
	}
	applied("leaf01")
	reconcile("reinstall, leaf01 applied")
	applied("leaf02")
	reconcile("reinstall, both applied", id)
	if p := intents("reinstall").GetPower(); p.GetAction() != agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE || p.GetGeneration() != 1 {
		t.Fatalf("reinstall: power %v, want the cycle", p)
	}
	reconcile("reinstall, raised once")
	if err := l.report(ph, nil, "Planned Reboot"); err != nil {
		t.Fatal(err)
	}
	if err := l.report(ag, nil, "Preparing", "Registering", "Waiting", "Installing"); err != nil {
		t.Fatal(err)
	}
	check("reinstalling", pxe)
	if err := l.report(ag, nil, "Booting New Kernel"); err != nil {
		t.Fatal(err)
	}
	check("reinstalled", tenant)
	boot("reinstalled", agentv1.BmcBootDevice_BMC_BOOT_DEVICE_DISK, 3)
	if _, err := svc.Delete(l.ctx, &apiv1.MachineServiceDeleteRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	check("freed", pxe)
	boot("freed", agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE, 4)
	// A leaf that does not apply in time holds the free's reset no longer
	// than machine.SwitchWait.
	reconcile("freed, no leaf applied")
	if _, err := l.a.store.Pool().Exec(l.ctx, `UPDATE machines SET reboot_deadline = now() - INTERVAL '1 second' WHERE id = $1`, id); err != nil {
		t.Fatal(err)
	}
	// Replicas racing for it raise it once.
	var wg sync.WaitGroup
	var mu sync.Mutex
	var all []string
	for range 8 {
		wg.Go(func() {
			got, err := machine.NewReboots(l.a.store, nil, nil, 0).Reconcile(l.ctx)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			all = append(all, got...)
			mu.Unlock()
		})
	}
	wg.Wait()
	if !slices.Equal(all, []string{id}) {
		t.Fatalf("freed, past the deadline: 8 replicas raised %v, want %s once", all, id)
	}
	if p := intents("freed").GetPower(); p.GetAction() != agentv1.BmcPowerAction_BMC_POWER_ACTION_RESET || p.GetGeneration() != 2 {
		t.Fatalf("freed: power %v, want the reset", p)
	}
}

// TestSwitchPortsFromTheMachinesLLDP: nothing on a machine sends LLDP
// while it PXE-boots and installs, so its leaves do not see it; the
// machine's own neighbours (switch name, port identifier) put it on the
// ports, and its ports still move into its VRF at install done.
func TestSwitchPortsFromTheMachinesLLDP(t *testing.T) {
	l := newLab(t, 4)
	nets := &networkService{API: l.a}
	if _, err := nets.Create(l.ctx, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
		Id: "super", Type: apiv1.NetworkType_NETWORK_TYPE_SUPER, PartitionId: "p1", Prefixes: []string{"10.128.0.0/16"}, ChildPrefixLengthIpv4: 24,
	}}); err != nil {
		t.Fatal(err)
	}
	cr, err := nets.Allocate(l.ctx, &apiv1.NetworkServiceAllocateRequest{ProjectId: l.project, PartitionId: "p1", Name: "tenant"})
	if err != nil {
		t.Fatal(err)
	}
	leaves := map[string]fleet.Agent{}
	report := func(name string) {
		t.Helper()
		facts := &agentv1.SwitchFacts{Name: name, Rack: "r1", Uplinks: []string{"Ethernet120"}, Ports: []*agentv1.SwitchPortFact{
			{Name: "Ethernet0", Identifier: "Ethernet0"}, {Name: "Ethernet4", Identifier: "Ethernet4"}, {Name: "Ethernet120", Identifier: "Ethernet120"},
		}}
		if err := l.tx(func(tx pgx.Tx) error {
			return fabric.Report(l.ctx, tx, l.hub, name, "p1", &agentv1.Report{Facts: &agentv1.Facts{Switch: facts}})
		}); err != nil {
			t.Fatal(err)
		}
	}
	for _, name := range []string{"leaf01", "leaf02"} {
		leaves[name] = l.enroll(agentv1.Kind_KIND_SWITCH, name, "p1")
		report(name)
	}
	id := uuid.NewString()
	ag := l.enroll(agentv1.Kind_KIND_INSTALLER, id, "p1")
	f := facts(id, 1, 4)
	f.Nics[0].Neighbours = []*agentv1.LLDPNeighbour{{SystemName: "leaf01", PortId: "Ethernet0"}}
	f.Nics[1].Neighbours = []*agentv1.LLDPNeighbour{{SystemName: "leaf02", PortId: "Ethernet0"}}
	for _, step := range []struct {
		facts *agentv1.MachineFacts
		event string
	}{{nil, "Preparing"}, {f, "Registering"}, {nil, "Waiting"}} {
		if err := l.report(ag, step.facts, step.event); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.a.store.Pool().Exec(l.ctx, `UPDATE agents SET last_contact = now() WHERE id = $1`, ag.ID); err != nil {
		t.Fatal(err)
	}
	roles := func(when string, want agentv1.SwitchPortRole) {
		t.Helper()
		for _, name := range []string{"leaf01", "leaf02"} {
			var got []string
			for _, p := range l.doc(leaves[name].ID).GetSwitch().GetPorts() {
				got = append(got, p.GetName()+"="+p.GetRole().String())
			}
			if !slices.Contains(got, "Ethernet0="+want.String()) || slices.ContainsFunc(got, func(s string) bool { return s[:9] == "Ethernet4" }) {
				t.Fatalf("%s: %s ports %v, want Ethernet0 %s and Ethernet4 left alone", when, name, got, want)
			}
		}
	}
	// The machine's registration derived the switches it names: no switch
	// report needed.
	roles("waiting", agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UNPROVISIONED)
	sw, err := (&switchService{API: l.a}).Get(l.ctx, &apiv1.SwitchServiceGetRequest{Id: "leaf02"})
	if err != nil {
		t.Fatal(err)
	}
	if p := sw.GetSwitch().GetPorts()[0]; p.GetName() != "Ethernet0" || p.GetMachineId() != id || p.GetMac() != f.Nics[1].GetMac() {
		t.Fatalf("leaf02's Ethernet0 as the API shows it: %v", p)
	}
	if _, err := l.create(&apiv1.MachineServiceCreateRequest{Id: id, Networks: []string{cr.GetNetwork().GetId()}}); err != nil {
		t.Fatalf("allocate: %v", err)
	}
	for _, ev := range []string{"Installing", "Booting New Kernel"} {
		if err := l.report(ag, nil, ev); err != nil {
			t.Fatal(err)
		}
	}
	roles("install done", agentv1.SwitchPortRole_SWITCH_PORT_ROLE_TENANT)
}
