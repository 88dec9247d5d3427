// Package machine is the machine aggregate: the only writer of machines,
// machine_nics, machine_mac_conflicts and machine_events, and the one
// door to a machine. As the fleet's Domain it registers what installers
// report (checking their facts, matching the size in the catalog), runs
// lifecycle events through fsm and tells PXE services what a MAC boots;
// it allocates machines (one code path for one call and for a batch of
// them: the image and layout from the catalog, the addresses from
// network), frees, reinstalls, locks and reserves them.
//
// A machine row is written through one door (save): the JSONB spec and
// the columns that mirror it (project, allocation, state, size, rack)
// change together, derived from the spec. Events go through Record.
// The agents' desired documents are reached only through Docs, boot
// tokens only through BootTokens. Refusals are gRPC statuses; store
// errors come back as they are, for the caller to map.
package machine

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Table reads machines as stored; only this package writes them.
var Table = store.Table[*apiv1.Machine]{Name: "machines", New: func() *apiv1.Machine { return &apiv1.Machine{} }}

// Docs is what machine needs of the fleet: the agents' desired documents
// and their liveliness.
type Docs interface {
	ChangeMany(ctx context.Context, tx pgx.Tx, ids []string, change func(id string, d *agentv1.Desired) (bool, error)) error
	Liveliness(last *time.Time) apiv1.Liveliness
}

// BootTokens is what Boot needs of the fleet: the one-time token an
// installer that boots exchanges for its credential.
type BootTokens interface {
	MintBootToken(ctx context.Context, q store.Querier, t fleet.BootToken) (fleet.MintedBootToken, error)
}

// Machines is the machine aggregate over the store. One serves a whole
// process: its batches combine the process's concurrent allocations.
type Machines struct {
	st          *store.Store
	log         *slog.Logger
	docs        Docs
	aliveWithin time.Duration
	rules       []Rule
	allocs      *allocBatches
	// tokens, trust and tokenTTL answer PXE boots (Boot).
	tokens   BootTokens
	trust    catalog.Trust
	tokenTTL time.Duration
}

// Option configures New.
type Option func(*Machines)

// WithDocs lets machine changes reach the agents' documents; without it
// (tests without a fleet) documents are left alone.
func WithDocs(d Docs) Option { return func(m *Machines) { m.docs = d } }

// WithRule adds an allocation rule after the built-in ones.
func WithRule(r Rule) Option { return func(m *Machines) { m.rules = append(m.rules, r) } }

// WithLog lets log hear of allocation batches that failed and left their
// calls to run one by one; without it that is discarded.
func WithLog(log *slog.Logger) Option { return func(m *Machines) { m.log = log } }

// WithBoot lets Boot answer PXE services: the installer it boots gets a
// boot token from tokens, valid for ttl, and the kernel command line that
// tells it to find and trust central by trust.
func WithBoot(tokens BootTokens, trust catalog.Trust, ttl time.Duration) Option {
	return func(m *Machines) { m.tokens, m.trust, m.tokenTTL = tokens, trust, ttl }
}

// New returns the machine aggregate. aliveWithin is how recent a
// machine's last contact must be for it to be allocated.
func New(st *store.Store, aliveWithin time.Duration, opts ...Option) *Machines {
	m := &Machines{st: st, aliveWithin: aliveWithin, rules: builtinRules()}
	for _, o := range opts {
		o(m)
	}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	m.allocs = store.NewCombiner(allocBatchSize, allocBatchRunning, m.runAllocBatch)
	return m
}

// States maps the state column to the API's machine state.
var States = map[string]apiv1.MachineState{
	"available": apiv1.MachineState_MACHINE_STATE_AVAILABLE,
	"reserved":  apiv1.MachineState_MACHINE_STATE_RESERVED,
	"locked":    apiv1.MachineState_MACHINE_STATE_LOCKED,
}

// StateName is the state column's value of s, "" when s is none of States.
func StateName(s apiv1.MachineState) string {
	for n, st := range States {
		if st == s {
			return n
		}
	}
	return ""
}

// saved is one machine for save: its new spec and what is not in it.
type saved struct {
	m *apiv1.Machine
	// agent, when set, becomes the machine's agent.
	agent string
}

// how tells save which rows to write and which of the columns that
// mirror the spec the change decides; the others keep their values.
type how struct {
	// unallocated writes only machines without a project.
	unallocated bool
	// allocation writes project and allocation from the spec's
	// allocation; the machine is no longer installed.
	allocation bool
	// state writes the state from the spec.
	state bool
	// hardware writes size and rack from the spec: registration decides
	// them, nothing else does.
	hardware bool
}

