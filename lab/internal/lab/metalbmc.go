package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/lab/internal/client"
	"github.com/metalfleet/metalfleet/lab/internal/redfish"
	"github.com/metalfleet/metalfleet/lab/internal/topo"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// The lab powers no machine itself: the partition's real metal-bmc does,
// for central. Up sets the partition's BMC settings with metalctl (the
// BMCs' user and password, the BMCs as static Redfish endpoints), enrols
// metal-bmc and starts it on the management network, in pixie's
// namespace — the partition's management server, where an operator runs
// both agents. Every power or boot change after that is an intent raised
// in central (`metalctl machine power on|off|reset|cycle`, or central's
// own on free and reinstall) that metal-bmc executes through bmclib.

// bmcPollInterval is how often metal-bmc reads each lab BMC (central's
// partition setting). Shorter than metal-bmc's default minute, so that
// `metal-lab status` and the e2e see a power change within seconds; a lab
// has two or three BMCs, a few requests each.
const bmcPollInterval = "5s"

// powerKind is the kind of a machine's power intent.
const powerKind = agentv1.BmcIntentKind_BMC_INTENT_KIND_POWER

func (l *Lab) metalBMCName() string      { return "bmc-" + l.top.Name }
func (l *Lab) bmcPasswordFile() string   { return filepath.Join(l.dir, "bmc.password") }
func (l *Lab) metalBMCTokenFile() string { return filepath.Join(l.dir, "metal-bmc.token") }
func (l *Lab) metalBMCStateDir() string  { return filepath.Join(l.dir, "metal-bmc") }

// writeBMCPassword makes the lab's BMC password: one for all BMCs of the
// partition, as central holds one user and password per partition. 16
// hex digits (64 bits): the one password serves the IPMI BMCs too, and
// IPMI 1.5 passwords are 16 bytes (2.0's 20; ipmi_sim keeps 19).
func (l *Lab) writeBMCPassword() error {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	return os.WriteFile(l.bmcPasswordFile(), []byte(hex.EncodeToString(b)), 0o600)
}

// bmcLeaseTime is the lease pixie gives the lab's BMCs: short, so that
// every run renews them a few times (a BMC network leases for hours).
const bmcLeaseTime = "2m"

func (l *Lab) bmcLeaseFile(machine string) string {
	return filepath.Join(l.machineDir(machine), "bmc-lease.json")
}

// bmcHost is the address of a machine's BMC: its fixed one, or the one it
// leased, from the lease file it writes.
func (l *Lab) bmcHost(machine string) (string, error) {
	if !l.top.LeasedBMC(machine) {
		return l.top.Node(machine).BMCIPv4, nil
	}
	b, err := os.ReadFile(l.bmcLeaseFile(machine))
	if err != nil {
		return "", err
	}
	var info redfish.LeaseInfo
	if err := json.Unmarshal(b, &info); err != nil {
		return "", fmt.Errorf("%s: %w", l.bmcLeaseFile(machine), err)
	}
	p, err := netip.ParsePrefix(info.Address)
	if err != nil {
		return "", fmt.Errorf("%s: no address leased (yet)", l.bmcLeaseFile(machine))
	}
	return p.Addr().String(), nil
}

// bmcEndpoint is a machine's BMC as metal-bmc reaches it on the
// management network: Redfish over HTTPS, or IPMI over LAN (host:623).
func (l *Lab) bmcEndpoint(machine string) string {
	host, err := l.bmcHost(machine)
	if err != nil {
		return "(address by DHCP, not known: " + err.Error() + ")"
	}
	if l.top.Node(machine).BMC == topo.BMCIPMI {
		return net.JoinHostPort(host, "623")
	}
	return "https://" + net.JoinHostPort(host, "443")
}

