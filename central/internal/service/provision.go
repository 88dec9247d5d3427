package service

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
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/fleet"
	"github.com/metalfleet/metalfleet/central/internal/fsm"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
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
		return p.machineEvents(ctx, tx, a, r.GetEvents(), nil)
	case agentv1.Kind_KIND_PHONEHOME:
		// An installed system knows only these two things about itself.
		return p.machineEvents(ctx, tx, a, r.GetEvents(), []fsm.State{fsm.PhonedHome, fsm.PlannedReboot})
	case agentv1.Kind_KIND_PIXIE:
		return p.pxeEvents(ctx, tx, a, r.GetEvents())
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

// register stores an installer's hardware: the machine row (created on
// first sight), its size, rack and NICs; and tells the installer its
// machine id, which is what it waits for before it wipes and waits.
func (p *provisioner) register(ctx context.Context, tx pgx.Tx, a fleet.Agent, f *agentv1.MachineFacts) error {
	if err := validateMachineFacts(a.Identity, f); err != nil {
		return err
	}
	id := strings.ToLower(a.Identity)
	m, err := p.lockMachine(ctx, tx, a)
	if err != nil {
		return err
	}
	m.Hardware = f
	sizeID, err := matchSize(ctx, tx, f)
	if err != nil {
		return err
	}
	m.SizeId = sizeID
	rack, err := rackOf(ctx, tx, f)
	if err != nil {
		return err
	}
	if rack != "" {
		m.Rack = rack
	}
	spec, err := store.EncodeSpec(m)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, `UPDATE machines SET spec = $2, size_id = $3, rack = $4, agent_id = $5,
		generation = generation + 1, updated_at = now() WHERE id = $1`, id, spec, nullable(sizeID), m.GetRack(), a.ID); err != nil {
		return fmt.Errorf("store machine %s: %w", id, err)
	}
	if err := storeNICs(ctx, tx, id, f.GetNics()); err != nil {
		return err
	}
	_, err = p.fleet.Change(ctx, tx, a.ID, func(d *agentv1.Desired) (bool, error) {
		if d.GetMachine().GetMachineId() == id {
			return false, nil
		}
		if d.Machine == nil {
			d.Machine = &agentv1.MachineDocument{}
		}
		d.Machine.MachineId = id
		return true, nil
	})
	return err
}

