package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/lab/internal/client"
	"github.com/metalfleet/metalfleet/lab/internal/redfish"
	"github.com/metalfleet/metalfleet/lab/internal/topo"
	"github.com/metalfleet/metalfleet/lab/internal/vm"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Result is what an end-to-end run measured. Every power and boot change
// is an intent in central that the partition's metal-bmc executes.
type Result struct {
	Up    Timings
	Accel string // kvm or tcg
	// Waiting: the power-on intents raised (`metalctl machine power on`)
	// until the machine is Waiting, per machine.
	Waiting map[string]time.Duration
	// Allocate is `metalctl machine create --wait` until Phoned Home.
	Allocate time.Duration
	// DiskBoot is `metalctl machine power reset` of the allocated machine
	// (metal-bmc: a Redfish ForceRestart or IPMI chassis reset) until its OS is up again, booted
	// by the firmware from its disk.
	DiskBoot time.Duration
	// Reinstall is the reinstall call until Phoned Home again (central
	// asks metal-bmc for PXE and a power cycle, metal-phonehome reboots
	// too; whichever comes first).
	Reinstall time.Duration
	// Free is `metalctl machine delete` of the machine switched off
	// (`metalctl machine power off`) until it waits again: central's PXE
	// and reset intents, which metal-bmc carries out as a power-on, the
	// PXE boot, the installer's wipe.
	Free time.Duration
	// BMCLeases: each leased BMC at the end, its address kept through
	// the renewals of the run.
	BMCLeases map[string]string `json:",omitempty"`
	// Console: the freed machine's installer read through `metalctl
	// machine console` (central, metal-bmc, the BMC's SSH serial console).
	Console ConsoleResult `json:",omitzero"`
	// Fabric: what a fabric's run measured (topologies with a spine).
	Fabric FabricResult `json:",omitzero"`
	Total  time.Duration
}

