// Package bmc is central's side of out-of-band control (docs/bmc.md): the
// only writer of partition_bmc, the partitions' BMC credentials, static
// BMCs and stuck-machine policy, and the author of the desired document of every metal-bmc agent
// (kind bmc), derived in the transaction of the change that causes it.
// The callers validate requests and map errors.
package bmc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Docs is what this package needs of the fleet: the metal-bmc agents'
// desired documents, changed in the caller's transaction.
type Docs interface {
	ChangeMany(ctx context.Context, tx pgx.Tx, ids []string, change func(id string, d *agentv1.Desired) (bool, error)) error
}

// endpoint is a static BMC as stored (JSON in partition_bmc.static_bmcs).
type endpoint struct {
	Address string `json:"address"`
	IPMI    bool   `json:"ipmi,omitempty"`
}

// settings is a partition's row, password included: it never leaves this
// package but in a metal-bmc document.
type settings struct {
	partition, user, password string
	static                    []endpoint
	leaseCIDRs                []string
	pollSeconds               int32
	updated                   time.Time
	stuck                     StuckPolicy
}

// DefaultStuckMaxCycles is how many power cycles a stuck episode gets
// when the partition says nothing else: enough to ride out a BMC or a
// boot that failed once or twice, few enough that a broken machine is
// handed to a person within an hour or so.
const DefaultStuckMaxCycles = 3

// StuckPolicy is what a partition says about its stuck machines
// (docs/bmc.md, "Stuck machines").
type StuckPolicy struct {
	// Cycle: central power-cycles machines stuck past their state's
	// timeout through their BMC.
	Cycle bool
	// MaxCycles is how many cycles one stuck episode gets.
	MaxCycles int
}

// defaultStuck is the policy of a partition without settings, as the
// columns' defaults in partition_bmc are.
func defaultStuck() StuckPolicy { return StuckPolicy{Cycle: true, MaxCycles: DefaultStuckMaxCycles} }

// Stuck reads partition's stuck policy in q.
func Stuck(ctx context.Context, q store.Querier, partition string) (StuckPolicy, error) {
	s, err := read(ctx, q, partition, false)
	if err != nil {
		return StuckPolicy{}, err
	}
	return s.stuck, nil
}

// read reads partition's settings; a partition without a row has the
// zero settings (no credentials, leases only).
func read(ctx context.Context, q store.Querier, partition string, lock bool) (settings, error) {
	s := settings{partition: partition, stuck: defaultStuck()}
	sql := `SELECT bmc_user, bmc_password, static_bmcs, lease_cidrs, poll_interval, updated_at, stuck_cycle, stuck_max_cycles
		FROM partition_bmc WHERE partition_id = $1`
	if lock {
		sql += ` FOR UPDATE`
	}
	var static []byte
	err := q.QueryRow(ctx, sql, partition).Scan(&s.user, &s.password, &static, &s.leaseCIDRs, &s.pollSeconds, &s.updated,
		&s.stuck.Cycle, &s.stuck.MaxCycles)
	if errors.Is(err, pgx.ErrNoRows) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read bmc settings of partition %s: %w", partition, err)
	}
	if err := json.Unmarshal(static, &s.static); err != nil {
		return s, fmt.Errorf("decode static bmcs of partition %s: %w", partition, err)
	}
	return s, nil
}

// api is s as the API shows it: the password never, only whether one is set.
func (s settings) api() *apiv1.PartitionBMC {
	out := &apiv1.PartitionBMC{
		PartitionId: s.partition, User: s.user, PasswordSet: s.password != "",
		LeaseCidrs: s.leaseCIDRs, PollIntervalSeconds: uint32(s.pollSeconds),
		StuckCycleDisabled: !s.stuck.Cycle, StuckMaxCycles: uint32(s.stuck.MaxCycles),
	}
	for _, e := range s.static {
		out.StaticBmcs = append(out.StaticBmcs, &apiv1.PartitionBMCEndpoint{Address: e.Address, Ipmi: e.IPMI})
	}
	if !s.updated.IsZero() {
		out.UpdatedAt = timestamppb.New(s.updated)
	}
	return out
}

// Get reads partition's BMC settings without the password. An unknown
// partition is the catalogue's not-found error on field "partition_id".
func Get(ctx context.Context, q store.Querier, partition string) (*apiv1.PartitionBMC, error) {
	if err := catalog.PartitionExists(ctx, q, "partition_id", partition); err != nil {
		return nil, err
	}
	s, err := read(ctx, q, partition, false)
	if err != nil {
		return nil, err
	}
	return s.api(), nil
}

