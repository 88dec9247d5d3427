package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/fsm"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// selectMachine reads a machine with what is derived at read time:
// lifecycle state, liveliness of its agent, the newest event's error.
const selectMachine = `SELECT m.spec, m.generation, m.created_at, m.updated_at, COALESCE(m.size_id, ''), m.rack, m.state,
	m.provisioning, m.last_event, m.last_event_at, m.crashes, a.last_contact, m.project_id IS NOT NULL,
	COALESCE((SELECT e.error FROM machine_events e WHERE e.machine_id = m.id AND e.seq = m.event_seq), ''),
	ARRAY(SELECT c.mac || ' ' || c.machine_id || ' ' || c.owner_id FROM machine_mac_conflicts c WHERE c.machine_id = m.id
		UNION ALL SELECT c.mac || ' ' || c.machine_id || ' ' || c.owner_id FROM machine_mac_conflicts c WHERE c.owner_id = m.id),
	b.fact, (SELECT i.results FROM bmc_intents i WHERE i.machine_uuid = m.id),
	m.stuck_state, m.stuck_cycles, m.stuck_exhausted
	FROM machines m LEFT JOIN agents a ON a.id = m.agent_id LEFT JOIN machine_bmcs b ON b.machine_uuid = m.id`

// selectBMCOnly reads the machines known only from their BMCs (metal-bmc
// read the BMC, the machine never PXE-booted): no machine row yet.
const selectBMCOnly = `SELECT b.machine_uuid, b.partition_id, b.fact, (SELECT i.results FROM bmc_intents i WHERE i.machine_uuid = b.machine_uuid),
	b.updated_at FROM machine_bmcs b
	WHERE NOT EXISTS (SELECT 1 FROM machines m WHERE m.id = b.machine_uuid)`

// IssueBMCUnreachable: the machine's BMC does not answer metal-bmc's polls.
const IssueBMCUnreachable = "bmc-unreachable"

// IssueDuplicateMAC: a NIC is reported by two machines (storeNICs).
const IssueDuplicateMAC = "duplicate-mac"

var provisioningStates = map[fsm.State]apiv1.ProvisioningState{
	fsm.PXEBooting:       apiv1.ProvisioningState_PROVISIONING_STATE_PXE_BOOTING,
	fsm.Preparing:        apiv1.ProvisioningState_PROVISIONING_STATE_PREPARING,
	fsm.Registering:      apiv1.ProvisioningState_PROVISIONING_STATE_REGISTERING,
	fsm.Waiting:          apiv1.ProvisioningState_PROVISIONING_STATE_WAITING,
	fsm.Installing:       apiv1.ProvisioningState_PROVISIONING_STATE_INSTALLING,
	fsm.BootingNewKernel: apiv1.ProvisioningState_PROVISIONING_STATE_BOOTING_NEW_KERNEL,
	fsm.PhonedHome:       apiv1.ProvisioningState_PROVISIONING_STATE_PHONED_HOME,
	fsm.PlannedReboot:    apiv1.ProvisioningState_PROVISIONING_STATE_PLANNED_REBOOT,
	fsm.MachineReclaim:   apiv1.ProvisioningState_PROVISIONING_STATE_MACHINE_RECLAIM,
	fsm.Crashed:          apiv1.ProvisioningState_PROVISIONING_STATE_CRASHED,
}

