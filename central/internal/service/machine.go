package service

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/fsm"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type machineService struct {
	*API
	apiv1.UnimplementedMachineServiceServer
}

var machines = store.Table[*apiv1.Machine]{Name: "machines", New: func() *apiv1.Machine { return &apiv1.Machine{} }}

// machineSelect reads a machine with what is derived at read time:
// lifecycle state, liveliness of its agent, the newest event's error.
const machineSelect = `SELECT m.spec, m.generation, m.created_at, m.updated_at, COALESCE(m.size_id, ''), m.rack, m.state,
	m.provisioning, m.last_event, m.last_event_at, m.crashes, a.last_contact, m.project_id IS NOT NULL,
	COALESCE((SELECT e.error FROM machine_events e WHERE e.machine_id = m.id AND e.seq = m.event_seq), ''),
	ARRAY(SELECT c.mac || ' ' || c.machine_id || ' ' || c.owner_id FROM machine_mac_conflicts c WHERE c.machine_id = m.id
		UNION ALL SELECT c.mac || ' ' || c.machine_id || ' ' || c.owner_id FROM machine_mac_conflicts c WHERE c.owner_id = m.id)
	FROM machines m LEFT JOIN agents a ON a.id = m.agent_id`

func (a *API) scanMachine(row pgx.Row, now time.Time) (*apiv1.Machine, error) {
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
	)
	if err := row.Scan(&spec, &gen, &created, &updated, &sizeID, &rack, &state, &prov, &ev, &evAt, &crashes, &contact, &allocated, &lastErr, &conflicts); err != nil {
		return nil, err
	}
	m := &apiv1.Machine{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(spec, m); err != nil {
		return nil, fmt.Errorf("decode machine spec: %w", err)
	}
	m.Meta = &apiv1.Meta{CreatedAt: timestamppb.New(created), UpdatedAt: timestamppb.New(updated), Generation: uint64(gen)}
	m.SizeId, m.Rack, m.LastEvent = sizeID, rack, ev
	m.State = machineStates[state]
	m.Provisioning = provisioningStates[fsm.State(prov)]
	if evAt != nil {
		m.LastEventAt = timestamppb.New(*evAt)
	}
	if !allocated {
		m.Allocation = nil
	}
	m.Liveliness = apiv1.Liveliness_LIVELINESS_UNKNOWN
	if a.fleet != nil {
		m.Liveliness = a.fleet.Liveliness(contact)
	}
	v := fsm.View{State: fsm.State(prov), Crashes: crashes, SizeID: sizeID, LastError: lastErr, Registered: m.GetHardware() != nil,
		Dead: m.Liveliness == apiv1.Liveliness_LIVELINESS_DEAD, Unknown: m.Liveliness == apiv1.Liveliness_LIVELINESS_UNKNOWN && contact != nil}
	if evAt != nil {
		v.LastEventAt = *evAt
	}
	for _, is := range fsm.Issues(v, now) {
		m.Issues = append(m.Issues, &apiv1.MachineIssue{Id: is.ID, Description: is.Description, MachineId: m.GetId()})
	}
	slices.Sort(conflicts)
	for _, c := range conflicts {
		f := strings.Fields(c) // mac, reporter, owner
		if len(f) != 3 {
			continue
		}
		m.Issues = append(m.Issues, &apiv1.MachineIssue{Id: issueDuplicateMAC, MachineId: m.GetId(),
			Description: fmt.Sprintf("NIC %s belongs to machine %s and is also reported by machine %s: resolve with metalctl machine resolve-mac", f[0], f[2], f[1])})
	}
	return m, nil
}

// issueDuplicateMAC: a NIC is reported by two machines (storeNICs).
const issueDuplicateMAC = "duplicate-mac"

var machineStates = map[string]apiv1.MachineState{
	"available": apiv1.MachineState_MACHINE_STATE_AVAILABLE,
	"reserved":  apiv1.MachineState_MACHINE_STATE_RESERVED,
	"locked":    apiv1.MachineState_MACHINE_STATE_LOCKED,
}

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

func (a *API) readMachine(ctx context.Context, db store.Querier, id string) (*apiv1.Machine, error) {
	m, err := a.scanMachine(db.QueryRow(ctx, machineSelect+` WHERE m.id = $1`, id), time.Now())
	if err != nil {
		return nil, toStatus(err, "machine "+quote(id))
	}
	return m, nil
}

