package machine

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/fsm"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Candidate is a machine an allocation has locked and is about to take.
type Candidate struct {
	Machine *apiv1.Machine
	// Agent is the id of the machine's installer agent.
	Agent string
}

// Rule tells whether a candidate may be allocated; its error says why
// not. Rules are consulted for every machine any allocation takes — a
// waiting machine picked for one call or for a batch of calls, and a
// machine named by id — so a new allocation rule is added here, once.
type Rule func(ctx context.Context, tx pgx.Tx, c Candidate) error

// builtinRules are the rules every allocation honours.
func builtinRules() []Rule { return []Rule{dualAttached} }

// allocatable runs the rules on c.
func (ms *Machines) allocatable(ctx context.Context, tx pgx.Tx, c Candidate) error {
	for _, r := range ms.rules {
		if err := r(ctx, tx, c); err != nil {
			return err
		}
	}
	return nil
}

// pick locks up to n waiting, alive, available, unowned machines of the
// size in the partition that the rules accept. Machines go round-robin
// over racks, the racks where the project has the fewest machines first,
// at random within a rack, so that a project spreads across racks. SKIP
// LOCKED lets concurrent allocations pass each other instead of queueing
// on one row; the outer condition is checked again on the locked row
// (written so that it cannot steer the planner to a quadratic join while
// statistics are stale), so a machine another transaction allocated
// meanwhile is never taken. Only the best ranked candidates are looked
// at, with room for the ones other allocations hold; when that is not
// enough, all of them.
func (ms *Machines) pick(ctx context.Context, tx pgx.Tx, partition, size, project string, n int) ([]Candidate, error) {
	aliveSince := time.Now().Add(-ms.aliveWithin)
	out, err := pickFrom(ctx, tx, partition, size, project, aliveSince, n, n+pickSlack)
	if err == nil && len(out) < n {
		out, err = pickFrom(ctx, tx, partition, size, project, aliveSince, n, math.MaxInt32)
	}
	if err != nil {
		return nil, err
	}
	kept := out[:0]
	for _, c := range out {
		if ms.allocatable(ctx, tx, c) == nil {
			kept = append(kept, c)
		}
	}
	return kept, nil
}

// pickSlack is how many more candidates than wanted are ranked: enough to
// step over the machines concurrent allocations have locked.
const pickSlack = 256