func (ms *Machines) scan(row pgx.Row, now time.Time) (*apiv1.Machine, error) {
	var (
		spec             []byte
		gen              int64
		created, updated time.Time
		sizeID, rack     string
		state, prov, ev  string
		evAt, contact    *time.Time
		crashes          int
		allocated        bool
		lastErr          string
		conflicts        []string
		fact, results    []byte
		stuckState       string
		stuckCycles      int
		stuckExhausted   bool
	)
	if err := row.Scan(&spec, &gen, &created, &updated, &sizeID, &rack, &state, &prov, &ev, &evAt, &crashes, &contact, &allocated, &lastErr, &conflicts,
		&fact, &results, &stuckState, &stuckCycles, &stuckExhausted); err != nil {
		return nil, err
	}
	m := &apiv1.Machine{}
	if err := store.DecodeSpec(spec, m); err != nil {
		return nil, fmt.Errorf("decode machine spec: %w", err)
	}
	m.Meta = meta(gen, created, updated)
	m.SizeId, m.Rack, m.LastEvent = sizeID, rack, ev
	m.State = States[state]
	m.Provisioning = provisioningStates[fsm.State(prov)]
	if evAt != nil {
		m.LastEventAt = timestamppb.New(*evAt)
	}
	if !allocated {
		m.Allocation = nil
	}
	m.Liveliness = apiv1.Liveliness_LIVELINESS_UNKNOWN
	if ms.docs != nil {
		m.Liveliness = ms.docs.Liveliness(contact)
	}
	v := fsm.View{State: fsm.State(prov), Crashes: crashes, SizeID: sizeID, LastError: lastErr, Registered: m.GetHardware() != nil,
		Dead: m.Liveliness == apiv1.Liveliness_LIVELINESS_DEAD, Unknown: m.Liveliness == apiv1.Liveliness_LIVELINESS_UNKNOWN && contact != nil,
		StuckState: fsm.State(stuckState), StuckCycles: stuckCycles, StuckExhausted: stuckExhausted}
	if evAt != nil {
		v.LastEventAt = *evAt
	}
	for _, is := range fsm.Issues(v, now) {
		m.Issues = append(m.Issues, &apiv1.MachineIssue{Id: is.ID, Description: is.Description, MachineId: m.GetId()})
	}
	if err := withBMC(m, fact, results); err != nil {
		return nil, err
	}
	slices.Sort(conflicts)
	for _, c := range conflicts {
		f := strings.Fields(c) // mac, reporter, owner
		if len(f) != 3 {
			continue
		}
		m.Issues = append(m.Issues, &apiv1.MachineIssue{Id: IssueDuplicateMAC, MachineId: m.GetId(),
			Description: fmt.Sprintf("NIC %s belongs to machine %s and is also reported by machine %s: resolve with metalctl machine resolve-mac", f[0], f[2], f[1])})
	}
	return m, nil
}

// Get reads a machine as the API shows it.
func (ms *Machines) Get(ctx context.Context, db store.Querier, id string) (*apiv1.Machine, error) {
	m, err := ms.scan(db.QueryRow(ctx, selectMachine+` WHERE m.id = $1`, id), time.Now())
	if errors.Is(err, pgx.ErrNoRows) {
		// Not registered yet: maybe known from its BMC.
		return scanBMCOnly(db.QueryRow(ctx, selectBMCOnly+` AND b.machine_uuid = $1`, id))
	}
	if err != nil {
		return nil, err
	}
	a, err := readAttachment(ctx, db, m.GetPartitionId())
	if err != nil {
		return nil, err
	}
	a.addIssue(m)
	return m, nil
}

// addIssue adds the dual-attach issue to m, if it has one.
func (a attachment) addIssue(m *apiv1.Machine) {
	if msg := a.issue(m); msg != "" {
		m.Issues = append(m.Issues, &apiv1.MachineIssue{Id: IssueSingleAttach, Description: msg, MachineId: m.GetId()})
	}
}