// E2E builds the lab, runs a machine's whole life against it, and tears it
// down (unless keep). A failure carries the serial console and central's
// events of the machine it happened to.
func (l *Lab) E2E(ctx context.Context, keep bool) (res Result, err error) {
	start := time.Now()
	res.Waiting = map[string]time.Duration{}
	res.Accel = vm.DefaultAccel("")
	defer func() {
		res.Total = time.Since(start)
		if keep {
			return
		}
		if derr := l.Down(context.WithoutCancel(ctx)); derr != nil {
			err = errors.Join(err, fmt.Errorf("down: %w", derr))
		}
	}()
	if res.Up, err = l.Up(ctx, true); err != nil {
		return res, err
	}
	cc, err := client.Dial(l.centralAddr(), filepath.Join(l.centralDir(), "ca.crt"), filepath.Join(l.centralDir(), "admin.token"))
	if err != nil {
		return res, err
	}
	defer cc.Close()
	e := &e2e{Lab: l, api: apiv1.NewMachineServiceClient(cc), switches: apiv1.NewSwitchServiceClient(cc), byUUID: map[string]string{}}
	for _, m := range l.top.Nodes(topo.KindMachine) {
		e.byUUID[l.top.Node(m).UUID] = m
	}
	if err := l.checkKnownFromBMC(res.Up.KnownFromBMC); err != nil {
		return res, err
	}
	if l.top.Fabric() {
		if err := l.e2eFabric(ctx, e, &res); err != nil {
			return res, err
		}
		res.BMCLeases, err = l.checkBMCLeases(res.Up.KnownFromBMC)
		return res, err
	}

	// 1. Every machine PXE-boots the installer, registers with correct
	//    facts and a size, and waits.
	for _, m := range l.top.Nodes(topo.KindMachine) {
		uuid := l.top.Node(m).UUID
		if err := e.waitState(ctx, uuid, apiv1.ProvisioningState_PROVISIONING_STATE_WAITING, 5*time.Minute, nil); err != nil {
			return res, e.failure(ctx, uuid, err)
		}
		res.Waiting[m] = time.Since(res.Up.PoweredOn)
		l.progress("e2e: %s is Waiting %.1f s after power-on", m, res.Waiting[m].Seconds())
		if err := e.checkFacts(ctx, m); err != nil {
			return res, e.failure(ctx, uuid, err)
		}
	}

	// 2. A tenant allocates one with metalctl and waits for it. With an
	//    IPMI machine in the topology it is that one: its life is what
	//    the e2e runs through metal-bmc (Redfish has its own tests and
	//    the other machines' power-on here).
	p := l.top.Partition
	allocStart := time.Now()
	create := []string{"machine", "create", "--project", l.state.Project, "--partition", p.ID,
		"--size", p.Sizes[0].ID, "--image", p.Images[0].ID, "--networks", p.Networks[0].ID,
		"--hostname", "web-1", "--wait", "--wait-timeout", "8m"}
	if m := l.ipmiMachine(); m != "" {
		create = append(create, "--id", l.top.Node(m).UUID)
		l.progress("e2e: allocating %s, the machine behind an IPMI BMC", m)
	}
	out, err := l.metalctl(ctx, create...)
	res.Allocate = time.Since(allocStart)
	if err != nil {
		return res, e.failure(ctx, e.allocated(ctx, "web-1"), err)
	}
	uuid := e.allocated(ctx, "web-1")
	if uuid == "" {
		return res, fmt.Errorf("create --wait returned, but no machine has hostname web-1:\n%s", out)
	}
	l.progress("e2e: %s allocated as web-1 and Phoned Home %.1f s after create", e.byUUID[uuid], res.Allocate.Seconds())
	first, err := e.checkInstalled(ctx, uuid, "web-1", 0)
	if err != nil {
		return res, e.failure(ctx, uuid, err)
	}

	// 3. An operator resets it through its BMC (metal-bmc: Redfish
	//    ForceRestart, IPMI chassis reset): PXE asks pixie, pixie says "boot the disk", the
	//    firmware boots the installed system.
	rebootStart := time.Now()
	if err := l.bmcIntent(ctx, e.api, uuid, powerKind, "power", "reset"); err != nil {
		return res, e.failure(ctx, uuid, err)
	}
	if err := e.waitConsole(ctx, uuid, "metal-lab: web-1 ready:", first+1, 3*time.Minute); err != nil {
		return res, e.failure(ctx, uuid, err)
	}
	res.DiskBoot = time.Since(rebootStart)
	if err := e.checkDiskBoot(ctx, uuid, rebootStart); err != nil {
		return res, e.failure(ctx, uuid, err)
	}
	l.progress("e2e: after metalctl machine power reset (metal-bmc, %s) web-1 booted from its disk in %.1f s", l.top.Node(e.byUUID[uuid]).BMC, res.DiskBoot.Seconds())

	// 4. Reinstall: a new allocation id, installed and phoned home again.
	m, err := e.get(ctx, uuid)
	if err != nil {
		return res, e.failure(ctx, uuid, err)
	}
	oldAlloc := m.GetAllocation().GetId()
	reinstallStart := time.Now()
	if _, err := l.metalctl(ctx, "machine", "reinstall", uuid); err != nil {
		return res, e.failure(ctx, uuid, err)
	}
	m, err = e.get(ctx, uuid)
	if err != nil {
		return res, e.failure(ctx, uuid, err)
	}
	if m.GetAllocation().GetId() == oldAlloc {
		return res, e.failure(ctx, uuid, fmt.Errorf("reinstall kept allocation id %s", oldAlloc))
	}
	// The state stays Phoned Home until the machine reboots: wait for the
	// new allocation's own "Phoned Home".
	if err := waitFor(ctx, 8*time.Minute, "Phoned Home of the reinstalled "+e.byUUID[uuid], func() (bool, error) {
		ev, err := e.events(ctx, uuid)
		return slices.ContainsFunc(ev, func(x *apiv1.MachineEvent) bool {
			return x.GetEvent() == "Phoned Home" && strings.Contains(x.GetMessage(), "allocation "+m.GetAllocation().GetId())
		}), err
	}); err != nil {
		return res, e.failure(ctx, uuid, err)
	}
	res.Reinstall = time.Since(reinstallStart)
	if _, err := e.checkInstalled(ctx, uuid, "web-1", first+1); err != nil {
		return res, e.failure(ctx, uuid, err)
	}
	l.progress("e2e: reinstalled and Phoned Home again in %.1f s", res.Reinstall.Seconds())

	// 5. The tenant switches it off through its BMC, then deletes it:
	//    metal-phonehome cannot reboot a machine that is off, central's
	//    "next boot PXE, reset" reaches metal-bmc, which powers it on
	//    (a reset of a machine that is off is a power-on); it PXE-boots,
	//    is wiped and waits again. Meanwhile a person watches the
	//    installer on its serial console with metalctl.
	if err := l.bmcIntent(ctx, e.api, uuid, powerKind, "power", "off"); err != nil {
		return res, e.failure(ctx, uuid, err)
	}
	if err := waitFor(ctx, 30*time.Second, "metal-bmc reporting "+e.byUUID[uuid]+" off", func() (bool, error) {
		m, err := e.get(ctx, uuid)
		return powerState(m) == "off", err
	}); err != nil {
		return res, e.failure(ctx, uuid, err)
	}
	freeStart := time.Now()
	if _, err := l.metalctl(ctx, "machine", "delete", uuid); err != nil {
		return res, e.failure(ctx, uuid, err)
	}
	// The console is opened after the delete: a change of the allocation
	// ends a console session.
	type consoleRead struct {
		res ConsoleResult
		err error
	}
	console := make(chan consoleRead, 1)
	cctx, stopConsole := context.WithCancel(ctx)
	defer stopConsole()
	go func() {
		r, err := l.readConsole(cctx, uuid, []string{"type=Waiting", "waiting for an allocation", "uuid=" + uuid}, 8*time.Minute)
		console <- consoleRead{r, err}
	}()
	if err := e.waitState(ctx, uuid, apiv1.ProvisioningState_PROVISIONING_STATE_WAITING, 6*time.Minute, func(m *apiv1.Machine) bool {
		return m.GetAllocation() == nil
	}); err != nil {
		return res, e.failure(ctx, uuid, err)
	}
	res.Free = time.Since(freeStart)
	l.progress("e2e: deleted while off; central's PXE and reset intents made metal-bmc power it on, and %s is Waiting again after %.1f s", e.byUUID[uuid], res.Free.Seconds())
	cr := <-console
	res.Console = cr.res
	if cr.err != nil {
		return res, e.failure(ctx, uuid, cr.err)
	}
	l.progress("e2e: metalctl machine console showed %s's installer (%d bytes, first %.1f s after delete, %d sessions): %s",
		e.byUUID[uuid], cr.res.Bytes, cr.res.FirstByte.Seconds(), cr.res.Sessions, strings.TrimSpace(ansiEscape.ReplaceAllString(cr.res.Line, "")))

	// 6. The leased BMCs kept their addresses all along.
	res.BMCLeases, err = l.checkBMCLeases(res.Up.KnownFromBMC)
	return res, err
}

