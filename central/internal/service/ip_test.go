package service

import (
	"testing"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// An IP bound to a machine names it in Get and List (and in Update's
// answer); once the machine is freed, the static IP that stays with the
// project names no machine any more.
func TestIPMachineID(t *testing.T) {
	l := newLab(t, 2)
	id, _ := l.machine(1, "")
	m, err := l.create(&apiv1.MachineServiceCreateRequest{Networks: []string{"internet"}})
	if err != nil {
		t.Fatal(err)
	}
	if m.GetId() != id || len(m.GetAllocation().GetIps()) != 2 {
		t.Fatalf("allocated %v", m)
	}
	svc := &ipService{API: l.a}
	get := func(ip string) *apiv1.IP {
		t.Helper()
		r, err := svc.Get(l.ctx, &apiv1.IPServiceGetRequest{Ip: ip})
		if err != nil {
			t.Fatal(err)
		}
		return r.GetIp()
	}
	list := func() map[string]string {
		t.Helper()
		r, err := svc.List(l.ctx, &apiv1.IPServiceListRequest{ProjectId: l.project})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, ip := range r.GetIps() {
			out[ip.GetIp()] = ip.GetMachineId()
		}
		return out
	}
	for _, ip := range m.GetAllocation().GetIps() {
		if got := get(ip).GetMachineId(); got != id {
			t.Errorf("Get(%s).machine_id = %q, want %q", ip, got, id)
		}
		if got, ok := list()[ip]; !ok || got != id {
			t.Errorf("List: %s has machine_id %q (listed %v), want %q", ip, got, ok, id)
		}
	}

	// Keep one address: it becomes static and stays bound until the machine is freed.
	kept := m.GetAllocation().GetIps()[0]
	up, err := svc.Update(l.ctx, &apiv1.IPServiceUpdateRequest{Ip: kept, Name: "keep", Type: apiv1.IPType_IP_TYPE_STATIC})
	if err != nil {
		t.Fatal(err)
	}
	if up.GetIp().GetMachineId() != id {
		t.Errorf("Update answer machine_id = %q, want %q", up.GetIp().GetMachineId(), id)
	}
	if _, err := (&machineService{API: l.a}).Delete(l.ctx, &apiv1.MachineServiceDeleteRequest{Id: id}); err != nil {
		t.Fatal(err)
	}
	if got := get(kept); got.GetMachineId() != "" || got.GetName() != "keep" {
		t.Errorf("after free: Get(%s) = %v, want no machine", kept, got)
	}
	if got := list(); len(got) != 1 || got[kept] != "" {
		t.Errorf("after free: List = %v, want only %s without machine", got, kept)
	}
}