// List reads the machines of the partition, the project and the size, by
// id; "" matches any.
func (ms *Machines) List(ctx context.Context, partition, project, size string) ([]*apiv1.Machine, error) {
	rows, err := ms.st.Pool().Query(ctx, selectMachine+` WHERE ($1 = '' OR m.partition_id = $1) AND ($2 = '' OR m.project_id = $2)
		AND ($3 = '' OR m.size_id = $3) ORDER BY m.id`, partition, project, size)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	now := time.Now()
	var out []*apiv1.Machine
	for rows.Next() {
		m, err := ms.scan(rows, now)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	a, err := readAttachment(ctx, ms.st.Pool(), partition)
	if err != nil {
		return nil, err
	}
	for _, m := range out {
		a.addIssue(m)
	}
	if project != "" || size != "" {
		return out, nil // a machine known from its BMC has neither
	}
	bmcOnly, err := ms.listBMCOnly(ctx, partition)
	if err != nil {
		return nil, err
	}
	if len(bmcOnly) == 0 {
		return out, nil
	}
	out = append(out, bmcOnly...)
	slices.SortFunc(out, func(x, y *apiv1.Machine) int { return strings.Compare(x.GetId(), y.GetId()) })
	return out, nil
}

// listBMCOnly reads the machines of partition ("" any) known only from
// their BMCs.
func (ms *Machines) listBMCOnly(ctx context.Context, partition string) ([]*apiv1.Machine, error) {
	rows, err := ms.st.Pool().Query(ctx, selectBMCOnly+` AND ($1 = '' OR b.partition_id = $1) ORDER BY b.machine_uuid`, partition)
	if err != nil {
		return nil, fmt.Errorf("machines known from their BMCs: %w", err)
	}
	defer rows.Close()
	var out []*apiv1.Machine
	for rows.Next() {
		m, err := scanBMCOnly(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// LastSeq is the sequence number of the machine's event before its last
// n events.
func (ms *Machines) LastSeq(ctx context.Context, id string, n int64) (int64, error) {
	var after int64
	err := ms.st.Pool().QueryRow(ctx, `SELECT GREATEST(event_seq - $2, 0) FROM machines WHERE id = $1`, id, n).Scan(&after)
	return after, err
}

// SeqEvent is an event of the log with its sequence number.
type SeqEvent struct {
	Seq   int64
	Event *apiv1.MachineEvent
}

// EventsAfter reads up to 1000 events of the machine after seq.
func (ms *Machines) EventsAfter(ctx context.Context, id string, after int64) ([]SeqEvent, error) {
	rows, err := ms.st.Pool().Query(ctx, `SELECT seq, at, event, message, state, error FROM machine_events
		WHERE machine_id = $1 AND seq > $2 ORDER BY seq LIMIT 1000`, id, after)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []SeqEvent
	for rows.Next() {
		var (
			e        SeqEvent
			at       time.Time
			ev       apiv1.MachineEvent
			stateStr string
		)
		if err := rows.Scan(&e.Seq, &at, &ev.Event, &ev.Message, &stateStr, &ev.Error); err != nil {
			return nil, err
		}
		ev.Time, ev.State, ev.MachineId = timestamppb.New(at), provisioningStates[fsm.State(stateStr)], id
		e.Event = &ev
		out = append(out, e)
	}
	return out, rows.Err()
}

// withBMC adds what metal-bmc read from the machine's BMC (fact:
// machine_bmcs' JSON) and its intents' results (bmc_intents' JSON) to m,
// each nil for none, and an issue when the BMC does not answer.
func withBMC(m *apiv1.Machine, fact, results []byte) error {
	var list []json.RawMessage
	if len(results) > 0 {
		if err := json.Unmarshal(results, &list); err != nil {
			return fmt.Errorf("decode bmc results of machine %s: %w", m.GetId(), err)
		}
	}
	for _, raw := range list {
		x := &agentv1.BmcIntentResult{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, x); err != nil {
			return fmt.Errorf("decode bmc result of machine %s: %w", m.GetId(), err)
		}
		m.BmcResults = append(m.BmcResults, x)
	}
	if fact == nil {
		return nil
	}
	m.Bmc = &agentv1.BmcFact{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(fact, m.Bmc); err != nil {
		return fmt.Errorf("decode bmc fact of machine %s: %w", m.GetId(), err)
	}
	if !m.GetBmc().GetReachable() {
		desc := fmt.Sprintf("its BMC at %s does not answer", m.GetBmc().GetAddress())
		if e := m.GetBmc().GetLastError(); e != "" {
			desc += ": " + e
		}
		if n := m.GetBmc().GetFailures(); n > 0 {
			desc += fmt.Sprintf(" (%d polls in a row)", n)
		}
		m.Issues = append(m.Issues, &apiv1.MachineIssue{Id: IssueBMCUnreachable, Description: desc, MachineId: m.GetId()})
	}
	return nil
}

// scanBMCOnly reads a row of selectBMCOnly as a machine in state "known
// from BMC".
func scanBMCOnly(row pgx.Row) (*apiv1.Machine, error) {
	var (
		id, partition string
		fact, results []byte
		updated       time.Time
	)
	if err := row.Scan(&id, &partition, &fact, &results, &updated); err != nil {
		return nil, err
	}
	m := &apiv1.Machine{Id: id, PartitionId: partition, Provisioning: apiv1.ProvisioningState_PROVISIONING_STATE_KNOWN_FROM_BMC,
		Liveliness: apiv1.Liveliness_LIVELINESS_UNKNOWN, Meta: meta(1, updated, updated)}
	if err := withBMC(m, fact, results); err != nil {
		return nil, err
	}
	return m, nil
}