// startMetalBMC gives central the partition's BMC settings, enrols
// metal-bmc, starts it and waits until central knows every machine's BMC
// from it and can reach it — found where the topology says: a fixed
// address in the static list, or a lease of pixie's. It returns how
// central knew each machine then, before its first PXE boot.
func (l *Lab) startMetalBMC(ctx context.Context) (map[string]KnownBMC, error) {
	t, p := l.top, l.top.Partition
	machines := t.Nodes(topo.KindMachine)
	set := []string{"partition", "bmc", "set", p.ID, "--user", t.Node(machines[0]).BMCUser,
		"--password-file", l.bmcPasswordFile(), "--poll-interval", bmcPollInterval}
	var static, leased []string
	ipmi := false
	for _, m := range machines {
		switch {
		case t.LeasedBMC(m):
			leased = append(leased, m)
		case t.Node(m).BMC == topo.BMCIPMI:
			static, ipmi = append(static, m+" (IPMI)"), true
			set = append(set, "--static-ipmi", l.bmcEndpoint(m))
		default:
			static = append(static, m)
			set = append(set, "--static", l.bmcEndpoint(m))
		}
	}
	pixieDir := filepath.Join(l.dir, "pixie")
	metalBMC := []string{l.bin("metal-bmc"), "--name", l.metalBMCName(),
		"--central", l.centralAddr(), "--ca", filepath.Join(l.centralDir(), "ca.crt"), "--token-file", l.metalBMCTokenFile(),
		"--state-dir", l.metalBMCStateDir(), "--metrics-listen", net.JoinHostPort(t.Node(t.Pixie()).MgmtIPv4, "2113"),
		// The lab's BMCs serve their serial console on SSH's own port.
		"--console-ssh-port", "22"}
	if ipmi {
		// ipmi_sim speaks cipher suite 3 only (as mini-lab's ipmitool
		// -C 3): pinned, no attempt with 17 first.
		metalBMC = append(metalBMC, "--ipmi-cipher-suite", "3")
	}
	if _, _, ok := t.BMCRange(); ok {
		// The BMC network's leases are pixie's: metal-bmc reads its
		// lease file (it shares pixie's namespace, the management
		// server), and only the BMC network's prefix counts — the same
		// file holds the machines' PXE leases.
		set = append(set, "--lease-cidr", netip.MustParsePrefix(t.Mgmt.IPv4Subnet).Masked().String())
		metalBMC = append(metalBMC, "--lease-file", filepath.Join(pixieDir, "leases.json"))
	}
	if _, err := l.metalctl(ctx, set...); err != nil {
		return nil, err
	}
	secret, err := l.metalctl(ctx, "agent", "enroll", "--kind", "bmc", "--identity", l.metalBMCName(), "--partition", p.ID,
		"-o", "template", "--template", "{{.secret}}")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(l.metalBMCTokenFile(), []byte(secret), 0o600); err != nil {
		return nil, err
	}
	n := t.Node(t.Pixie())
	l.progress("metal-bmc: the partition's BMC agent on %s (pixie's namespace): static %s, leased %s",
		n.MgmtIPv4, orNone(static), orNone(leased))
	proc, err := l.spawn("metal-bmc", t.Namespace(t.Pixie()), metalBMC)
	if err != nil {
		return nil, err
	}
	api, closeAPI, err := l.machineAPI()
	if err != nil {
		return nil, err
	}
	defer closeAPI()
	known := map[string]KnownBMC{}
	for _, m := range machines {
		uuid, want := t.Node(m).UUID, "static"
		if t.LeasedBMC(m) {
			want = "lease"
		}
		var last string
		if err := waitFor(ctx, 2*time.Minute, fmt.Sprintf("central knowing %s's BMC %s from metal-bmc by its %s (log: %s)", m, l.bmcEndpoint(m), want, proc.Log), func() (bool, error) {
			if !proc.Alive() {
				return false, fmt.Errorf("metal-bmc exited: %s", tail(proc.Log, 2000))
			}
			resp, err := api.Get(ctx, &apiv1.MachineServiceGetRequest{Id: uuid})
			if err != nil {
				return false, err
			}
			b := resp.GetMachine().GetBmc()
			last = b.GetLastError()
			if !b.GetReachable() || b.GetSource() != want {
				return false, nil
			}
			known[m] = KnownBMC{Address: b.GetAddress(), Source: b.GetSource(), Provisioning: provisioning(resp.GetMachine())}
			return true, nil
		}); err != nil {
			if last != "" {
				err = fmt.Errorf("%w (metal-bmc: %s)", err, last)
			}
			return nil, err
		}
		l.progress("metal-bmc: central knows %s from its BMC at %s (%s), %s", m, known[m].Address, known[m].Source, known[m].Provisioning)
	}
	return known, nil
}

// KnownBMC is how central knew a machine from metal-bmc before the lab
// powered it on.
type KnownBMC struct {
	Address string // the BMC's, as metal-bmc polled it
	Source  string // static or lease
	// Provisioning is the machine's state in central then: known-from-bmc
	// for a machine that never PXE-booted.
	Provisioning string
}

// provisioning is a machine's provisioning state as metalctl names it.
func provisioning(m *apiv1.Machine) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(m.GetProvisioning().String(), "PROVISIONING_STATE_")), "_", "-")
}

func orNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

// machineAPI dials central's machine API as the admin.
func (l *Lab) machineAPI() (apiv1.MachineServiceClient, func(), error) {
	cc, err := client.Dial(l.centralAddr(), filepath.Join(l.centralDir(), "ca.crt"), filepath.Join(l.centralDir(), "admin.token"))
	if err != nil {
		return nil, nil, err
	}
	return apiv1.NewMachineServiceClient(cc), func() { _ = cc.Close() }, nil
}

