package machine

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/bmc"
	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/fabric"
	"github.com/metalfleet/metalfleet/central/internal/field"
	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/fsm"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Report implements fleet.Domain: what installers, installed systems and
// PXE services report becomes machines and their lifecycle
// (docs/machine-lifecycle.md).
func (ms *Machines) Report(ctx context.Context, tx pgx.Tx, a fleet.Agent, r *agentv1.Report) error {
	switch a.Kind {
	case agentv1.Kind_KIND_INSTALLER:
		if f := r.GetFacts().GetMachine(); f != nil {
			if err := ms.register(ctx, tx, a, f); err != nil {
				return err
			}
		}
		if err := reportEvents(ctx, tx, a, r.GetEvents(), nil); err != nil {
			return err
		}
		if err := ms.bootDiskWhenInstalled(ctx, tx, a, r.GetEvents()); err != nil {
			return err
		}
		return ms.portsFollow(ctx, tx, a, r.GetEvents())
	case agentv1.Kind_KIND_PHONEHOME:
		// An installed system knows only these two things about itself.
		if err := reportEvents(ctx, tx, a, r.GetEvents(), []fsm.State{fsm.PhonedHome, fsm.PlannedReboot}); err != nil {
			return err
		}
		return ms.portsFollow(ctx, tx, a, r.GetEvents())
	case agentv1.Kind_KIND_PIXIE:
		return pxeEvents(ctx, tx, a, r.GetEvents())
	}
	return nil
}

// portsFollow moves the machine's switch ports when an event changes
// where they belong: "install done" (Booting New Kernel) and Phoned Home
// put them into the tenant VRF (metal-stack moves them when the installer
// reports, just before it boots the installed system), in the transaction
// that records the event.
func (ms *Machines) portsFollow(ctx context.Context, tx pgx.Tx, a fleet.Agent, events []*agentv1.Event) error {
	for _, e := range events {
		if ev, _ := fsm.Parse(e.GetType()); ev == fsm.BootingNewKernel || ev == fsm.PhonedHome {
			return fabric.DeriveForMachines(ctx, tx, ms.docs, []string{strings.ToLower(a.Identity)})
		}
	}
	return nil
}

// bootDiskWhenInstalled sets an allocated machine's boot device to its
// disk for good when its installer reports the install done (Booting New
// Kernel), in the transaction that records it: from then on its ports are
// in the tenant VRF where PXE does not reach, so a restart must boot the
// disk rather than wait for PXE to give up (metal-stack sets the boot
// order to disk through the BMC after the install). Free, reinstall and
// the stuck reconciler set PXE again.
func (ms *Machines) bootDiskWhenInstalled(ctx context.Context, tx pgx.Tx, a fleet.Agent, events []*agentv1.Event) error {
	done := slices.ContainsFunc(events, func(e *agentv1.Event) bool {
		ev, _ := fsm.Parse(e.GetType())
		return ev == fsm.BootingNewKernel
	})
	if !done {
		return nil
	}
	id := strings.ToLower(a.Identity)
	var partition string
	err := tx.QueryRow(ctx, `SELECT COALESCE(partition_id, '') FROM machines WHERE id = $1 AND allocation_id IS NOT NULL`, id).Scan(&partition)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil // not allocated: nothing was installed
	}
	if err != nil {
		return fmt.Errorf("machine %s: %w", id, err)
	}
	return ms.raiseBMC(ctx, tx, id, partition, bmc.Intent{
		Boot: &agentv1.BmcBootIntent{Device: agentv1.BmcBootDevice_BMC_BOOT_DEVICE_DISK, Persistent: true},
	})
}