// save is the one door to machine rows: it writes each machine's spec
// together with the columns that mirror it (project and allocation,
// state, size and rack, as h says), derived from the spec, in one
// statement for one machine or many. It returns how many rows were
// written. The rows must be locked.
func save(ctx context.Context, tx pgx.Tx, ms []saved, h how) (int64, error) {
	n := len(ms)
	ids, specs, projects, allocs, states, sizes, racks, agents := make([]string, n), make([]string, n), make([]string, n),
		make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	for i, s := range ms {
		spec, err := store.EncodeSpec(s.m)
		if err != nil {
			return 0, err
		}
		ids[i], specs[i], states[i], sizes[i], racks[i], agents[i] = s.m.GetId(), string(spec), StateName(s.m.GetState()), s.m.GetSizeId(), s.m.GetRack(), s.agent
		if a := s.m.GetAllocation(); a != nil {
			projects[i], allocs[i] = a.GetProjectId(), a.GetId()
		}
	}
	tag, err := tx.Exec(ctx, `UPDATE machines m SET spec = x.spec::JSONB,
			project_id = CASE WHEN $10 THEN NULLIF(x.project, '') ELSE m.project_id END,
			allocation_id = CASE WHEN $10 THEN NULLIF(x.alloc, '') ELSE m.allocation_id END,
			installed = m.installed AND NOT $10,
			state = CASE WHEN $11 THEN x.state ELSE m.state END,
			size_id = CASE WHEN $12 THEN NULLIF(x.size, '') ELSE m.size_id END,
			rack = CASE WHEN $12 THEN x.rack ELSE m.rack END,
			agent_id = COALESCE(NULLIF(x.agent, ''), m.agent_id), generation = m.generation + 1, updated_at = now()
		FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[], $7::TEXT[], $8::TEXT[])
			AS x (id, spec, project, alloc, state, size, rack, agent)
		WHERE m.id = x.id AND (NOT $9 OR m.project_id IS NULL)`, ids, specs, projects, allocs, states, sizes, racks, agents,
		h.unallocated, h.allocation, h.state, h.hardware)
	if err != nil {
		return 0, fmt.Errorf("store machines: %w", err)
	}
	return tag.RowsAffected(), nil
}

// saveOne is save of one machine that must be written.
func saveOne(ctx context.Context, tx pgx.Tx, m *apiv1.Machine, agent string, h how) error {
	n, err := save(ctx, tx, []saved{{m: m, agent: agent}}, h)
	if err != nil {
		return fmt.Errorf("machine %s: %w", m.GetId(), err)
	}
	if n != 1 {
		return fmt.Errorf("store machine %s: %w", m.GetId(), pgx.ErrNoRows)
	}
	return nil
}

// setDocuments is the one way machine writes its installers' documents:
// it edits the machine document of each agent in machineOf (agent →
// machine id) — one machine or a batch — and stores those that changed.
func (ms *Machines) setDocuments(ctx context.Context, tx pgx.Tx, machineOf map[string]string, edit func(agent string, md *agentv1.MachineDocument)) error {
	if ms.docs == nil {
		return nil
	}
	agents := make([]string, 0, len(machineOf))
	for a := range machineOf {
		if a != "" {
			agents = append(agents, a)
		}
	}
	if len(agents) == 0 {
		return nil
	}
	slices.Sort(agents)
	return ms.docs.ChangeMany(ctx, tx, agents, func(id string, d *agentv1.Desired) (bool, error) {
		md := &agentv1.MachineDocument{}
		if d.GetMachine() != nil {
			md = proto.Clone(d.GetMachine()).(*agentv1.MachineDocument)
		}
		md.MachineId = machineOf[id]
		edit(id, md)
		if proto.Equal(md, d.GetMachine()) {
			return false, nil
		}
		d.Machine = md
		return true, nil
	})
}

// setDocument is setDocuments of one machine.
func (ms *Machines) setDocument(ctx context.Context, tx pgx.Tx, agentID, machine string, edit func(*agentv1.MachineDocument)) error {
	return ms.setDocuments(ctx, tx, map[string]string{agentID: machine}, func(_ string, md *agentv1.MachineDocument) { edit(md) })
}

// dbNow is the transaction's time on the database's clock: the time the
// machine's events are stamped with, so that "events since the allocation"
// holds whatever the clocks of central's hosts say.
func dbNow(ctx context.Context, tx pgx.Tx) (time.Time, error) {
	var now time.Time
	if err := tx.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		return now, fmt.Errorf("read time: %w", err)
	}
	return now, nil
}

func meta(gen int64, created, updated time.Time) *apiv1.Meta {
	return &apiv1.Meta{CreatedAt: timestamppb.New(created), UpdatedAt: timestamppb.New(updated), Generation: uint64(gen)}
}