// bmcResult is the newest result metal-bmc reported for a machine's
// intent of kind (nil before the first).
func bmcResult(m *apiv1.Machine, kind agentv1.BmcIntentKind) *agentv1.BmcIntentResult {
	for _, r := range m.GetBmcResults() {
		if r.GetKind() == kind {
			return r
		}
	}
	return nil
}

// bmcIntent raises one of a machine's BMC intents the way an operator
// does (`metalctl machine power on ID`: args "power", "on") and waits
// until metal-bmc reports it finished; a failed intent is an error with
// metal-bmc's message.
func (l *Lab) bmcIntent(ctx context.Context, api apiv1.MachineServiceClient, uuid string, kind agentv1.BmcIntentKind, args ...string) error {
	in, err := l.raise(ctx, api, uuid, kind, args...)
	if err != nil {
		return err
	}
	return in.wait(ctx, api)
}

// raised is an intent raised with metalctl, to wait for.
type raised struct {
	uuid, what string
	kind       agentv1.BmcIntentKind
	before     uint64 // the generation of the newest result before
}

// raise raises the intent with metalctl. The intent raised is the
// machine's newest of its kind, so the first result newer than the one
// before the call is its own (or that of one central raised meanwhile,
// which did the same job).
func (l *Lab) raise(ctx context.Context, api apiv1.MachineServiceClient, uuid string, kind agentv1.BmcIntentKind, args ...string) (raised, error) {
	in := raised{uuid: uuid, kind: kind, what: "metalctl machine " + strings.Join(args, " ") + " " + uuid}
	resp, err := api.Get(ctx, &apiv1.MachineServiceGetRequest{Id: uuid})
	if err != nil {
		return in, err
	}
	in.before = bmcResult(resp.GetMachine(), kind).GetGeneration()
	_, err = l.metalctl(ctx, append(append([]string{"machine"}, args...), uuid)...)
	return in, err
}

// wait waits until metal-bmc reported the intent finished.
func (in raised) wait(ctx context.Context, api apiv1.MachineServiceClient) error {
	var res *agentv1.BmcIntentResult
	if err := waitFor(ctx, 2*time.Minute, in.what+" executed by metal-bmc", func() (bool, error) {
		resp, err := api.Get(ctx, &apiv1.MachineServiceGetRequest{Id: in.uuid})
		if err != nil {
			return false, err
		}
		res = bmcResult(resp.GetMachine(), in.kind)
		return res.GetGeneration() > in.before && res.GetOutcome() != agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_PENDING, nil
	}); err != nil {
		if res != nil {
			err = fmt.Errorf("%w (last result: generation %d %s: %s)", err, res.GetGeneration(), res.GetOutcome(), res.GetMessage())
		}
		return err
	}
	if res.GetOutcome() != agentv1.BmcIntentOutcome_BMC_INTENT_OUTCOME_SUCCEEDED {
		return fmt.Errorf("%s: generation %d %s: %s", in.what, res.GetGeneration(), res.GetOutcome(), res.GetMessage())
	}
	return nil
}

// powerOn raises every machine's power-on intent in central — the
// machines are known to central only from their BMCs yet; an admin may
// raise their intents — and waits until metal-bmc executed them. It
// returns when the first was raised.
func (l *Lab) powerOn(ctx context.Context) (time.Time, error) {
	api, closeAPI, err := l.machineAPI()
	if err != nil {
		return time.Time{}, err
	}
	defer closeAPI()
	machines := l.top.Nodes(topo.KindMachine)
	l.progress("power: metalctl machine power on %s; metal-bmc powers them on through their BMCs", strings.Join(machines, ", "))
	at := time.Now()
	var all []raised
	for _, m := range machines {
		in, err := l.raise(ctx, api, l.top.Node(m).UUID, powerKind, "power", "on")
		if err != nil {
			return at, err
		}
		all = append(all, in)
	}
	for _, in := range all {
		if err := in.wait(ctx, api); err != nil {
			return at, err
		}
	}
	return at, nil
}

// powerState is a machine's power as metal-bmc last reported it to
// central: "on", "off", or why it is not known.
func powerState(m *apiv1.Machine) string {
	b := m.GetBmc()
	switch {
	case b == nil:
		return "unknown (metal-bmc has not reported its BMC)"
	case !b.GetReachable():
		return "unknown (BMC unreachable: " + b.GetLastError() + ")"
	}
	switch b.GetPowerState() {
	case agentv1.BmcPowerState_BMC_POWER_STATE_ON:
		return "on"
	case agentv1.BmcPowerState_BMC_POWER_STATE_OFF:
		return "off"
	}
	return "unknown"
}