type e2e struct {
	*Lab
	api      apiv1.MachineServiceClient
	switches apiv1.SwitchServiceClient
	byUUID   map[string]string // machine id → node
}

func (e *e2e) get(ctx context.Context, uuid string) (*apiv1.Machine, error) {
	resp, err := e.api.Get(ctx, &apiv1.MachineServiceGetRequest{Id: uuid})
	if err != nil {
		return nil, err
	}
	return resp.GetMachine(), nil
}

// waitState waits for a provisioning state (and more, when also is set).
func (e *e2e) waitState(ctx context.Context, uuid string, want apiv1.ProvisioningState, timeout time.Duration, also func(*apiv1.Machine) bool) error {
	var last string
	err := waitFor(ctx, timeout, fmt.Sprintf("machine %s (%s) %s", e.byUUID[uuid], uuid, want), func() (bool, error) {
		m, err := e.get(ctx, uuid)
		if err != nil {
			return false, err
		}
		last = m.GetProvisioning().String()
		return m.GetProvisioning() == want && (also == nil || also(m)), nil
	})
	if err != nil {
		return fmt.Errorf("%w (last state %s)", err, last)
	}
	return nil
}

// checkFacts compares what the installer reported with the topology.
func (e *e2e) checkFacts(ctx context.Context, node string) error {
	n := e.top.Node(node)
	m, err := e.get(ctx, n.UUID)
	if err != nil {
		return err
	}
	hw := m.GetHardware()
	var problems []string
	if want := e.top.Partition.Sizes[0].ID; len(e.top.Partition.Sizes) == 1 && m.GetSizeId() != want {
		problems = append(problems, fmt.Sprintf("size %q, want %q", m.GetSizeId(), want))
	}
	if hw.GetCores() != uint32(n.CPUs) {
		problems = append(problems, fmt.Sprintf("%d cores, want %d", hw.GetCores(), n.CPUs))
	}
	// The guest kernel keeps some memory for itself.
	if mem, want := hw.GetMemoryBytes(), uint64(n.Memory)<<20; mem > want || mem < want*3/4 {
		problems = append(problems, fmt.Sprintf("memory %d bytes, want about %d", mem, want))
	}
	var macs []string
	for _, nic := range hw.GetNics() {
		macs = append(macs, nic.GetMac())
	}
	for _, iface := range e.top.Ifaces(node) {
		if mac := e.top.MAC(node, iface); !slices.Contains(macs, mac) {
			problems = append(problems, fmt.Sprintf("NIC %s (%s) missing from %v", iface, mac, macs))
		}
	}
	disk, _ := topo.ParseBytes(n.DiskSize)
	if d := hw.GetDisks(); len(d) != 1 || d[0].GetSizeBytes() != uint64(disk) {
		problems = append(problems, fmt.Sprintf("disks %v, want one of %d bytes", d, disk))
	}
	if len(problems) > 0 {
		return fmt.Errorf("facts of %s: %s", node, strings.Join(problems, "; "))
	}
	return nil
}

