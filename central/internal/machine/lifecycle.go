package machine

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/fabric"
	"github.com/metalfleet/metalfleet/central/internal/fsm"
	"github.com/metalfleet/metalfleet/central/internal/network"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// lockOwned locks an allocated machine that is not locked and returns it
// with its agent.
func lockOwned(ctx context.Context, tx pgx.Tx, id string) (*apiv1.Machine, string, error) {
	m, err := Table.GetForUpdate(ctx, tx, id)
	if err != nil {
		return nil, "", err
	}
	var project, agentID *string
	var state string
	if err := tx.QueryRow(ctx, `SELECT project_id, agent_id, state FROM machines WHERE id = $1`, id).Scan(&project, &agentID, &state); err != nil {
		return nil, "", err
	}
	if project == nil {
		return nil, "", status.Errorf(codes.FailedPrecondition, "machine %s is not allocated", id)
	}
	if state == "locked" {
		return nil, "", status.Errorf(codes.FailedPrecondition, "machine %s is locked (%s): unlock it first", id, m.GetStateReason())
	}
	if agentID == nil {
		return m, "", nil
	}
	return m, *agentID, nil
}

// Free frees an allocated machine: its ephemeral IPs go back to their
// pools and static ones stay with the project (network), the installed
// system is rebooted into PXE (reboot intent) where the installer wipes
// the disks and waits again.
func (ms *Machines) Free(ctx context.Context, id string) error {
	return ms.st.Tx(ctx, func(tx pgx.Tx) error {
		m, agentID, err := lockOwned(ctx, tx, id)
		if err != nil {
			return err
		}
		project := m.GetAllocation().GetProjectId()
		if err := network.ReleaseMachineIPs(ctx, tx, m.GetId()); err != nil {
			return err
		}
		m.Allocation = nil
		if err := saveOne(ctx, tx, m, "", how{allocation: true}); err != nil {
			return err
		}
		if err := Record(ctx, tx, Event{Machine: m.GetId(), Type: string(fsm.MachineReclaim), Message: "freed by " + "token " + auth.PrincipalFrom(ctx).TokenID}); err != nil {
			return err
		}
		if err := ms.setDocument(ctx, tx, agentID, m.GetId(), func(md *agentv1.MachineDocument) {
			md.Allocation = nil
			md.RebootGeneration++
			md.WipeGeneration++
		}); err != nil {
			return err
		}
		// Its ports go back to the PXE VLAN before the installer runs.
		if err := fabric.DeriveForMachines(ctx, tx, ms.docs, []string{m.GetId()}); err != nil {
			return err
		}
		// Out of band too: PXE next, and a reset, so that a machine whose
		// system no longer answers its reboot intent is reclaimed all the same.
		if err := ms.bmcReboot(ctx, tx, m, agentv1.BmcPowerAction_BMC_POWER_ACTION_RESET); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "machine/"+m.GetId(), project)
	})
}

// Reinstall installs an image again under a new allocation id, keeping
// hostname, networks and IPs; only disks marked wipe_on_reinstall (the
// primary one) are wiped. imageID "" keeps the allocation's image; it
// must be one new machines may get (catalog.UsableImage).
func (ms *Machines) Reinstall(ctx context.Context, id, imageID string) error {
	return ms.st.Tx(ctx, func(tx pgx.Tx) error {
		m, agentID, err := lockOwned(ctx, tx, id)
		if err != nil {
			return err
		}
		if imageID == "" {
			imageID = m.GetAllocation().GetImageId()
		}
		img, err := catalog.UsableImage(ctx, tx, imageID)
		if err != nil {
			return err
		}
		alloc := m.GetAllocation()
		alloc.Id, alloc.ImageId, alloc.PhonedHomeAt = uuid.NewString(), img.GetId(), nil
		if err := saveOne(ctx, tx, m, "", how{allocation: true}); err != nil {
			return err
		}
		if err := Record(ctx, tx, Event{Machine: m.GetId(), Type: "Reinstall", Message: "image " + img.GetId() + " requested by " + "token " + auth.PrincipalFrom(ctx).TokenID}); err != nil {
			return err
		}
		if err := ms.setDocument(ctx, tx, agentID, m.GetId(), func(md *agentv1.MachineDocument) {
			if md.Allocation == nil {
				return
			}
			md.Allocation.Id = alloc.GetId()
			md.Allocation.Image = &agentv1.ImageRef{Id: img.GetId(), Os: img.GetOs(), Version: img.GetVersion(), Url: img.GetUrl(), Sha256: img.GetSha256()}
			md.Allocation.Reinstall = true
			md.RebootGeneration++
		}); err != nil {
			return err
		}
		// Its ports go back to the PXE VLAN before the installer runs.
		if err := fabric.DeriveForMachines(ctx, tx, ms.docs, []string{m.GetId()}); err != nil {
			return err
		}
		// PXE next and a power cycle through the BMC (a reinstall starts
		// from a cold machine, as issue 15 asks).
		if err := ms.bmcReboot(ctx, tx, m, agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "machine/"+m.GetId(), alloc.GetProjectId())
	})
}

// SetState locks, reserves or releases a machine (state is one of
// States, checked by the caller). A locked machine cannot be allocated,
// freed or reinstalled; a reserved one is allocated only by id.
func (ms *Machines) SetState(ctx context.Context, id string, state apiv1.MachineState, reason string) error {
	name := StateName(state)
	return ms.st.Tx(ctx, func(tx pgx.Tx) error {
		m, err := Table.GetForUpdate(ctx, tx, id)
		if err != nil {
			return err
		}
		m.State, m.StateReason = state, reason
		if name == "available" {
			m.StateReason = ""
		}
		if err := saveOne(ctx, tx, m, "", how{state: true}); err != nil {
			return err
		}
		if err := Record(ctx, tx, Event{Machine: m.GetId(), Type: "State", Message: strings.TrimSpace(name + " " + reason)}); err != nil {
			return err
		}
		var project *string
		if err := tx.QueryRow(ctx, `SELECT project_id FROM machines WHERE id = $1`, m.GetId()).Scan(&project); err != nil {
			return err
		}
		p := ""
		if project != nil {
			p = *project
		}
		return store.Audit(ctx, tx, "machine/"+m.GetId(), p)
	})
}

// ResolveMAC gives a MAC that two machines reported to owner and clears
// its conflicts. The owner must be the MAC's current owner or a machine
// that reported it. mac is in net.HardwareAddr's form.
func (ms *Machines) ResolveMAC(ctx context.Context, mac, owner string) error {
	return ms.st.Tx(ctx, func(tx pgx.Tx) error {
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
		if _, err := Table.GetForUpdate(ctx, tx, owner); err != nil {
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
		if err := Record(ctx, tx, Event{Machine: owner, Type: "Duplicate MAC resolved",
			Message: fmt.Sprintf("NIC %s belongs to this machine (was %s), by token %s", mac, current, auth.PrincipalFrom(ctx).TokenID)}); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "machine/"+owner, "")
	})
}
