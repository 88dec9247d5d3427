package bmc

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Intent is what to raise on a machine's BMC: each non-nil part gets the
// next generation of its kind (the generation given is ignored).
type Intent struct {
	Power    *agentv1.BmcPowerIntent
	Boot     *agentv1.BmcBootIntent
	Identify *agentv1.BmcIdentifyIntent
	Firmware *agentv1.BmcFirmwareIntent
}

// ErrNotAddressable: the machine's id is not a UUID, so no BMC can report
// it and metal-bmc's document could not carry it.
var ErrNotAddressable = errors.New("the machine's id is not a UUID: no BMC reports it")

// Raise raises in on machine id of partition in tx and derives the
// partition's metal-bmc documents, so that the intent and the change
// that causes it (a free, a reinstall, a person's call) commit together.
// It returns the machine's intents as they are now.
func Raise(ctx context.Context, tx pgx.Tx, docs Docs, id, partition string, in Intent) (*agentv1.BmcMachine, error) {
	if !addressable(id) {
		return nil, ErrNotAddressable
	}
	// The row exists before it is locked, so two first intents of one
	// machine queue on the lock instead of racing on the insert.
	if _, err := tx.Exec(ctx, `INSERT INTO bmc_intents (machine_uuid, partition_id) VALUES ($1, $2) ON CONFLICT (machine_uuid) DO NOTHING`, id, partition); err != nil {
		return nil, fmt.Errorf("bmc intents of machine %s: %w", id, err)
	}
	var raw []byte
	if err := tx.QueryRow(ctx, `SELECT intent FROM bmc_intents WHERE machine_uuid = $1 FOR UPDATE`, id).Scan(&raw); err != nil {
		return nil, fmt.Errorf("bmc intents of machine %s: %w", id, err)
	}
	m := &agentv1.BmcMachine{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, m); err != nil {
		return nil, fmt.Errorf("decode bmc intents of machine %s: %w", id, err)
	}
	m.MachineId = id
	if p := in.Power; p != nil {
		m.Power = &agentv1.BmcPowerIntent{Generation: m.GetPower().GetGeneration() + 1, Action: p.GetAction()}
	}
	if b := in.Boot; b != nil {
		m.Boot = &agentv1.BmcBootIntent{Generation: m.GetBoot().GetGeneration() + 1, Device: b.GetDevice(), Persistent: b.GetPersistent()}
	}
	if l := in.Identify; l != nil {
		m.Identify = &agentv1.BmcIdentifyIntent{Generation: m.GetIdentify().GetGeneration() + 1, On: l.GetOn()}
	}
	if f := in.Firmware; f != nil {
		m.Firmware = &agentv1.BmcFirmwareIntent{Generation: m.GetFirmware().GetGeneration() + 1, Component: f.GetComponent(), Url: f.GetUrl(), Sha256: f.GetSha256()}
	}
	js, err := protojson.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode bmc intents: %w", err)
	}
	// The partition follows the machine (its BMC may report it elsewhere
	// after a move); the generations stay.
	if _, err := tx.Exec(ctx, `UPDATE bmc_intents SET intent = $2, partition_id = $3, updated_at = now() WHERE machine_uuid = $1`, id, js, partition); err != nil {
		return nil, fmt.Errorf("store bmc intents of machine %s: %w", id, err)
	}
	if err := Derive(ctx, tx, docs, partition); err != nil {
		return nil, err
	}
	return m, nil
}

// addressable: id is a lower-case UUID, as BMCs report machines and
// metal-bmc's document requires.
func addressable(id string) bool {
	u, err := uuid.Parse(id)
	return err == nil && len(id) == 36 && u.String() == id
}