// validateFacts checks an installer's hardware report. Everything here
// comes from the machine and is untrusted.
func validateFacts(identity string, f *agentv1.MachineFacts) error {
	const name = "report.facts.machine"
	v := field.Violations{Clip: auth.ClipEcho, Quote: auth.Quote}
	if !strings.EqualFold(f.GetUuid(), identity) {
		v.Add(name+".uuid", "must be the installer's identity %q", identity)
	}
	if f.GetCores() == 0 || f.GetCores() > 1<<16 {
		v.Add(name+".cores", "must be 1-65536")
	}
	if f.GetMemoryBytes() == 0 {
		v.Add(name+".memory_bytes", "must be positive")
	}
	if len(f.GetDisks()) > 256 {
		v.Add(name+".disks", "at most 256")
	}
	for i, d := range f.GetDisks() {
		if d.GetName() == "" || len(d.GetName()) > 64 || strings.ContainsAny(d.GetName(), "/ \x00") {
			v.Add(field.Index(name+".disks", i)+".name", "1-64 characters, no '/' or spaces")
		}
	}
	if len(f.GetNics()) > 256 {
		v.Add(name+".nics", "at most 256")
	}
	seen := map[string]bool{}
	for i, n := range f.GetNics() {
		fi := field.Index(name+".nics", i)
		hw, err := net.ParseMAC(n.GetMac())
		switch {
		case err != nil || len(hw) != 6:
			v.Add(fi+".mac", "not a 48-bit MAC address")
		case seen[hw.String()]:
			v.Add(fi+".mac", "reported twice")
		default:
			seen[hw.String()] = true
		}
		if len(n.GetName()) > 64 {
			v.Add(fi+".name", "at most 64 characters")
		}
		if len(n.GetNeighbours()) > 16 {
			v.Add(fi+".neighbours", "at most 16")
		}
	}
	if len(f.GetGpus()) > 64 {
		v.Add(name+".gpus", "at most 64")
	}
	for _, s := range []struct{ name, val string }{
		{"vendor", f.GetVendor()}, {"product", f.GetProduct()}, {"serial", f.GetSerial()},
		{"bios.version", f.GetBios().GetVersion()}, {"bmc.address", f.GetBmc().GetAddress()},
	} {
		v.Text(name+"."+s.name, s.val, 256)
	}
	return v.Err("")
}

// register checks an installer's hardware report and stores it: the
// machine row (created on first sight), its size (matched in the
// catalog), rack and NICs; and tells the installer its machine id, which
// is what it waits for before it wipes and waits.
func (ms *Machines) register(ctx context.Context, tx pgx.Tx, a fleet.Agent, f *agentv1.MachineFacts) error {
	if err := validateFacts(a.Identity, f); err != nil {
		return err
	}
	sizeID, err := catalog.MatchSize(ctx, tx, f)
	if err != nil {
		return err
	}
	id := strings.ToLower(a.Identity)
	m, err := lock(ctx, tx, a)
	if err != nil {
		return err
	}
	m.Hardware = f
	m.SizeId = sizeID
	rack, err := rackOf(ctx, tx, f)
	if err != nil {
		return err
	}
	if rack != "" {
		m.Rack = rack
	}
	if err := saveOne(ctx, tx, m, a.ID, how{hardware: true}); err != nil {
		return err
	}
	if err := storeNICs(ctx, tx, id, f.GetNics()); err != nil {
		return err
	}
	// A BMC that reported the machine's GUID in another byte order is its.
	if err := bmc.Adopt(ctx, tx, m.GetPartitionId(), id); err != nil {
		return err
	}
	// The switches that see its NICs know which machine is on their port.
	if err := fabric.DeriveForMachines(ctx, tx, ms.docs, []string{id}); err != nil {
		return err
	}
	// The installer learns its machine id.
	return ms.setDocument(ctx, tx, a.ID, id, func(*agentv1.MachineDocument) {})
}

