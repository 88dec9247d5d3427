package bmc

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/metalfleet/metalfleet/central/internal/field"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Bounds of what a metal-bmc may report; its own document bounds are the
// same (docs/bmc.md).
const (
	maxFacts   = 10000
	maxText    = 256
	maxMessage = 4096
	// maxAliases: a GUID has three byte orders, two besides the reported.
	maxAliases = 2
)

// Events records machine events (machine.Record), in the caller's
// transaction, for machines that exist; bmc does not write machine_events.
type Events func(ctx context.Context, tx pgx.Tx, machine, event, message string) error

// Report stores what metal-bmc agentID of partition reported, in tx, the
// transaction that stores the report: each BMC's facts replace the row of
// the machine UUID it returned (a BMC never read yet has none and is
// skipped); BMCs this agent no longer reports are forgotten, as metal-bmc
// forgets them. The intent results are kept with the machine's intents
// (bmc_intents: results of machines central raised no intent for are
// ignored); a result not seen before (a new generation, or a pending one
// that finished) becomes a machine event through events, once.
// Bad facts are an InvalidArgument naming the field, and nothing is stored.
//
// A result that finished an intent also derives the partition's documents
// anew: the finished intent leaves them (intents), so that a metal-bmc that
// lost its journal does not run it again.
func Report(ctx context.Context, tx pgx.Tx, docs Docs, events Events, agentID, partition string, r *agentv1.Report) error {
	f := r.GetFacts().GetBmc()
	if f == nil {
		return nil
	}
	if partition == "" {
		return nil // an agent without a partition serves no BMCs
	}
	if err := validate(f); err != nil {
		return err
	}
	// Aliases are stored lower case: Adopt finds them in the JSON.
	for _, b := range f.GetBmcs() {
		for i, a := range b.GetMachineUuidAliases() {
			b.MachineUuidAliases[i] = strings.ToLower(a)
		}
	}
	key, err := keys(ctx, tx, f.GetBmcs())
	if err != nil {
		return err
	}
	// One row per machine: two BMCs answering for one machine (a BMC
	// reached twice, at a static and a leased address) keep the one that
	// answers.
	facts := map[string]*agentv1.BmcFact{}
	for _, b := range f.GetBmcs() {
		id := key(b)
		if id == "" {
			continue
		}
		if old, ok := facts[id]; !ok || (!old.GetReachable() && b.GetReachable()) {
			facts[id] = b
		}
	}
	ids := make([]string, 0, len(facts))
	for id := range facts {
		ids = append(ids, id)
	}
	slices.Sort(ids) // a fixed lock order against a concurrent report
	for _, id := range ids {
		fact, err := protojson.Marshal(facts[id])
		if err != nil {
			return fmt.Errorf("encode bmc fact: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO machine_bmcs (machine_uuid, partition_id, agent_id, reachable, fact, updated_at)
			VALUES ($1, $2, $3, $4, $5, now())
			ON CONFLICT (machine_uuid) DO UPDATE SET partition_id = excluded.partition_id, agent_id = excluded.agent_id,
				reachable = excluded.reachable, fact = excluded.fact, updated_at = excluded.updated_at`,
			id, partition, agentID, facts[id].GetReachable(), fact); err != nil {
			return fmt.Errorf("store bmc %s: %w", id, err)
		}
	}
	// A BMC no longer reported is forgotten. A row under an alias of a
	// reported BMC is not: a registration that adopted it (Adopt) may
	// have committed after keys read the machines, and this report just
	// stored the BMC under its reported UUID once more; that row, not the
	// adopted one, goes (below, or on the next report).
	aliases := []string{} // not nil: ANY(NULL) would keep every row
	for _, id := range ids {
		aliases = append(aliases, facts[id].GetMachineUuidAliases()...)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM machine_bmcs WHERE agent_id = $1 AND NOT (machine_uuid = ANY($2)) AND NOT (machine_uuid = ANY($3))`,
		agentID, ids, aliases); err != nil {
		return fmt.Errorf("forget bmcs: %w", err)
	}
	if len(aliases) > 0 {
		if _, err := tx.Exec(ctx, `DELETE FROM machine_bmcs b WHERE b.agent_id = $1 AND b.machine_uuid = ANY($2)
			AND EXISTS (SELECT 1 FROM machine_bmcs x WHERE x.agent_id = $1 AND x.machine_uuid <> b.machine_uuid
				AND b.fact->'machineUuidAliases' ? x.machine_uuid
				AND EXISTS (SELECT 1 FROM machines m WHERE m.id = x.machine_uuid))`, agentID, ids); err != nil {
			return fmt.Errorf("forget bmcs stored twice: %w", err)
		}
	}
	machines := slices.Clone(f.GetMachines())
	slices.SortFunc(machines, func(a, b *agentv1.BmcMachineResults) int { return strings.Compare(a.GetMachineId(), b.GetMachineId()) })
	finished := false
	for _, m := range machines {
		fin, err := saveResults(ctx, tx, events, strings.ToLower(m.GetMachineId()), m.GetResults())
		if err != nil {
			return err
		}
		finished = finished || fin
	}
	if !finished {
		return nil
	}
	return Derive(ctx, tx, docs, partition)
}

// keys returns what names each BMC's row: the UUID it reports, unless
// that names no registered machine and one of its aliases (the same IPMI
// GUID in another byte order) does. Until the machine registers, its BMC
// goes by the UUID it reports; Adopt renames the row then.
func keys(ctx context.Context, q store.Querier, bmcs []*agentv1.BmcFact) (func(*agentv1.BmcFact) string, error) {
	var names []string
	for _, b := range bmcs {
		if len(b.GetMachineUuidAliases()) > 0 && b.GetMachineUuid() != "" {
			names = append(names, strings.ToLower(b.GetMachineUuid()))
			names = append(names, b.GetMachineUuidAliases()...)
		}
	}
	known := map[string]bool{}
	if len(names) > 0 {
		rows, err := q.Query(ctx, `SELECT id FROM machines WHERE id = ANY($1)`, names)
		if err != nil {
			return nil, fmt.Errorf("machines of bmc aliases: %w", err)
		}
		ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return nil, fmt.Errorf("machines of bmc aliases: %w", err)
		}
		for _, id := range ids {
			known[id] = true
		}
	}
	return func(b *agentv1.BmcFact) string {
		id := strings.ToLower(b.GetMachineUuid())
		if id == "" || known[id] {
			return id
		}
		for _, a := range b.GetMachineUuidAliases() {
			if known[a] {
				return a
			}
		}
		return id
	}, nil
}

// Adopt names the BMC row of machine id by id when the row goes by another
// byte order of the same GUID (keys): called in the transaction that
// registers the machine, so that the machine and its BMC are one at once,
// not only after metal-bmc's next report. Intents raised under the old
// name stay there (metal-bmc finds the BMC by either): moving them would
// run them again under the new name.
func Adopt(ctx context.Context, tx pgx.Tx, partition, id string) error {
	if _, err := tx.Exec(ctx, `UPDATE machine_bmcs SET machine_uuid = $2
		WHERE partition_id = $1 AND machine_uuid <> $2 AND fact->'machineUuidAliases' ? $2
		AND NOT EXISTS (SELECT 1 FROM machine_bmcs WHERE machine_uuid = $2)`, partition, id); err != nil {
		return fmt.Errorf("adopt the bmc of machine %s: %w", id, err)
	}
	return nil
}

// saveResults stores machine id's intent results with its intents and
// records the new ones as events; finished says one finished an intent.
// A machine central raised no intent for has no row, and its results are
// not central's (a document of an earlier database): ignored.
func saveResults(ctx context.Context, tx pgx.Tx, events Events, id string, rs []*agentv1.BmcIntentResult) (bool, error) {
	var before []byte
	err := tx.QueryRow(ctx, `SELECT results FROM bmc_intents WHERE machine_uuid = $1 FOR UPDATE`, id).Scan(&before)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read bmc results of %s: %w", id, err)
	}
	old, err := decodeResults(before)
	if err != nil {
		return false, err
	}
	finished, err := resultEvents(ctx, tx, events, id, old, rs)
	if err != nil {
		return false, err
	}
	js, err := encodeResults(rs)
	if err != nil {
		return false, err
	}
	if !bytes.Equal(js, before) {
		if _, err := tx.Exec(ctx, `UPDATE bmc_intents SET results = $2 WHERE machine_uuid = $1`, id, js); err != nil {
			return false, fmt.Errorf("store bmc results of %s: %w", id, err)
		}
	}
	return finished, nil
}