// allocated returns the id of the machine with this hostname, if any.
func (e *e2e) allocated(ctx context.Context, hostname string) string {
	resp, err := e.api.List(ctx, &apiv1.MachineServiceListRequest{PartitionId: e.top.Partition.ID})
	if err != nil {
		return ""
	}
	for _, m := range resp.GetMachines() {
		if m.GetAllocation().GetHostname() == hostname {
			return m.GetId()
		}
	}
	return ""
}

// checkInstalled verifies an installed, phoned-home machine: central's
// "Phoned Home" names the hostname, and the serial console shows the OS of
// the disk up with the hostname and the allocated IPv4 address, for the
// (n+1)th time. It returns how often the console showed it.
func (e *e2e) checkInstalled(ctx context.Context, uuid, hostname string, n int) (int, error) {
	m, err := e.get(ctx, uuid)
	if err != nil {
		return 0, err
	}
	if m.GetProvisioning() != apiv1.ProvisioningState_PROVISIONING_STATE_PHONED_HOME {
		return 0, fmt.Errorf("state %s, want Phoned Home", m.GetProvisioning())
	}
	ev, err := e.events(ctx, uuid)
	if err != nil {
		return 0, err
	}
	var phoned *apiv1.MachineEvent
	for _, x := range ev {
		if x.GetEvent() == "Phoned Home" {
			phoned = x
		}
	}
	if phoned == nil || !strings.Contains(phoned.GetMessage(), "hostname "+hostname) ||
		!strings.Contains(phoned.GetMessage(), "allocation "+m.GetAllocation().GetId()) {
		return 0, fmt.Errorf("no Phoned Home from %s for allocation %s (last: %v)", hostname, m.GetAllocation().GetId(), phoned)
	}
	var v4 string
	for _, ip := range m.GetAllocation().GetIps() {
		if !strings.Contains(ip, ":") {
			v4 = ip
		}
	}
	if v4 == "" {
		return 0, fmt.Errorf("allocation has no IPv4 address: %v", m.GetAllocation().GetIps())
	}
	line := "metal-lab: " + hostname + " ready:"
	if err := e.waitConsole(ctx, uuid, line, n+1, 30*time.Second); err != nil {
		return 0, err
	}
	lines := consoleLines(e.serialLog(uuid), line)
	if last := lines[len(lines)-1]; !strings.Contains(last, " "+v4+"/") {
		return 0, fmt.Errorf("console shows %q, want the allocated address %s", last, v4)
	}
	return len(lines), nil
}

// checkDiskBoot verifies that the restart booted the disk straight: the
// install done set the disk as the machine's boot device through
// metal-bmc, so its firmware did not PXE-boot (no PXE Booting event after
// since) — on a fabric PXE no longer reaches its ports.
func (e *e2e) checkDiskBoot(ctx context.Context, uuid string, since time.Time) error {
	ev, err := e.events(ctx, uuid)
	if err != nil {
		return err
	}
	for _, x := range ev {
		if x.GetEvent() == "PXE Booting" && x.GetTime().AsTime().After(since.Add(-time.Second)) {
			return fmt.Errorf("the restart PXE-booted (%s), though the install set the disk as its boot device", x.GetMessage())
		}
	}
	return nil
}

func (e *e2e) events(ctx context.Context, uuid string) ([]*apiv1.MachineEvent, error) {
	stream, err := e.api.Events(ctx, &apiv1.MachineServiceEventsRequest{Id: uuid})
	if err != nil {
		return nil, err
	}
	var out []*apiv1.MachineEvent
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if r.GetEvent() != nil {
			out = append(out, r.GetEvent())
		}
	}
}

func (e *e2e) serialLog(uuid string) string {
	return filepath.Join(e.machineDir(e.byUUID[uuid]), "serial.log")
}

// waitConsole waits until line appears at least n times on the console.
func (e *e2e) waitConsole(ctx context.Context, uuid, line string, n int, timeout time.Duration) error {
	return waitFor(ctx, timeout, fmt.Sprintf("%q on the console of %s", line, e.byUUID[uuid]), func() (bool, error) {
		return len(consoleLines(e.serialLog(uuid), line)) >= n, nil
	})
}

func consoleLines(path, prefix string) []string {
	b, _ := os.ReadFile(path)
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if i := strings.Index(l, prefix); i >= 0 {
			out = append(out, strings.TrimRight(l[i:], "\r"))
		}
	}
	return out
}