// storeNICs replaces the machine's NICs with the reported ones. A MAC
// that belongs to another machine does not move (whoever decides a MAC's
// PXE boot is not up to the reporter): it is recorded as a conflict, an
// issue on both machines until an admin resolves it (ResolveMac) or
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
		if err := logEvent(ctx, tx, id, "Duplicate MAC", fmt.Sprintf("reports NIC %s, which belongs to machine %s: not taken over; an admin resolves it (metalctl machine resolve-mac)", mac, owner)); err != nil {
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
func (p *provisioner) Claim(ctx context.Context, tx pgx.Tx, c fleet.Claim) error {
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

// lockMachine locks the machine of an installer or phonehome, creating
// it when the installer reports for the first time. A machine known in
// another partition is refused: its boot token proved only this one.
func (p *provisioner) lockMachine(ctx context.Context, tx pgx.Tx, a fleet.Agent) (*apiv1.Machine, error) {
	id := strings.ToLower(a.Identity)
	m, err := machines.GetForUpdate(ctx, tx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		if a.Kind != agentv1.Kind_KIND_INSTALLER {
			return nil, status.Errorf(codes.FailedPrecondition, "machine %s is not registered", id)
		}
		if _, err := uuid.Parse(id); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "hello.identity: an installer's identity is its DMI product UUID, not %q", a.Identity)
		}
		m = &apiv1.Machine{Id: id, PartitionId: a.Partition, State: apiv1.MachineState_MACHINE_STATE_AVAILABLE}
		spec, err := store.EncodeSpec(m)
		if err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO machines (id, partition_id, agent_id, spec) VALUES ($1, $2, $3, $4)`,
			id, nullable(a.Partition), a.ID, spec); err != nil {
			return nil, fmt.Errorf("create machine %s: %w", id, err)
		}
		return machines.GetForUpdate(ctx, tx, id)
	}
	if err != nil {
		return nil, fmt.Errorf("read machine %s: %w", id, err)
	}
	if m.GetPartitionId() != a.Partition {
		return nil, status.Errorf(codes.PermissionDenied, "machine %s belongs to partition %q, not %q", id, m.GetPartitionId(), a.Partition)
	}
	return m, nil
}

// matchSize picks the size whose constraints the hardware meets; the first
// by id when several do (sizes should not overlap; docs/machine-lifecycle.md).
func matchSize(ctx context.Context, tx pgx.Tx, f *agentv1.MachineFacts) (string, error) {
	all, err := sizes.List(ctx, tx, "TRUE")
	if err != nil {
		return "", fmt.Errorf("read sizes: %w", err)
	}
	for _, s := range all {
		if len(s.GetConstraints()) > 0 && sizeMatches(s, f) {
			return s.GetId(), nil
		}
	}
	return "", nil
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

// machineEvents records lifecycle events of the agent's machine. only,
// when set, lists the events the agent kind may report.
func (p *provisioner) machineEvents(ctx context.Context, tx pgx.Tx, a fleet.Agent, events []*agentv1.Event, only []fsm.State) error {
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
			if _, err := p.lockMachine(ctx, tx, a); err != nil {
				return err
			}
			locked = true
		}
		if err := recordEvent(ctx, tx, strings.ToLower(a.Identity), string(ev), e.GetMessage()); err != nil {
			return err
		}
	}
	return nil
}

// pxeEvents maps a PXE service's "PXE Booting" events by MAC to machines
// of its partition. Unknown MACs are servers booting for the first time;
// their event stays in the PXE service's agent log.
func (p *provisioner) pxeEvents(ctx context.Context, tx pgx.Tx, a fleet.Agent, events []*agentv1.Event) error {
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
		if err := recordEvent(ctx, tx, id, string(fsm.PXEBooting), e.GetMessage()); err != nil {
			return err
		}
	}
	return nil
}

// logEvent records an event outside the state machine ("Allocated",
// "Reinstall", "State") in one statement, the state unchanged. The machine
// row must be locked.
func logEvent(ctx context.Context, tx pgx.Tx, id, event, msg string) error {
	if _, err := tx.Exec(ctx, `WITH m AS (
			UPDATE machines SET event_seq = event_seq + 1, last_event = $2, last_event_at = now(), updated_at = now()
			WHERE id = $1 RETURNING event_seq, provisioning)
		INSERT INTO machine_events (machine_id, seq, at, event, message, state) SELECT $1, event_seq, now(), $2, $3, provisioning FROM m`,
		id, event, truncateText(msg, 4096)); err != nil {
		return fmt.Errorf("store event: %w", err)
	}
	return nil
}

// recordEvent runs one event through the lifecycle state machine and
// stores it with the machine's new state. The machine row must be locked.
// Events outside the state machine ("Allocated", "Freed", ...) are logged
// with the state unchanged.
func recordEvent(ctx context.Context, tx pgx.Tx, id, event string, msg string) error {
	var (
		cur       string
		crashes   int
		seq       int64
		installed bool
	)
	if err := tx.QueryRow(ctx, `SELECT provisioning, crashes, event_seq, installed FROM machines WHERE id = $1`, id).
		Scan(&cur, &crashes, &seq, &installed); err != nil {
		return fmt.Errorf("read machine %s: %w", id, err)
	}
	next, errText := fsm.State(cur), ""
	if ev, ok := fsm.Parse(event); ok {
		if ev == fsm.PXEBooting && installed {
			// An installed machine passes the PXE service on its way to
			// its disk: worth a log line, not a state change.
			msg = strings.TrimSpace("boots from disk; " + msg)
		} else {
			var err error
			next, err = fsm.Transition(fsm.State(cur), ev)
			if err != nil {
				errText = err.Error()
			} else {
				crashes = fsm.Crashes(crashes, ev)
				installed = installed || ev == fsm.PhonedHome
			}
		}
	}
	seq++
	// The log is ordered and timed by central's clock: machines' clocks
	// may be off, and clients follow the log by time. The agent's own time
	// stays in its agent event log.
	if _, err := tx.Exec(ctx, `INSERT INTO machine_events (machine_id, seq, at, event, message, state, error) VALUES ($1, $2, now(), $3, $4, $5, $6)`,
		id, seq, event, truncateText(msg, 4096), string(next), errText); err != nil {
		return fmt.Errorf("store event: %w", err)
	}
	if _, err := tx.Exec(ctx, `UPDATE machines SET provisioning = $2, last_event = $3, last_event_at = now(), crashes = $4,
		event_seq = $5, installed = $6, updated_at = now() WHERE id = $1`, id, string(next), event, crashes, seq, installed); err != nil {
		return fmt.Errorf("update machine state: %w", err)
	}
	return nil
}

func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
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
		var partition string
		var installed bool
		err := tx.QueryRow(ctx, `SELECT m.id, COALESCE(m.partition_id, ''), m.installed AND m.allocation_id IS NOT NULL
			FROM machine_nics n JOIN machines m ON m.id = n.machine_id WHERE n.mac = $1`, hw.String()).
			Scan(&resp.MachineId, &partition, &installed)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			return fmt.Errorf("find machine of %s: %w", hw, err)
		case partition != a.Partition:
			return status.Errorf(codes.PermissionDenied, "mac %s belongs to machine %s of partition %q", hw, resp.MachineId, partition)
		case installed:
			resp.Action = agentv1.BootAction_BOOT_ACTION_DISK
			return nil
		}
		part, err := partitions.Get(ctx, tx, a.Partition)
		if err != nil {
			return fmt.Errorf("read partition %s: %w", a.Partition, err)
		}
		doc := pixieDocument(p.cfg, part)
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

// pixieDocument is what a partition's PXE service serves.
func pixieDocument(cfg Config, part *apiv1.Partition) *agentv1.PixieDocument {
	cmd := strings.Fields(part.GetBoot().GetCmdline())
	if len(cfg.Centrals) > 0 {
		cmd = append(cmd, "metal.central="+strings.Join(cfg.Centrals, ","))
	}
	cmd = append(cmd, "metal.partition="+part.GetId())
	if cfg.CAPin != "" {
		cmd = append(cmd, "metal.ca="+cfg.CAPin)
	}
	return &agentv1.PixieDocument{
		PartitionId:  part.GetId(),
		KernelUrl:    part.GetBoot().GetKernelUrl(),
		InitramfsUrl: part.GetBoot().GetInitramfsUrl(),
		Cmdline:      strings.Join(cmd, " "),
		Centrals:     cfg.Centrals,
		CaSha256:     cfg.CAPin,
	}
}

// refreshPixies brings the documents of the partition's PXE services (all
// partitions when partition is "") up to date, inside tx.
func (a *API) refreshPixies(ctx context.Context, tx pgx.Tx, partition string) error {
	if a.fleet == nil {
		return nil
	}
	rows, err := tx.Query(ctx, `SELECT id, partition_id FROM agents WHERE kind = $1 AND partition_id IS NOT NULL AND ($2 = '' OR partition_id = $2)`,
		fleet.KindName(agentv1.Kind_KIND_PIXIE), partition)
	if err != nil {
		return fmt.Errorf("list pixies: %w", err)
	}
	all, err := textPairs(rows)
	if err != nil {
		return fmt.Errorf("list pixies: %w", err)
	}
	for _, x := range all {
		id, partition := x[0], x[1]
		part, err := partitions.Get(ctx, tx, partition)
		if err != nil {
			return fmt.Errorf("read partition %s: %w", partition, err)
		}
		doc := pixieDocument(a.cfg, part)
		if _, err := a.fleet.Change(ctx, tx, id, func(d *agentv1.Desired) (bool, error) {
			if proto.Equal(d.GetPixie(), doc) {
				return false, nil
			}
			d.Pixie = doc
			return true, nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// RefreshPixies updates every PXE service's document; central calls it on
// start, as its advertised addresses or CA may have changed.
func (a *API) RefreshPixies(ctx context.Context) error {
	return a.store.Tx(ctx, func(tx pgx.Tx) error { return a.refreshPixies(ctx, tx, "") })
}