// resultEvents records an event per finished result that old (the stored
// results) did not hold, and says whether there was one.
func resultEvents(ctx context.Context, tx pgx.Tx, events Events, id string, old, rs []*agentv1.BmcIntentResult) (bool, error) {
	news := false
	for _, x := range rs {
		if x.GetOutcome() == agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_PENDING || x.GetOutcome() == agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_UNSPECIFIED ||
			x.GetGeneration() == 0 {
			continue
		}
		seen := slices.ContainsFunc(old, func(o *agentv1.BmcIntentResult) bool {
			return o.GetKind() == x.GetKind() && o.GetGeneration() == x.GetGeneration() && o.GetOutcome() == x.GetOutcome()
		})
		if seen {
			continue
		}
		news = true
		if events == nil {
			continue
		}
		msg := fmt.Sprintf("generation %d: %s", x.GetGeneration(), Word(x.GetOutcome().String(), "BMC_INTENT_OUTCOME_"))
		if x.GetMessage() != "" {
			msg += ": " + x.GetMessage()
		}
		if err := events(ctx, tx, id, "BMC "+Word(x.GetKind().String(), "BMC_INTENT_KIND_"), msg); err != nil {
			return false, err
		}
	}
	return news, nil
}

// Word is an enum value's name as a lower-case word without its prefix.
func Word(name, prefix string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(name, prefix)), "_", " ")
}

