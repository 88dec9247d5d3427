package service

import (
	"context"
	"fmt"
	"net"
	"strings"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/fsm"
	"github.com/metalfleet/metalfleet/central/internal/machine"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Provisioning is the fleet's domain: what installers, installed systems
// and PXE services report becomes machines and their lifecycle
// (docs/machine-lifecycle.md). Attach it to the hub with Hub.Attach.
func (a *API) Provisioning() fleet.Domain { return &provisioner{API: a} }

type provisioner struct{ *API }

// Report implements fleet.Domain.
func (p *provisioner) Report(ctx context.Context, tx pgx.Tx, a fleet.Agent, r *agentv1.Report) error {
	switch a.Kind {
	case agentv1.Kind_KIND_INSTALLER:
		if f := r.GetFacts().GetMachine(); f != nil {
			if err := p.register(ctx, tx, a, f); err != nil {
				return err
			}
		}
		return machine.ReportEvents(ctx, tx, a, r.GetEvents(), nil)
	case agentv1.Kind_KIND_PHONEHOME:
		// An installed system knows only these two things about itself.
		return machine.ReportEvents(ctx, tx, a, r.GetEvents(), []fsm.State{fsm.PhonedHome, fsm.PlannedReboot})
	case agentv1.Kind_KIND_PIXIE:
		return machine.PXEEvents(ctx, tx, a, r.GetEvents())
	}
	return nil
}

// validateMachineFacts checks an installer's hardware report. Everything
// here comes from the machine and is untrusted.
func validateMachineFacts(identity string, f *agentv1.MachineFacts) error {
	const field = "report.facts.machine"
	var v violations
	if !strings.EqualFold(f.GetUuid(), identity) {
		v.add(field+".uuid", "must be the installer's identity %q", identity)
	}
	if f.GetCores() == 0 || f.GetCores() > 1<<16 {
		v.add(field+".cores", "must be 1-65536")
	}
	if f.GetMemoryBytes() == 0 {
		v.add(field+".memory_bytes", "must be positive")
	}
	if len(f.GetDisks()) > 256 {
		v.add(field+".disks", "at most 256")
	}
	for i, d := range f.GetDisks() {
		if d.GetName() == "" || len(d.GetName()) > 64 || strings.ContainsAny(d.GetName(), "/ \x00") {
			v.add(fieldIndex(field+".disks", i)+".name", "1-64 characters, no '/' or spaces")
		}
	}
	if len(f.GetNics()) > 256 {
		v.add(field+".nics", "at most 256")
	}
	seen := map[string]bool{}
	for i, n := range f.GetNics() {
		fi := fieldIndex(field+".nics", i)
		hw, err := net.ParseMAC(n.GetMac())
		switch {
		case err != nil || len(hw) != 6:
			v.add(fi+".mac", "not a 48-bit MAC address")
		case seen[hw.String()]:
			v.add(fi+".mac", "reported twice")
		default:
			seen[hw.String()] = true
		}
		if len(n.GetName()) > 64 {
			v.add(fi+".name", "at most 64 characters")
		}
		if len(n.GetNeighbours()) > 16 {
			v.add(fi+".neighbours", "at most 16")
		}
	}
	if len(f.GetGpus()) > 64 {
		v.add(field+".gpus", "at most 64")
	}
	for _, s := range []struct{ name, val string }{
		{"vendor", f.GetVendor()}, {"product", f.GetProduct()}, {"serial", f.GetSerial()},
		{"bios.version", f.GetBios().GetVersion()}, {"bmc.address", f.GetBmc().GetAddress()},
	} {
		v.text(field+"."+s.name, s.val, 256)
	}
	return v.err()
}

// register validates an installer's hardware report, matches its size
// and hands both to the machine aggregate.
func (p *provisioner) register(ctx context.Context, tx pgx.Tx, a fleet.Agent, f *agentv1.MachineFacts) error {
	if err := validateMachineFacts(a.Identity, f); err != nil {
		return err
	}
	sizeID, err := catalog.MatchSize(ctx, tx, f)
	if err != nil {
		return err
	}
	return p.machines.Register(ctx, tx, a, f, sizeID)
}

// Claim implements fleet.Claimer (machine.Claim).
func (p *provisioner) Claim(ctx context.Context, tx pgx.Tx, c fleet.Claim) error {
	return machine.Claim(ctx, tx, c)
}

// Boot implements fleet.Domain: what a MAC of the PXE service's partition
// boots. Installed machines boot their disk; everything else (unknown,
// waiting, freed, crashed, being reinstalled) boots the installer with a
// fresh one-time boot token of the partition.
func (p *provisioner) Boot(ctx context.Context, a fleet.Agent, req *agentv1.BootRequest) (*agentv1.BootResponse, error) {
	var v violations
	hw, err := net.ParseMAC(req.GetMac())
	if err != nil || len(hw) != 6 {
		v.add("mac", "not a 48-bit MAC address")
	}
	switch req.GetArch() {
	case "", "bios", "efi", "efi-http":
	default:
		v.add("arch", "must be bios, efi or efi-http")
	}
	v.text("address", req.GetAddress(), 64)
	if err := v.err(); err != nil {
		return nil, err
	}
	resp := &agentv1.BootResponse{Action: agentv1.BootAction_BOOT_ACTION_INSTALLER}
	err = p.store.Tx(ctx, func(tx pgx.Tx) error {
		id, partition, installed, found, err := machine.BootOf(ctx, tx, hw.String())
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
		doc := catalog.PixieDocument(p.trust(), part)
		resp.KernelUrl, resp.InitramfsUrl, resp.Cmdline = doc.GetKernelUrl(), doc.GetInitramfsUrl(), doc.GetCmdline()
		// The token is good only for this MAC (and the machine that owns
		// it): whoever else asks for it cannot claim another machine.
		bt, err := p.fleet.MintBootToken(ctx, tx, fleet.BootToken{Partition: a.Partition, MAC: hw.String(), Machine: resp.GetMachineId(),
			TTL: p.cfg.BootTokenTTL, CreatedBy: "pixie/" + a.ID})
		if err != nil {
			return err
		}
		resp.BootToken, resp.BootTokenExpiresAt = bt.Secret, timestamppb.New(bt.ExpiresAt)
		return nil
	})
	if err != nil {
		return nil, toStatus(err, "boot of "+req.GetMac())
	}
	return resp, nil
}