// RaiseFor is a person's intent on machine id: it finds the machine's
// partition (registered, or known from its BMC), raises in, and writes the
// audit row, in one transaction. An unknown machine is NotFound.
func RaiseFor(ctx context.Context, st *store.Store, docs Docs, id string, in Intent) (*agentv1.BmcMachine, error) {
	var out *agentv1.BmcMachine
	err := st.Tx(ctx, func(tx pgx.Tx) error {
		var partition, project string
		err := tx.QueryRow(ctx, `SELECT COALESCE(partition_id, ''), COALESCE(project_id, '') FROM machines WHERE id = $1
			UNION ALL SELECT partition_id, '' FROM machine_bmcs b WHERE b.machine_uuid = $1 AND NOT EXISTS (SELECT 1 FROM machines m WHERE m.id = $1)`, id).
			Scan(&partition, &project)
		if errors.Is(err, pgx.ErrNoRows) {
			return status.Errorf(codes.NotFound, "machine %q not found", id)
		}
		if err != nil {
			return fmt.Errorf("read machine %s: %w", id, err)
		}
		if !addressable(id) {
			return status.Errorf(codes.FailedPrecondition, "id: %v", ErrNotAddressable)
		}
		if partition == "" {
			return status.Errorf(codes.FailedPrecondition, "machine %s has no partition, so no metal-bmc serves it", id)
		}
		if out, err = Raise(ctx, tx, docs, id, partition, in); err != nil {
			if errors.Is(err, ErrNotAddressable) {
				return status.Errorf(codes.FailedPrecondition, "id: %v", err)
			}
			return err
		}
		return store.Audit(ctx, tx, "machine/"+id, project)
	})
	return out, err
}

// intents reads the intents of partition's machines, by id, without the
// ones metal-bmc reported finished: a metal-bmc that lost its journal (a
// new host, a lost disk) must not run them again, and nothing else would
// stop it (docs/bmc.md, "Central").
func intents(ctx context.Context, q store.Querier, partition string) ([]*agentv1.BmcMachine, error) {
	rows, err := q.Query(ctx, `SELECT intent, results FROM bmc_intents WHERE partition_id = $1 ORDER BY machine_uuid`, partition)
	if err != nil {
		return nil, fmt.Errorf("bmc intents of partition %s: %w", partition, err)
	}
	defer rows.Close()
	var out []*agentv1.BmcMachine
	for rows.Next() {
		var raw, results []byte
		if err := rows.Scan(&raw, &results); err != nil {
			return nil, fmt.Errorf("bmc intents of partition %s: %w", partition, err)
		}
		m := &agentv1.BmcMachine{}
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(raw, m); err != nil {
			return nil, fmt.Errorf("decode bmc intents: %w", err)
		}
		if strings.TrimSpace(m.GetMachineId()) == "" {
			continue // a row whose first Raise did not commit its intent
		}
		rs, err := decodeResults(results)
		if err != nil {
			return nil, err
		}
		if dropFinished(m, rs) {
			continue
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// dropFinished removes from m each intent whose generation metal-bmc
// reported finished (succeeded, failed or interrupted: none of them runs
// again) and says whether none is left.
func dropFinished(m *agentv1.BmcMachine, rs []*agentv1.BmcIntentResult) bool {
	done := func(kind agentv1.BmcIntentKind, gen uint64) bool {
		for _, x := range rs {
			if x.GetKind() == kind && x.GetGeneration() >= gen &&
				x.GetOutcome() != agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_PENDING && x.GetOutcome() != agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_UNSPECIFIED {
				return true
			}
		}
		return false
	}
	if done(agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER, m.GetPower().GetGeneration()) {
		m.Power = nil
	}
	if done(agentv1.BmcIntentKind_BMC_INTENT_KIND_BOOT, m.GetBoot().GetGeneration()) {
		m.Boot = nil
	}
	if done(agentv1.BmcIntentKind_BMC_INTENT_KIND_IDENTIFY, m.GetIdentify().GetGeneration()) {
		m.Identify = nil
	}
	if done(agentv1.BmcIntentKind_BMC_INTENT_KIND_FIRMWARE, m.GetFirmware().GetGeneration()) {
		m.Firmware = nil
	}
	return m.Power == nil && m.Boot == nil && m.Identify == nil && m.Firmware == nil
}