func decodeResults(raw []byte) ([]*agentv1.BmcIntentResult, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	var list []json.RawMessage
	if err := json.Unmarshal(raw, &list); err != nil {
		return nil, fmt.Errorf("decode bmc results: %w", err)
	}
	out := make([]*agentv1.BmcIntentResult, 0, len(list))
	for _, m := range list {
		x := &agentv1.BmcIntentResult{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(m, x); err != nil {
			return nil, fmt.Errorf("decode bmc result: %w", err)
		}
		out = append(out, x)
	}
	return out, nil
}

func encodeResults(rs []*agentv1.BmcIntentResult) ([]byte, error) {
	list := make([]json.RawMessage, 0, len(rs))
	for _, x := range rs {
		b, err := protojson.Marshal(x)
		if err != nil {
			return nil, fmt.Errorf("encode bmc result: %w", err)
		}
		list = append(list, b)
	}
	return json.Marshal(list)
}

// validate checks a metal-bmc's facts: everything in them comes from BMCs
// on the management network and is untrusted.
func validate(f *agentv1.BmcFacts) error {
	v := field.Violations{Max: 8}
	const name = "report.facts.bmc"
	if len(f.GetBmcs()) > maxFacts {
		v.Add(name+".bmcs", "at most %d", maxFacts)
	}
	for i, b := range f.GetBmcs() {
		if v.Full() {
			break
		}
		fi := field.Index(name+".bmcs", i)
		if id := b.GetMachineUuid(); id != "" {
			if _, err := uuid.Parse(id); err != nil || len(id) != 36 {
				v.Add(fi+".machine_uuid", "not a UUID")
			}
		}
		if len(b.GetMachineUuidAliases()) > maxAliases {
			v.Add(fi+".machine_uuid_aliases", "at most %d", maxAliases)
		}
		for j, a := range b.GetMachineUuidAliases() {
			if _, err := uuid.Parse(a); err != nil || len(a) != 36 {
				v.Add(field.Index(fi+".machine_uuid_aliases", j), "not a UUID")
			} else if b.GetMachineUuid() == "" {
				v.Add(field.Index(fi+".machine_uuid_aliases", j), "an alias of no machine_uuid")
			}
		}
		for _, t := range []struct{ f, s string }{{"address", b.GetAddress()}, {"source", b.GetSource()}, {"mac", b.GetMac()},
			{"vendor", b.GetVendor()}, {"model", b.GetModel()}, {"serial", b.GetSerial()},
			{"bmc_version", b.GetBmcVersion()}, {"bios_version", b.GetBiosVersion()}} {
			v.Text(fi+"."+t.f, t.s, maxText)
		}
		v.Text(fi+".last_error", b.GetLastError(), maxMessage)
		if len(b.GetPowerSupplies()) > 64 {
			v.Add(fi+".power_supplies", "at most 64")
		}
		for j, p := range b.GetPowerSupplies() {
			v.Text(field.Index(fi+".power_supplies", j)+".id", p.GetId(), maxText)
			v.Text(field.Index(fi+".power_supplies", j)+".health", p.GetHealth(), maxText)
		}
	}
	if len(f.GetMachines()) > maxFacts {
		v.Add(name+".machines", "at most %d", maxFacts)
	}
	seen := map[string]bool{}
	for i, m := range f.GetMachines() {
		if v.Full() {
			break
		}
		fi := field.Index(name+".machines", i)
		id := strings.ToLower(m.GetMachineId())
		if _, err := uuid.Parse(id); err != nil || len(id) != 36 {
			v.Add(fi+".machine_id", "not a UUID")
			continue
		}
		if seen[id] {
			v.Add(fi+".machine_id", "reported twice")
		}
		seen[id] = true
		if len(m.GetResults()) > 8 {
			v.Add(fi+".results", "at most 8")
		}
		for j, x := range m.GetResults() {
			v.Text(field.Index(fi+".results", j)+".message", x.GetMessage(), maxMessage)
		}
	}
	return v.Err("bmc facts")
}
