package machine

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/field"
	"github.com/metalfleet/metalfleet/central/internal/fleet"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Boot implements fleet.Domain: what a MAC of the PXE service's partition
// boots. Installed machines boot their disk; everything else (unknown,
// waiting, freed, crashed, being reinstalled) boots the installer with a
// fresh one-time boot token of the partition (WithBoot).
func (ms *Machines) Boot(ctx context.Context, a fleet.Agent, req *agentv1.BootRequest) (*agentv1.BootResponse, error) {
	v := field.Violations{Clip: auth.ClipEcho, Quote: auth.Quote}
	hw, err := net.ParseMAC(req.GetMac())
	if err != nil || len(hw) != 6 {
		v.Add("mac", "not a 48-bit MAC address")
	}
	switch req.GetArch() {
	case "", "bios", "efi", "efi-http":
	default:
		v.Add("arch", "must be bios, efi or efi-http")
	}
	v.Text("address", req.GetAddress(), 64)
	if err := v.Err(""); err != nil {
		return nil, err
	}
	if ms.tokens == nil {
		return nil, status.Error(codes.Unimplemented, "this central mints no boot tokens")
	}
	resp := &agentv1.BootResponse{Action: agentv1.BootAction_BOOT_ACTION_INSTALLER}
	err = ms.st.Tx(ctx, func(tx pgx.Tx) error {
		id, partition, installed, found, err := bootOf(ctx, tx, hw.String())
		resp.MachineId = id
		switch {
		case err != nil:
			return err
		case !found:
		case partition != a.Partition:
			return status.Errorf(codes.PermissionDenied, "mac %s belongs to machine %s of partition %q", hw, resp.MachineId, partition)
		case installed:
			resp.Action = agentv1.BootAction_BOOT_ACTION_DISK
			return nil
		}
		part, err := catalog.Partitions.Get(ctx, tx, a.Partition)
		if err != nil {
			return fmt.Errorf("read partition %s: %w", a.Partition, err)
		}
		doc := catalog.PixieDocument(ms.trust, part)
		resp.KernelUrl, resp.InitramfsUrl, resp.Cmdline = doc.GetKernelUrl(), doc.GetInitramfsUrl(), doc.GetCmdline()
		// The token is good only for this MAC (and the machine that owns
		// it): whoever else asks for it cannot claim another machine.
		bt, err := ms.tokens.MintBootToken(ctx, tx, fleet.BootToken{Partition: a.Partition, MAC: hw.String(), Machine: resp.GetMachineId(),
			TTL: ms.tokenTTL, CreatedBy: "pixie/" + a.ID})
		if err != nil {
			return err
		}
		resp.BootToken, resp.BootTokenExpiresAt = bt.Secret, timestamppb.New(bt.ExpiresAt)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return resp, nil
}

// bootOf finds the machine that owns mac: its id and partition, and
// whether it is allocated and installed (it boots its disk). found is
// false for a MAC no machine has.
func bootOf(ctx context.Context, tx pgx.Tx, mac string) (id, partition string, installed, found bool, err error) {
	err = tx.QueryRow(ctx, `SELECT m.id, COALESCE(m.partition_id, ''), m.installed AND m.allocation_id IS NOT NULL
		FROM machine_nics n JOIN machines m ON m.id = n.machine_id WHERE n.mac = $1`, mac).
		Scan(&id, &partition, &installed)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", "", false, false, nil
	}
	if err != nil {
		return "", "", false, false, fmt.Errorf("find machine of %s: %w", mac, err)
	}
	return id, partition, installed, true, nil
}
