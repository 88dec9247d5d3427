package server_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/metalfleet/metalfleet/central/internal/server"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// TestStuckLoop: metal-central runs the stuck-machine loop: a machine
// stuck in Preparing with a BMC gets a power cycle into PXE in its
// partition's metal-bmc document, a machine event, and the metric.
func TestStuckLoop(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *server.Config) {
		c.StuckInterval = 100 * time.Millisecond
		c.MetricsListen = "127.0.0.1:0"
	})
	admin := e.as(t, e.admin)
	ok(e.api.Partition.Create(admin, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "fra1"}}))(t)
	ok(e.api.Agent.Enroll(admin, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc-fra1", PartitionId: "fra1"}))(t)
	id := uuid.NewString()
	spec, err := protojson.Marshal(&apiv1.Machine{Id: id, PartitionId: "fra1"})
	if err != nil {
		t.Fatal(err)
	}
	// An installer that went quiet in Preparing 11 minutes ago, and its
	// BMC as metal-bmc reported it.
	e.exec(t, `INSERT INTO machines (id, partition_id, provisioning, last_event, last_event_at, spec)
		VALUES ($1, 'fra1', 'Preparing', 'Preparing', now() - INTERVAL '11 minutes', $2)`, id, spec)
	e.exec(t, `INSERT INTO machine_bmcs (machine_uuid, partition_id, agent_id, reachable, fact)
		SELECT $1, 'fra1', id, TRUE, '{}' FROM agents WHERE kind = 'bmc' AND identity = 'bmc-fra1'`, id)

	deadline := time.Now().Add(10 * time.Second)
	for {
		doc, _ := storedBMCDoc(t, e, "bmc-fra1")
		if ms := doc.GetMachines(); len(ms) == 1 {
			if m := ms[0]; m.GetMachineId() != id || m.GetPower().GetAction() != agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE ||
				m.GetPower().GetGeneration() != 1 || m.GetBoot().GetDevice() != agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE {
				t.Fatalf("metal-bmc document machine %v", m)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no power cycle raised within 10 s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if n := e.count(t, `SELECT count(*) FROM machine_events WHERE machine_id = '`+id+`' AND event = 'Stuck power cycle'`); n != 1 {
		t.Fatalf("%d stuck events, want 1", n)
	}
	resp, err := http.Get("http://" + e.srv.MetricsAddr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "metalfleet_stuck_cycles_total 1") || !strings.Contains(string(body), "metalfleet_stuck_exhausted_total 0") {
		t.Fatalf("metrics lack the stuck counters:\n%s", grepLines(string(body), "metalfleet_stuck"))
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