// Set replaces the BMC settings of in's partition (an empty password
// keeps the stored one), derives the documents of the partition's
// metal-bmc agents and writes the audit row, in one transaction. It
// returns the settings without the password. The caller has checked in.
func Set(ctx context.Context, st *store.Store, docs Docs, in *apiv1.PartitionBMC) (*apiv1.PartitionBMC, error) {
	var out *apiv1.PartitionBMC
	err := st.Tx(ctx, func(tx pgx.Tx) error {
		partition := in.GetPartitionId()
		if err := catalog.PartitionExists(ctx, tx, "settings.partition_id", partition); err != nil {
			return err
		}
		old, err := read(ctx, tx, partition, true)
		if err != nil {
			return err
		}
		password := in.GetPassword()
		if password == "" {
			password = old.password
		}
		static := make([]endpoint, 0, len(in.GetStaticBmcs()))
		for _, e := range in.GetStaticBmcs() {
			static = append(static, endpoint{Address: e.GetAddress(), IPMI: e.GetIpmi()})
		}
		js, err := json.Marshal(static)
		if err != nil {
			return fmt.Errorf("encode static bmcs: %w", err)
		}
		cidrs := in.GetLeaseCidrs()
		if cidrs == nil {
			cidrs = []string{}
		}
		maxCycles := int32(in.GetStuckMaxCycles())
		if maxCycles == 0 {
			maxCycles = DefaultStuckMaxCycles
		}
		if _, err := tx.Exec(ctx, `INSERT INTO partition_bmc (partition_id, bmc_user, bmc_password, static_bmcs, lease_cidrs, poll_interval,
				stuck_cycle, stuck_max_cycles, updated_at)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now())
			ON CONFLICT (partition_id) DO UPDATE SET bmc_user = excluded.bmc_user, bmc_password = excluded.bmc_password,
				static_bmcs = excluded.static_bmcs, lease_cidrs = excluded.lease_cidrs, poll_interval = excluded.poll_interval,
				stuck_cycle = excluded.stuck_cycle, stuck_max_cycles = excluded.stuck_max_cycles, updated_at = excluded.updated_at`,
			partition, in.GetUser(), password, js, cidrs, int32(in.GetPollIntervalSeconds()), !in.GetStuckCycleDisabled(), maxCycles); err != nil {
			return fmt.Errorf("store bmc settings of partition %s: %w", partition, err)
		}
		if err := Derive(ctx, tx, docs, partition); err != nil {
			return err
		}
		s, err := read(ctx, tx, partition, false)
		if err != nil {
			return err
		}
		out = s.api()
		return store.Audit(ctx, tx, "partition-bmc/"+partition, "")
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// Document is the desired bmc document of partition's metal-bmc, read in q.
func Document(ctx context.Context, q store.Querier, partition string) (*agentv1.BmcDocument, error) {
	s, err := read(ctx, q, partition, false)
	if err != nil {
		return nil, err
	}
	doc := &agentv1.BmcDocument{PartitionId: partition, LeaseCidrs: s.leaseCIDRs}
	if s.user != "" || s.password != "" {
		doc.Credentials = &agentv1.BmcCredentials{User: s.user, Password: s.password}
	}
	for _, e := range s.static {
		p := agentv1.BmcProtocol_BMC_PROTOCOL_REDFISH
		if e.IPMI {
			p = agentv1.BmcProtocol_BMC_PROTOCOL_IPMI
		}
		doc.StaticBmcs = append(doc.StaticBmcs, &agentv1.BmcEndpoint{Address: e.Address, Protocol: p})
	}
	if doc.Machines, err = intents(ctx, q, partition); err != nil {
		return nil, err
	}
	if s.pollSeconds > 0 {
		doc.PollInterval = durationpb.New(time.Duration(s.pollSeconds) * time.Second)
	}
	return doc, nil
}

// Derive computes the bmc document of partition and hands it to every
// metal-bmc agent of the partition, in tx; an agent whose document is
// already that one is left alone (its revision does not grow).
func Derive(ctx context.Context, tx pgx.Tx, docs Docs, partition string) error {
	rows, err := tx.Query(ctx, `SELECT id FROM agents WHERE kind = 'bmc' AND partition_id = $1 ORDER BY id`, partition)
	if err != nil {
		return fmt.Errorf("bmc agents of partition %s: %w", partition, err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("bmc agents of partition %s: %w", partition, err)
	}
	return DeriveFor(ctx, tx, docs, partition, ids)
}

// DeriveFor is Derive for the metal-bmc agents ids of partition alone: an
// enrolment derives the new agent's document, not every agent's again
// (which made enrolling n agents cost n² document reads).
func DeriveFor(ctx context.Context, tx pgx.Tx, docs Docs, partition string, ids []string) error {
	if len(ids) == 0 || docs == nil {
		return nil
	}
	doc, err := Document(ctx, tx, partition)
	if err != nil {
		return err
	}
	if err := docs.ChangeMany(ctx, tx, ids, func(_ string, d *agentv1.Desired) (bool, error) {
		if proto.Equal(d.GetBmc(), doc) {
			return false, nil
		}
		d.Bmc = proto.Clone(doc).(*agentv1.BmcDocument)
		return true, nil
	}); err != nil {
		return fmt.Errorf("bmc documents of partition %s: %w", partition, err)
	}
	return nil
}
