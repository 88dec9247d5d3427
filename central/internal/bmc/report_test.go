package bmc

import (
	"context"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/pgtest"
	"github.com/metalfleet/metalfleet/central/internal/storetest"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m, &pg)) }

// TestReportBesideAdopt runs the race of a metal-bmc report with the
// registration that adopts its BMC's row, in the order that loses data
// without care: the report reads the machines before the registration
// commits (so it keys the BMC by the UUID it reported), then waits on the
// row the registration renamed, then stores its row under the old name.
// The adopted row must survive and the old name must go.
func TestReportBesideAdopt(t *testing.T) {
	ctx := context.Background()
	st := storetest.Open(ctx, t, pg)
	const (
		reported = "02001a2c-7c0d-559d-b14b-9e3f527a1f5c" // the BMC's default decoding
		machine  = "5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0002" // the installer's SMBIOS UUID
	)
	fact := &agentv1.BmcFact{MachineUuid: reported, MachineUuidAliases: []string{machine}, Address: "10.1.0.11:623",
		Protocol: agentv1.BmcProtocol_BMC_PROTOCOL_IPMI, Reachable: true}
	setup := `INSERT INTO partitions (id, spec) VALUES ('p1', '{}');
		INSERT INTO agents (id, kind, identity, partition_id, token_hash, enrolled_by, desired_revision, desired, desired_at)
			VALUES ('a1', 'bmc', 'bmc-p1', 'p1', '\x01', 'test', 1, '{}', now());
		INSERT INTO machine_bmcs (machine_uuid, partition_id, agent_id, reachable, fact)
			VALUES ('` + reported + `', 'p1', 'a1', true, '{"machineUuid": "` + reported + `", "machineUuidAliases": ["` + machine + `"]}')`
	if _, err := st.Pool().Exec(ctx, setup); err != nil {
		t.Fatal(err)
	}
	noEvents := func(context.Context, pgx.Tx, string, string, string) error { return nil }

	// The registration: the machine and the adoption of its BMC's row, not
	// committed yet.
	reg, err := st.Pool().Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Rollback(ctx) }()
	if _, err := reg.Exec(ctx, `INSERT INTO machines (id, partition_id, spec) VALUES ($1, 'p1', '{}')`, machine); err != nil {
		t.Fatal(err)
	}
	if err := Adopt(ctx, reg, "p1", machine); err != nil {
		t.Fatal(err)
	}
	// The report: it cannot see the machine yet, and waits on the row.
	done := make(chan error, 1)
	go func() {
		done <- st.Tx(ctx, func(tx pgx.Tx) error {
			return Report(ctx, tx, nil, noEvents, "a1", "p1", &agentv1.Report{Facts: &agentv1.Facts{Bmc: &agentv1.BmcFacts{Bmcs: []*agentv1.BmcFact{fact}}}})
		})
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var waiting int
		if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&waiting); err != nil {
			t.Fatal(err)
		}
		if waiting > 0 {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("the report did not wait for the registration: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("the report never waited on the registration's row")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := reg.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	rows, err := st.Pool().Query(ctx, `SELECT machine_uuid FROM machine_bmcs ORDER BY machine_uuid`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{machine}) {
		t.Errorf("BMC rows after the race: %v, want only the adopted %s", got, machine)
	}

	// The next report keys the BMC by the machine and leaves one row.
	if err := st.Tx(ctx, func(tx pgx.Tx) error {
		return Report(ctx, tx, nil, noEvents, "a1", "p1", &agentv1.Report{Facts: &agentv1.Facts{Bmc: &agentv1.BmcFacts{Bmcs: []*agentv1.BmcFact{fact}}}})
	}); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM machine_bmcs WHERE machine_uuid = $1 AND agent_id = 'a1'`, machine).Scan(&n); err != nil || n != 1 {
		t.Errorf("rows of the machine after the next report: %d (%v)", n, err)
	}
}
