package machine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/bmc"
	"github.com/metalfleet/metalfleet/central/internal/fabric"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// SwitchWait bounds how long a free's reset or a reinstall's cycle waits
// for the machine's switches to apply the move of its ports back to the
// PXE VLAN. A leaf applies in seconds (FRR's reload included; 20–25 s
// on the lab's TCG router guests); one that does not apply in time (down,
// or failing on another port) must not keep the machine from being
// reclaimed.
const SwitchWait = time.Minute

// DefaultRebootInterval is how often Reboots looks for held power
// actions whose switches are done.
const DefaultRebootInterval = 250 * time.Millisecond

// bmcReboot raises the machine's BMC intents "boot PXE" (persistent: it
// undoes the disk set after the last install) and power, in tx
// (bmc.Raise: the partition's metal-bmc document changes with the free
// or reinstall). When the free or reinstall moved the machine's switch
// ports (a document derived in tx), the power action is held until the
// switches applied it (Reboots): a firmware that PXE-boots before its
// port is back in the PXE VLAN finds no DHCP server and boots the disk.
func (ms *Machines) bmcReboot(ctx context.Context, tx pgx.Tx, m *apiv1.Machine, power agentv1.BmcPowerAction) error {
	boot := bmc.Intent{Boot: &agentv1.BmcBootIntent{Device: agentv1.BmcBootDevice_BMC_BOOT_DEVICE_PXE, Persistent: true}}
	revs, err := fabric.Revisions(ctx, tx, m.GetId())
	if err != nil {
		return err
	}
	if len(revs) == 0 || m.GetPartitionId() == "" {
		boot.Power = &agentv1.BmcPowerIntent{Action: power}
		return ms.raiseBMC(ctx, tx, m.GetId(), m.GetPartitionId(), boot)
	}
	if err := ms.raiseBMC(ctx, tx, m.GetId(), m.GetPartitionId(), boot); err != nil {
		return err
	}
	after, err := json.Marshal(revs)
	if err != nil {
		return fmt.Errorf("switch revisions: %w", err)
	}
	_, err = tx.Exec(ctx, `UPDATE machines SET reboot_power = $2, reboot_after = $3, reboot_deadline = now() + $4 * INTERVAL '1 millisecond' WHERE id = $1`,
		m.GetId(), int16(power), after, SwitchWait.Milliseconds())
	if err != nil {
		return fmt.Errorf("hold the power action of machine %s: %w", m.GetId(), err)
	}
	return nil
}

// raiseBMC raises in for machine id in tx.
func (ms *Machines) raiseBMC(ctx context.Context, tx pgx.Tx, id, partition string, in bmc.Intent) error {
	var docs bmc.Docs
	if ms.docs != nil {
		docs = ms.docs
	}
	return raiseBMC(ctx, tx, docs, id, partition, in)
}

// raiseBMC raises in for machine id in tx. A machine without a partition
// has no metal-bmc, and one whose id is not a UUID has no BMC that could
// report it: neither gets an intent.
func raiseBMC(ctx context.Context, tx pgx.Tx, docs bmc.Docs, id, partition string, in bmc.Intent) error {
	if partition == "" {
		return nil
	}
	_, err := bmc.Raise(ctx, tx, docs, id, partition, in)
	if errors.Is(err, bmc.ErrNotAddressable) {
		return nil
	}
	return err
}

// Reboots raises the power actions that frees and reinstalls hold until
// the machine's switches applied the move of its ports (bmcReboot): once
// every switch reported the revision applied, or SwitchWait passed.
// Every replica runs one; SKIP LOCKED keeps a machine to one of them,
// and clearing the hold in the raise's transaction raises it once.
type Reboots struct {
	st       *store.Store
	docs     bmc.Docs
	log      *slog.Logger
	interval time.Duration
}

// NewReboots returns the reconciler; docs receives the partitions'
// metal-bmc documents (nil: tests without a fleet), interval is how often
// Run looks (0: DefaultRebootInterval).
func NewReboots(st *store.Store, docs bmc.Docs, log *slog.Logger, interval time.Duration) *Reboots {
	if interval <= 0 {
		interval = DefaultRebootInterval
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Reboots{st: st, docs: docs, log: log, interval: interval}
}

// Run reconciles every interval until ctx ends.
func (r *Reboots) Run(ctx context.Context) {
	every(ctx, r.interval, r.log, "held reboots", func(ctx context.Context) error {
		_, err := r.Reconcile(ctx)
		return err
	})
}

// rebootBatch bounds the held actions one pass looks at.
const rebootBatch = 200

// Reconcile raises the held power actions that may go now, in one
// transaction, and returns their machines.
func (r *Reboots) Reconcile(ctx context.Context) ([]string, error) {
	var raised []string
	err := r.st.Tx(ctx, func(tx pgx.Tx) error {
		raised = raised[:0]
		rows, err := tx.Query(ctx, `SELECT id, partition_id, reboot_power, reboot_after, reboot_deadline <= now()
			FROM machines WHERE reboot_power <> 0 ORDER BY reboot_deadline LIMIT $1 FOR UPDATE SKIP LOCKED`, rebootBatch)
		if err != nil {
			return fmt.Errorf("held reboots: %w", err)
		}
		type held struct {
			id, partition string
			power         agentv1.BmcPowerAction
			after         map[string]int64
			late          bool
		}
		var hs []held
		for rows.Next() {
			var h held
			var partition *string
			var power int16
			var after []byte
			if err := rows.Scan(&h.id, &partition, &power, &after, &h.late); err != nil {
				rows.Close()
				return fmt.Errorf("held reboots: %w", err)
			}
			if partition != nil {
				h.partition = *partition
			}
			h.power = agentv1.BmcPowerAction(power)
			if err := json.Unmarshal(after, &h.after); err != nil {
				r.log.Warn("held reboot: unreadable switch revisions; raising it", "machine", h.id, "err", err)
				h.late = true
			}
			hs = append(hs, h)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("held reboots: %w", err)
		}
		for _, h := range hs {
			waiting, err := fabric.Unsettled(ctx, tx, h.after)
			if err != nil {
				return err
			}
			if len(waiting) > 0 && !h.late {
				continue
			}
			if len(waiting) > 0 {
				r.log.Warn("switches did not apply the machine's ports in time; powering it all the same",
					"machine", h.id, "switches", waiting, "waited", SwitchWait, "power", h.power.String())
			} else {
				r.log.Info("machine's switch ports applied; power", "machine", h.id, "power", h.power.String())
			}
			if err := raiseBMC(ctx, tx, r.docs, h.id, h.partition, bmc.Intent{Power: &agentv1.BmcPowerIntent{Action: h.power}}); err != nil {
				return fmt.Errorf("machine %s: %w", h.id, err)
			}
			if _, err := tx.Exec(ctx, `UPDATE machines SET reboot_power = 0, reboot_after = NULL, reboot_deadline = NULL WHERE id = $1`, h.id); err != nil {
				return fmt.Errorf("machine %s: %w", h.id, err)
			}
			raised = append(raised, h.id)
		}
		return nil
	})
	return raised, err
}