func pickFrom(ctx context.Context, tx pgx.Tx, partition, size, project string, aliveSince time.Time, n, candidates int) ([]Candidate, error) {
	// Both CTEs are materialized: a handful of racks and the ranked
	// candidates, computed once whatever join the planner picks.
	rows, err := tx.Query(ctx, `WITH spread AS MATERIALIZED (
			SELECT rack, count(*) AS n FROM machines WHERE project_id = $3 AND partition_id = $1 GROUP BY rack
		), ranked AS MATERIALIZED (
			SELECT c.id, COALESCE(s.n, 0) + row_number() OVER (PARTITION BY c.rack ORDER BY random()) AS k
			FROM machines c
			JOIN agents a ON a.id = c.agent_id
			LEFT JOIN spread s ON s.rack = c.rack
			WHERE c.partition_id = $1 AND c.size_id = $2 AND c.project_id IS NULL AND c.state = 'available'
				AND c.provisioning = 'Waiting' AND a.last_contact > $4
			ORDER BY k
			LIMIT $6)
		SELECT m.agent_id, m.spec, m.generation, m.created_at, m.updated_at
		FROM ranked r JOIN machines m ON m.id = r.id
		WHERE (m.project_id, m.state, m.provisioning) IS NOT DISTINCT FROM (NULL, 'available', 'Waiting')
		ORDER BY r.k, random()
		LIMIT $5
		FOR UPDATE OF m SKIP LOCKED`, partition, size, project, aliveSince, n, candidates)
	if err != nil {
		return nil, fmt.Errorf("pick machines: %w", err)
	}
	defer rows.Close()
	var out []Candidate
	for rows.Next() {
		var (
			c                Candidate
			agentID          *string
			spec             []byte
			gen              int64
			created, updated time.Time
		)
		if err := rows.Scan(&agentID, &spec, &gen, &created, &updated); err != nil {
			return nil, fmt.Errorf("pick machines: %w", err)
		}
		c.Machine = &apiv1.Machine{}
		if err := store.DecodeSpec(spec, c.Machine); err != nil {
			return nil, fmt.Errorf("decode machine: %w", err)
		}
		c.Machine.Meta = meta(gen, created, updated)
		if agentID != nil {
			c.Agent = *agentID
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("pick machines: %w", err)
	}
	return out, nil
}

// pickGiven locks the machine the caller named (of size, when set) and
// checks it can be had.
func (ms *Machines) pickGiven(ctx context.Context, tx pgx.Tx, id, sizeID string) (Candidate, error) {
	var (
		state, prov   string
		size, agentID *string
		project       *string
		contact       *time.Time
	)
	err := tx.QueryRow(ctx, `SELECT m.id, m.state, m.provisioning, m.size_id, m.project_id, m.agent_id, a.last_contact
		FROM machines m LEFT JOIN agents a ON a.id = m.agent_id WHERE m.id = $1 FOR UPDATE OF m`, strings.ToLower(id)).
		Scan(&id, &state, &prov, &size, &project, &agentID, &contact)
	if errors.Is(err, pgx.ErrNoRows) {
		return Candidate{}, status.Errorf(codes.NotFound, "machine %s not found", auth.Quote(id))
	}
	if err != nil {
		return Candidate{}, fmt.Errorf("read machine: %w", err)
	}
	switch {
	case project != nil:
		return Candidate{}, status.Errorf(codes.FailedPrecondition, "machine %s is already allocated", id)
	case state == "locked":
		return Candidate{}, status.Errorf(codes.FailedPrecondition, "machine %s is locked", id)
	case prov != string(fsm.Waiting):
		return Candidate{}, status.Errorf(codes.FailedPrecondition, "machine %s is %q, not Waiting", id, prov)
	case size == nil:
		return Candidate{}, status.Errorf(codes.FailedPrecondition, "machine %s matches no size", id)
	case sizeID != "" && *size != sizeID:
		return Candidate{}, status.Errorf(codes.FailedPrecondition, "machine %s is of size %s, not %s", id, auth.Quote(*size), auth.Quote(sizeID))
	case agentID == nil || contact == nil || contact.Before(time.Now().Add(-ms.aliveWithin)):
		return Candidate{}, status.Errorf(codes.FailedPrecondition, "machine %s is not alive", id)
	}
	m, err := Table.Get(ctx, tx, id)
	if err != nil {
		return Candidate{}, err
	}
	c := Candidate{Machine: m, Agent: *agentID}
	if err := ms.allocatable(ctx, tx, c); err != nil {
		return Candidate{}, status.Errorf(codes.FailedPrecondition, "machine %s cannot be allocated: %v", id, err)
	}
	return c, nil
}

// allocation is one machine's allocation for give.
type allocation struct {
	Candidate
	alloc *apiv1.MachineAllocation
	// labels, when not nil, replace the machine's labels.
	labels map[string]string
	// doc is what the machine's installer gets to install.
	doc *agentv1.MachineAllocation
	// call is the API call that asked for it, for the audit row.
	call *auth.Call
}

// give gives the candidates, locked by pick or pickGiven, to the
// project: the machine rows, their "Allocated" events, their installers'
// documents and the audit rows, each in one statement whether it is one
// allocation or a batch of them. It fails when a machine was allocated
// meanwhile.
func (ms *Machines) give(ctx context.Context, tx pgx.Tx, project string, as []allocation) error {
	rows := make([]saved, len(as))
	evs := make([]Event, len(as))
	audits := make([]store.AuditEntry, len(as))
	docs := map[string]*agentv1.MachineAllocation{}
	machineOf := map[string]string{}
	for i, a := range as {
		m := a.Machine
		m.Allocation = a.alloc
		if a.labels != nil {
			m.Labels = a.labels
		}
		rows[i] = saved{m: m}
		evs[i] = Event{Machine: m.GetId(), Type: "Allocated", Message: AllocatedMessage(a.alloc)}
		audits[i] = store.AuditEntry{Call: a.call, Target: "machine/" + m.GetId()}
		if a.Agent != "" {
			docs[a.Agent], machineOf[a.Agent] = a.doc, m.GetId()
		}
	}
	n, err := save(ctx, tx, rows, how{unallocated: true, allocation: true})
	if err != nil {
		return fmt.Errorf("allocate machines: %w", err)
	}
	if n != int64(len(as)) {
		return fmt.Errorf("allocate machines: %d of %d rows were free", n, len(as))
	}
	if err := Record(ctx, tx, evs...); err != nil {
		return err
	}
	if err := ms.setDocuments(ctx, tx, machineOf, func(agent string, md *agentv1.MachineDocument) { md.Allocation = docs[agent] }); err != nil {
		return err
	}
	return store.AuditMany(ctx, tx, project, audits)
}

// AllocatedMessage is the "Allocated" event's message.
func AllocatedMessage(alloc *apiv1.MachineAllocation) string {
	return fmt.Sprintf("to project %s as %s", alloc.GetProjectId(), alloc.GetHostname())
}