// ansiEscape matches terminal control sequences: firmware menus are drawn
// with them, which makes a console log unreadable as text.
var ansiEscape = regexp.MustCompile(`\x1b(\[[0-9;=?]*[A-Za-z]|[()][A-Z0-9])`)

// failure wraps err with what a person needs to see why: the machine's
// serial console and central's events for it.
func (e *e2e) failure(ctx context.Context, uuid string, err error) error {
	if uuid == "" {
		return err
	}
	var b strings.Builder
	console := ansiEscape.ReplaceAllString(tail(e.serialLog(uuid), 16<<10), "")
	if len(console) > 8<<10 {
		console = console[len(console)-8<<10:]
	}
	fmt.Fprintf(&b, "%v\n\n--- serial console of %s (%s), last 8 KiB ---\n%s", err, e.byUUID[uuid], e.serialLog(uuid), console)
	out, lerr := e.metalctl(context.WithoutCancel(ctx), "machine", "logs", uuid)
	if lerr != nil {
		out = lerr.Error()
	}
	fmt.Fprintf(&b, "\n--- central's events of %s ---\n%s\n", uuid, out)
	// Again at the end: CI keeps the tail of a log.
	fmt.Fprintf(&b, "\n--- the failure ---\n%v\n", err)
	return errors.New(b.String())
}

// checkKnownFromBMC: before its first PXE boot central knew every machine
// from its BMC alone (known-from-bmc), and metal-bmc found each BMC where
// the topology puts it — a BMC without a fixed address in pixie's leases,
// at an address of the BMC pool; the others in the static list.
func (l *Lab) checkKnownFromBMC(known map[string]KnownBMC) error {
	first, last, _ := l.top.BMCRange()
	for _, m := range l.top.Nodes(topo.KindMachine) {
		k, ok := known[m]
		if !ok {
			return fmt.Errorf("%s: central did not know it from its BMC before the power-on", m)
		}
		if k.Provisioning != "known-from-bmc" {
			return fmt.Errorf("%s: %s before its first PXE boot, want known-from-bmc", m, k.Provisioning)
		}
		want := "static"
		if l.top.LeasedBMC(m) {
			want = "lease"
		}
		if k.Source != want {
			return fmt.Errorf("%s: its BMC %s came from the %s, want the %s", m, k.Address, k.Source, want)
		}
		if want != "lease" {
			continue
		}
		host := k.Address
		if h, _, err := net.SplitHostPort(k.Address); err == nil {
			host = h
		}
		a, err := netip.ParseAddr(host)
		if err != nil || a.Less(first) || last.Less(a) {
			return fmt.Errorf("%s: its leased BMC is at %s, not in pixie's BMC pool %s-%s", m, k.Address, first, last)
		}
	}
	return nil
}

// checkBMCLeases: every leased BMC still holds the address central knew
// it by before the power-on, renewed meanwhile (the lab's leases last
// bmcLeaseTime, the run longer). It returns what each held.
func (l *Lab) checkBMCLeases(known map[string]KnownBMC) (map[string]string, error) {
	out := map[string]string{}
	for _, m := range l.top.Nodes(topo.KindMachine) {
		if !l.top.LeasedBMC(m) {
			continue
		}
		b, err := os.ReadFile(l.bmcLeaseFile(m))
		if err != nil {
			return out, err
		}
		var info redfish.LeaseInfo
		if err := json.Unmarshal(b, &info); err != nil {
			return out, fmt.Errorf("%s: %w", l.bmcLeaseFile(m), err)
		}
		p, err := netip.ParsePrefix(info.Address)
		if err != nil || p.Addr().String() != known[m].Address {
			return out, fmt.Errorf("%s's BMC holds %q at the end, not %s as before the power-on", m, info.Address, known[m].Address)
		}
		if info.Renewals == 0 {
			return out, fmt.Errorf("%s's BMC never renewed its lease of %s (bound %s)", m, info.Address, info.Bound.Format(time.TimeOnly))
		}
		out[m] = fmt.Sprintf("%s from %s, renewed %d times", info.Address, info.Server, info.Renewals)
		l.progress("e2e: %s's BMC kept %s through %d renewals", m, info.Address, info.Renewals)
	}
	return out, nil
}

// ipmiMachine is the topology's first machine behind an IPMI BMC ("" when
// none).
func (l *Lab) ipmiMachine() string {
	for _, m := range l.top.Nodes(topo.KindMachine) {
		if l.top.Node(m).BMC == topo.BMCIPMI {
			return m
		}
	}
	return ""
}
