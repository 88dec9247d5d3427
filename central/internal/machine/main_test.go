package machine

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/pgtest"
	"github.com/metalfleet/metalfleet/central/internal/store"
	"github.com/metalfleet/metalfleet/central/internal/storetest"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m, &pg)) }

// project is the lab's project.
const project = "11111111-1111-4111-8111-111111111111"

// aliveWithin is how recently a lab machine's installer must have been
// heard from for it to be allocated.
const aliveWithin = 70 * time.Second

// lab is partition p1 with size s1, image debian-12 and a project, on a
// fresh database with a real fleet hub, and the context of an admin's
// call, which the audit rows need.
type lab struct {
	t   testing.TB
	ctx context.Context
	st  *store.Store
	hub *fleet.Hub
}

func newLab(t testing.TB) *lab {
	t.Helper()
	ctx := storetest.AdminCall(context.Background(), "/metalfleet.api.v1.MachineService/Create")
	st := storetest.Open(ctx, t, pg)
	log := slog.New(slog.DiscardHandler)
	hub, err := fleet.New(st, log, fleet.Config{Replica: "test"}, fleet.NewNotifyHints(st, log))
	if err != nil {
		t.Fatal(err)
	}
	// The rows of other aggregates a machine refers to, written here as
	// their owners would.
	if err := st.Tx(ctx, func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, `INSERT INTO tenants (id, spec) VALUES ('t', '{}');
			INSERT INTO projects (id, tenant_id, name, spec) VALUES ('`+project+`', 't', 'p', '{}')`)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := catalog.CreatePartition(ctx, st, &apiv1.Partition{Id: "p1", AllowSingleAttach: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := catalog.CreateSize(ctx, st, &apiv1.Size{Id: "s1", Constraints: []*apiv1.SizeConstraint{
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, Min: 1, Max: 8},
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY, Min: 1 << 30, Max: 64 << 30},
	}}); err != nil {
		t.Fatal(err)
	}
	if _, err := catalog.CreateImage(ctx, st, &apiv1.Image{
		Id: "debian-12", Os: "debian", Version: "12.0.0", Url: "http://images/debian.tar.zst", Sha256: strings.Repeat("0", 64)}); err != nil {
		t.Fatal(err)
	}
	return &lab{t: t, ctx: ctx, st: st, hub: hub}
}

// machine boots server n into Waiting through ms the way its installer
// does and marks its installer alive. It returns the machine's id.
func (l *lab) machine(ms *Machines, n int) string {
	l.t.Helper()
	return l.machineLinked(ms, n, nil)
}

// machineLinked is machine with LLDP neighbours on its NICs eth0 and eth1:
// links[i] is "switch port" for NIC i, "" none.
func (l *lab) machineLinked(ms *Machines, n int, links []string) string {
	l.t.Helper()
	id := uuid.NewString()
	var ag fleet.Agent
	if err := l.st.Tx(l.ctx, func(tx pgx.Tx) error {
		e, err := l.hub.Enroll(l.ctx, tx, agentv1.Kind_KIND_INSTALLER, id, "p1", "test")
		ag = fleet.Agent{ID: e.ID, Kind: agentv1.Kind_KIND_INSTALLER, Identity: id, Partition: "p1"}
		return err
	}); err != nil {
		l.t.Fatal(err)
	}
	facts := &agentv1.MachineFacts{
		Uuid: id, Cores: 4, MemoryBytes: 4 << 30,
		Disks: []*agentv1.DiskFact{{Name: "vda", SizeBytes: 20 << 30}},
		Nics: []*agentv1.NICFact{
			{Name: "eth0", Mac: net.HardwareAddr{0x52, 0x54, 0x00, byte(n >> 8), byte(n), 0}.String()},
			{Name: "eth1", Mac: net.HardwareAddr{0x52, 0x54, 0x00, byte(n >> 8), byte(n), 1}.String()},
		},
	}
	for i, link := range links {
		if sw, port, ok := strings.Cut(link, " "); ok {
			facts.Nics[i].Neighbours = []*agentv1.LLDPNeighbour{{SystemName: sw, PortId: port, ChassisId: "aa:bb:cc:00:00:0" + strconv.Itoa(i)}}
		}
	}
	for _, r := range []*agentv1.Report{
		{Events: []*agentv1.Event{{Type: "Preparing", Time: timestamppb.Now()}}},
		{Facts: &agentv1.Facts{Machine: facts}, Events: []*agentv1.Event{{Type: "Registering", Time: timestamppb.Now()}}},
		{Events: []*agentv1.Event{{Type: "Waiting", Time: timestamppb.Now()}}},
	} {
		if err := l.st.Tx(l.ctx, func(tx pgx.Tx) error { return ms.Report(l.ctx, tx, ag, r) }); err != nil {
			l.t.Fatal(err)
		}
	}
	if _, err := l.st.Pool().Exec(l.ctx, `UPDATE agents SET last_contact = now() WHERE id = $1`, ag.ID); err != nil {
		l.t.Fatal(err)
	}
	return id
}