// storeNICs replaces the machine's NICs with the reported ones. A MAC
// that belongs to another machine does not move (whoever decides a MAC's
// PXE boot is not up to the reporter): it is recorded as a conflict, an
// issue on both machines until an admin resolves it (ResolveMAC) or
// deletes one of them.
func storeNICs(ctx context.Context, tx pgx.Tx, id string, nics []*agentv1.NICFact) error {
	if _, err := tx.Exec(ctx, `DELETE FROM machine_nics WHERE machine_id = $1`, id); err != nil {
		return fmt.Errorf("replace nics: %w", err)
	}
	if _, err := tx.Exec(ctx, `DELETE FROM machine_mac_conflicts WHERE machine_id = $1`, id); err != nil {
		return fmt.Errorf("replace mac conflicts: %w", err)
	}
	for _, n := range nics {
		hw, _ := net.ParseMAC(n.GetMac())
		mac := hw.String()
		var owner string
		err := tx.QueryRow(ctx, `INSERT INTO machine_nics (mac, machine_id, name) VALUES ($1, $2, $3)
			ON CONFLICT (mac) DO NOTHING RETURNING machine_id`, mac, id, n.GetName()).Scan(&owner)
		if err == nil {
			continue
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("store nic %s: %w", mac, err)
		}
		if err := tx.QueryRow(ctx, `SELECT machine_id FROM machine_nics WHERE mac = $1`, mac).Scan(&owner); err != nil {
			return fmt.Errorf("owner of nic %s: %w", mac, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO machine_mac_conflicts (mac, machine_id, owner_id) VALUES ($1, $2, $3)
			ON CONFLICT (mac, machine_id) DO UPDATE SET owner_id = excluded.owner_id, reported_at = now()`, mac, id, owner); err != nil {
			return fmt.Errorf("record mac conflict %s: %w", mac, err)
		}
		if err := Record(ctx, tx, Event{Machine: id, Type: "Duplicate MAC",
			Message: fmt.Sprintf("reports NIC %s, which belongs to machine %s: not taken over; an admin resolves it (metalctl machine resolve-mac)", mac, owner)}); err != nil {
			return err
		}
	}
	return nil
}

// Claim implements fleet.Claimer: may an installer's boot token exchange
// claim machine c.Identity? Not an allocated machine that is installed:
// central boots it from its disk and has not asked it to boot the
// installer (reinstall and free do, by clearing "installed"), so a boot
// token for it can only be a stranger's. A token minted for a MAC unknown
// at the time cannot claim a machine that has other NICs; one minted for
// a MAC must find it still the machine's. A machine not yet known is new.
func (ms *Machines) Claim(ctx context.Context, tx pgx.Tx, c fleet.Claim) error {
	id := strings.ToLower(c.Identity)
	var allocated, installed bool
	err := tx.QueryRow(ctx, `SELECT allocation_id IS NOT NULL, installed FROM machines WHERE id = $1 FOR UPDATE`, id).Scan(&allocated, &installed)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read machine %s: %w", id, err)
	}
	if allocated && installed {
		return status.Errorf(codes.PermissionDenied,
			"machine %s is allocated and installed: it boots from its disk, and central has not asked it to boot the installer (reinstall or free it first)", id)
	}
	if c.MAC == "" {
		return nil // an admin's token
	}
	var owner string
	err = tx.QueryRow(ctx, `SELECT machine_id FROM machine_nics WHERE mac = $1`, c.MAC).Scan(&owner)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		var nics int
		if err := tx.QueryRow(ctx, `SELECT count(*) FROM machine_nics WHERE machine_id = $1`, id).Scan(&nics); err != nil {
			return fmt.Errorf("read nics of %s: %w", id, err)
		}
		if nics > 0 {
			return status.Errorf(codes.PermissionDenied,
				"the boot token was handed out for MAC %s, which is not a NIC of machine %s: a NIC change is an admin's decision (metalctl machine resolve-mac)", c.MAC, id)
		}
	case err != nil:
		return fmt.Errorf("owner of %s: %w", c.MAC, err)
	case owner != id:
		return status.Errorf(codes.PermissionDenied, "the boot token was handed out for MAC %s, which belongs to machine %s, not %s", c.MAC, owner, id)
	}
	return nil
}

// lock locks the machine of an installer or phonehome, creating it when
// the installer reports for the first time. A machine known in another
// partition is refused: its boot token proved only this one.
func lock(ctx context.Context, tx pgx.Tx, a fleet.Agent) (*apiv1.Machine, error) {
	id := strings.ToLower(a.Identity)
	m, err := Table.GetForUpdate(ctx, tx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		if a.Kind != agentv1.Kind_KIND_INSTALLER {
			return nil, status.Errorf(codes.FailedPrecondition, "machine %s is not registered", id)
		}
		if _, err := uuid.Parse(id); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "hello.identity: an installer's identity is its DMI product UUID, not %q", a.Identity)
		}
		m = &apiv1.Machine{Id: id, PartitionId: a.Partition, State: apiv1.MachineState_MACHINE_STATE_AVAILABLE}
		var partition any
		if a.Partition != "" {
			partition = a.Partition
		}
		if _, err := Table.Insert(ctx, tx, id, m, store.Col{Name: "partition_id", Val: partition}, store.Col{Name: "agent_id", Val: a.ID}); err != nil {
			return nil, fmt.Errorf("create machine %s: %w", id, err)
		}
		return Table.GetForUpdate(ctx, tx, id)
	}
	if err != nil {
		return nil, fmt.Errorf("read machine %s: %w", id, err)
	}
	if m.GetPartitionId() != a.Partition {
		return nil, status.Errorf(codes.PermissionDenied, "machine %s belongs to partition %q, not %q", id, m.GetPartitionId(), a.Partition)
	}
	return m, nil
}

// rackOf takes the rack of the switches the machine's NICs see over LLDP.
func rackOf(ctx context.Context, tx pgx.Tx, f *agentv1.MachineFacts) (string, error) {
	var names []string
	for _, n := range f.GetNics() {
		for _, nb := range n.GetNeighbours() {
			if nb.GetSystemName() != "" {
				names = append(names, nb.GetSystemName())
			}
		}
	}
	if len(names) == 0 {
		return "", nil
	}
	var rack string
	err := tx.QueryRow(ctx, `SELECT rack FROM switches WHERE id = ANY($1) AND rack <> '' ORDER BY id LIMIT 1`, names).Scan(&rack)
	if errors.Is(err, pgx.ErrNoRows) {
		return "", nil
	}
	return rack, err
}

// reportEvents records lifecycle events the agent reports of its own
// machine. only, when set, lists the events the agent kind may report.
func reportEvents(ctx context.Context, tx pgx.Tx, a fleet.Agent, events []*agentv1.Event, only []fsm.State) error {
	var locked bool
	for i, e := range events {
		ev, ok := fsm.Parse(e.GetType())
		if !ok {
			continue // the agent's own event, kept in its agent log only
		}
		if only != nil && !slices.Contains(only, ev) {
			return status.Errorf(codes.InvalidArgument, "report.events[%d].type: a %s agent cannot report %q", i, fleet.KindName(a.Kind), ev)
		}
		if !locked {
			if _, err := lock(ctx, tx, a); err != nil {
				return err
			}
			locked = true
		}
		if err := Record(ctx, tx, Event{Machine: strings.ToLower(a.Identity), Type: string(ev), Message: e.GetMessage()}); err != nil {
			return err
		}
	}
	return nil
}

// pxeEvents maps a PXE service's "PXE Booting" events by MAC to machines
// of its partition. Unknown MACs are servers booting for the first time;
// their event stays in the PXE service's agent log.
func pxeEvents(ctx context.Context, tx pgx.Tx, a fleet.Agent, events []*agentv1.Event) error {
	for i, e := range events {
		if e.GetType() != string(fsm.PXEBooting) {
			continue
		}
		hw, err := net.ParseMAC(e.GetSubject())
		if err != nil {
			return status.Errorf(codes.InvalidArgument, "report.events[%d].subject: not a MAC address", i)
		}
		var id string
		err = tx.QueryRow(ctx, `SELECT m.id FROM machine_nics n JOIN machines m ON m.id = n.machine_id
			WHERE n.mac = $1 AND m.partition_id = $2 FOR UPDATE OF m`, hw.String(), a.Partition).Scan(&id)
		if errors.Is(err, pgx.ErrNoRows) {
			continue
		}
		if err != nil {
			return fmt.Errorf("find machine of %s: %w", hw, err)
		}
		if err := Record(ctx, tx, Event{Machine: id, Type: string(fsm.PXEBooting), Message: e.GetMessage()}); err != nil {
			return err
		}
	}
	return nil
}
