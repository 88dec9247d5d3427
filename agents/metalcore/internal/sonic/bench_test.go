package sonic

import (
	"context"
	"testing"

	"github.com/metalfleet/metalfleet/agents/metalcore/redistest"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// bigSwitch is a 48-port leaf with two uplinks, and a document that puts
// 500 tenant VRFs on it: 40 machine ports in 40 of them, 8 in the PXE VLAN.
func bigSwitch() (map[string]map[string]string, *agentv1.SwitchDocument) {
	machine := ports(0, 188)
	base := baseConfig(append(machine, "Ethernet192", "Ethernet196"))
	d := newDoc()
	d.d.Ports = nil
	for _, u := range []string{"Ethernet192", "Ethernet196"} {
		d.d.Ports = append(d.d.Ports, &agentv1.SwitchPort{Name: u, Role: agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UPLINK})
	}
	for i := range 500 {
		d.vrf(uint32(104001+i), uint32(1001+i), "10.1.0.0/22")
	}
	for i, p := range machine {
		if i < 40 {
			d.tenant(uint32(104001+i*12), p)
		} else {
			d.pxe(p)
		}
	}
	return base, d.d
}

// BenchmarkFullSync applies the 500-VRF document to a switch that has only
// its base configuration (target: at most 2 s per sync).
func BenchmarkFullSync(b *testing.B) {
	srv := redistest.Start(b)
	base, d := bigSwitch()
	s := open(b, srv)
	cdb := srv.Client(b, ConfigDB)
	ctx := context.Background()
	writes := 0
	for b.Loop() {
		b.StopTimer()
		if err := cdb.FlushDB(ctx).Err(); err != nil {
			b.Fatal(err)
		}
		srv.Load(b, ConfigDB, base)
		b.StartTimer()
		res, err := s.Apply(ctx, build(b, s, d))
		if err != nil {
			b.Fatal(err)
		}
		writes = res.Writes
	}
	b.ReportMetric(float64(writes), "writes/op")
}

// BenchmarkNoopApply applies the same document again (target: at most
// 100 ms, zero writes).
func BenchmarkNoopApply(b *testing.B) {
	srv := redistest.Start(b)
	base, d := bigSwitch()
	srv.Load(b, ConfigDB, base)
	s := open(b, srv)
	ctx := context.Background()
	if _, err := s.Apply(ctx, build(b, s, d)); err != nil {
		b.Fatal(err)
	}
	writes := 0
	for b.Loop() {
		res, err := s.Apply(ctx, build(b, s, d))
		if err != nil {
			b.Fatal(err)
		}
		writes += res.Writes
	}
	if writes != 0 {
		b.Fatalf("a no-op apply wrote %d commands", writes)
	}
	b.ReportMetric(float64(writes), "writes/op")
}