func (a *API) listMachines(ctx context.Context, where string, args ...any) ([]*apiv1.Machine, error) {
	rows, err := a.store.Pool().Query(ctx, machineSelect+" WHERE "+where+" ORDER BY m.id", args...)
	if err != nil {
		return nil, toStatus(err, "machines")
	}
	defer rows.Close()
	now := time.Now()
	var out []*apiv1.Machine
	for rows.Next() {
		m, err := a.scanMachine(rows, now)
		if err != nil {
			return nil, toStatus(err, "machines")
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		return nil, toStatus(err, "machines")
	}
	return out, nil
}

func (s *machineService) Get(ctx context.Context, req *apiv1.MachineServiceGetRequest) (*apiv1.MachineServiceGetResponse, error) {
	m, err := s.readMachine(ctx, s.store.Pool(), req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceGetResponse{Machine: m}, nil
}

// List shows admins every machine and others their projects' allocated ones.
func (s *machineService) List(ctx context.Context, req *apiv1.MachineServiceListRequest) (*apiv1.MachineServiceListResponse, error) {
	all, err := s.listMachines(ctx, "($1 = '' OR m.partition_id = $1) AND ($2 = '' OR m.project_id = $2) AND ($3 = '' OR m.size_id = $3)",
		req.GetPartitionId(), req.GetProjectId(), req.GetSizeId())
	if err != nil {
		return nil, err
	}
	out, err := visible(ctx, s.API, all, func(m *apiv1.Machine) string { return m.GetAllocation().GetProjectId() }, false)
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceListResponse{Machines: out}, nil
}

// Issues lists the issues of every machine (of a partition).
func (s *machineService) Issues(ctx context.Context, req *apiv1.MachineServiceIssuesRequest) (*apiv1.MachineServiceIssuesResponse, error) {
	all, err := s.listMachines(ctx, "($1 = '' OR m.partition_id = $1)", req.GetPartitionId())
	if err != nil {
		return nil, err
	}
	out := &apiv1.MachineServiceIssuesResponse{}
	for _, m := range all {
		out.Issues = append(out.Issues, m.GetIssues()...)
	}
	return out, nil
}

// eventPoll is how often a followed event log is read again. A follower
// costs one indexed read per interval; the log is written by other
// replicas too, so there is nothing local to wait on.
const eventPoll = 300 * time.Millisecond

// Events sends the machine's event log and, with follow, new events as
// they are committed.
func (s *machineService) Events(req *apiv1.MachineServiceEventsRequest, stream apiv1.MachineService_EventsServer) error {
	ctx := stream.Context()
	if _, err := s.readMachine(ctx, s.store.Pool(), req.GetId()); err != nil {
		return err
	}
	var after int64
	if l := req.GetLimit(); l > 0 {
		if err := s.store.Pool().QueryRow(ctx, `SELECT GREATEST(event_seq - $2, 0) FROM machines WHERE id = $1`, req.GetId(), int64(l)).Scan(&after); err != nil {
			return toStatus(err, "machine "+quote(req.GetId()))
		}
	}
	t := time.NewTicker(eventPoll)
	defer t.Stop()
	for {
		events, err := s.eventsAfter(ctx, req.GetId(), after)
		if err != nil {
			return err
		}
		if len(events) > 0 {
			m, err := s.readMachine(ctx, s.store.Pool(), req.GetId())
			if err != nil {
				return err
			}
			for _, e := range events {
				if err := stream.Send(&apiv1.MachineServiceEventsResponse{Event: e.event, Machine: m}); err != nil {
					return err
				}
				after = e.seq
			}
		}
		if !req.GetFollow() {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

type seqEvent struct {
	seq   int64
	event *apiv1.MachineEvent
}

func (a *API) eventsAfter(ctx context.Context, id string, after int64) ([]seqEvent, error) {
	rows, err := a.store.Pool().Query(ctx, `SELECT seq, at, event, message, state, error FROM machine_events
		WHERE machine_id = $1 AND seq > $2 ORDER BY seq LIMIT 1000`, id, after)
	if err != nil {
		return nil, toStatus(err, "events of machine "+quote(id))
	}
	defer rows.Close()
	var out []seqEvent
	for rows.Next() {
		var (
			e        seqEvent
			at       time.Time
			ev       apiv1.MachineEvent
			stateStr string
		)
		if err := rows.Scan(&e.seq, &at, &ev.Event, &ev.Message, &stateStr, &ev.Error); err != nil {
			return nil, toStatus(err, "events")
		}
		ev.Time, ev.State, ev.MachineId = timestamppb.New(at), provisioningStates[fsm.State(stateStr)], id
		e.event = &ev
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, toStatus(err, "events")
	}
	return out, nil
}

type switchService struct {
	*API
	apiv1.UnimplementedSwitchServiceServer
}

var switches = store.Table[*apiv1.Switch]{Name: "switches", New: func() *apiv1.Switch { return &apiv1.Switch{} }}

func (s *switchService) Get(ctx context.Context, req *apiv1.SwitchServiceGetRequest) (*apiv1.SwitchServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, switches, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.SwitchServiceGetResponse{Switch: out}, nil
}

func (s *switchService) List(ctx context.Context, req *apiv1.SwitchServiceListRequest) (*apiv1.SwitchServiceListResponse, error) {
	out, err := switches.List(ctx, s.store.Pool(), "($1 = '' OR partition_id = $1)", req.GetPartitionId())
	if err != nil {
		return nil, toStatus(err, "switches")
	}
	return &apiv1.SwitchServiceListResponse{Switches: out}, nil
}

// ResolveMac gives a MAC that two machines reported to the machine the
// admin names and clears its conflicts. The owner must be the MAC's
// current owner or a machine that reported it.
func (s *machineService) ResolveMac(ctx context.Context, req *apiv1.MachineServiceResolveMacRequest) (*apiv1.MachineServiceResolveMacResponse, error) {
	var v violations
	hw, err := net.ParseMAC(req.GetMac())
	if err != nil || len(hw) != 6 {
		v.add("mac", "not a 48-bit MAC address")
	}
	v.uuid("owner_id", req.GetOwnerId())
	if err := v.err(); err != nil {
		return nil, err
	}
	mac, owner := hw.String(), strings.ToLower(req.GetOwnerId())
	err = s.store.Tx(ctx, func(tx pgx.Tx) error {
		var current string
		err := tx.QueryRow(ctx, `SELECT machine_id FROM machine_nics WHERE mac = $1`, mac).Scan(&current)
		if errors.Is(err, pgx.ErrNoRows) {
			return status.Errorf(codes.NotFound, "no machine has NIC %s", mac)
		}
		if err != nil {
			return fmt.Errorf("owner of %s: %w", mac, err)
		}
		var reported bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM machine_mac_conflicts WHERE mac = $1 AND machine_id = $2)`, mac, owner).Scan(&reported); err != nil {
			return fmt.Errorf("conflicts of %s: %w", mac, err)
		}
		if owner != current && !reported {
			return status.Errorf(codes.FailedPrecondition, "machine %s neither owns nor reported NIC %s (owner: %s)", owner, mac, current)
		}
		if _, err := machines.GetForUpdate(ctx, tx, owner); err != nil {
			return err
		}
		if owner != current {
			if _, err := tx.Exec(ctx, `UPDATE machine_nics SET machine_id = $2 WHERE mac = $1`, mac, owner); err != nil {
				return fmt.Errorf("move nic %s: %w", mac, err)
			}
		}
		if _, err := tx.Exec(ctx, `DELETE FROM machine_mac_conflicts WHERE mac = $1`, mac); err != nil {
			return fmt.Errorf("clear conflicts of %s: %w", mac, err)
		}
		if err := logEvent(ctx, tx, owner, "Duplicate MAC resolved", fmt.Sprintf("NIC %s belongs to this machine (was %s), by token %s", mac, current, auth.PrincipalFrom(ctx).TokenID)); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "machine/"+owner, "")
	})
	if err != nil {
		return nil, toStatus(err, "machine "+quote(req.GetOwnerId()))
	}
	m, err := s.readMachine(ctx, s.store.Pool(), owner)
	if err != nil {
		return nil, err
	}
	return &apiv1.MachineServiceResolveMacResponse{Machine: m}, nil
}
