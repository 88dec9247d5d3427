package lab

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/metalfleet/metalfleet/lab/internal/topo"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// FabricResult is what the fabric part of an end-to-end run measured.
type FabricResult struct {
	// Fabric is the leaves registered until every leaf's uplinks are
	// Established and EVPN routes arrived.
	Fabric time.Duration
	// Attached lists each machine's switch connections as central saw
	// them: "leaf01/Ethernet0".
	Attached map[string][]string
	// Probe: what the tenant probe saw.
	Probe ProbeResult
	// Failover: a leaf's restart until the installed system phoned home
	// through the other leaf's relay.
	Failover time.Duration
}

// checkFabric waits until every leaf's uplink sessions are Established
// over BGP unnumbered with a spine, and each leaf accepted EVPN routes (the
// other leaf's PXE VNI at least).
func (e *e2e) checkFabric(ctx context.Context) error {
	for _, leaf := range e.top.Nodes(topo.KindLeaf) {
		var last string
		err := waitFor(ctx, 3*time.Minute, "BGP and EVPN of "+leaf, func() (bool, error) {
			sw, err := e.switches.Get(ctx, &apiv1.SwitchServiceGetRequest{Id: leaf})
			if err != nil {
				return false, err
			}
			ok, why := fabricUp(e.top, leaf, sw.GetSwitch())
			last = why
			return ok, nil
		})
		if err != nil {
			return fmt.Errorf("%w: %s", err, last)
		}
	}
	return nil
}

// fabricUp tells whether a leaf's every uplink has an Established session
// with the spine at its other end that sent EVPN routes, and if not why.
func fabricUp(t *topo.Topology, leaf string, sw *apiv1.Switch) (bool, string) {
	for _, iface := range t.Ifaces(leaf) {
		peer, ok := t.Peer(leaf, iface)
		if !ok || t.Node(peer.Node).Kind != topo.KindSpine {
			continue
		}
		port, _ := topo.SONiCPort(iface)
		i := slices.IndexFunc(sw.GetBgpSessions(), func(s *apiv1.SwitchBgpSession) bool {
			return s.GetPort() == port && s.GetVrf() == "default"
		})
		if i < 0 {
			return false, fmt.Sprintf("%s reports no BGP session on %s (sessions: %v)", leaf, port, sw.GetBgpSessions())
		}
		s := sw.GetBgpSessions()[i]
		if s.GetState() != "established" || s.GetRemoteHostname() != peer.Node {
			return false, fmt.Sprintf("%s %s: session %s with %q, want established with %s", leaf, port, s.GetState(), s.GetRemoteHostname(), peer.Node)
		}
		evpn := slices.IndexFunc(s.GetAddressFamilies(), func(f *agentv1.BgpAddressFamilyFact) bool { return f.GetName() == "l2VpnEvpn" })
		if evpn < 0 || s.GetAddressFamilies()[evpn].GetPrefixesAccepted() == 0 {
			return false, fmt.Sprintf("%s %s: no EVPN routes accepted from %s (%v)", leaf, port, peer.Node, s.GetAddressFamilies())
		}
	}
	return true, ""
}

// checkAttached verifies each machine's connections: a machine with a link
// to each of two leaves is dual attached, sits in their rack and has no
// attach issue; a machine with one link has the issue naming it.
func (e *e2e) checkAttached(ctx context.Context, res *FabricResult) error {
	res.Attached = map[string][]string{}
	for _, m := range e.top.Nodes(topo.KindMachine) {
		uuid := e.top.Node(m).UUID
		want := map[string]string{} // leaf → SONiC port
		var rack string
		for _, iface := range e.top.Ifaces(m) {
			p, _ := e.top.Peer(m, iface)
			port, _ := topo.SONiCPort(p.Iface)
			want[p.Node] = port
			rack = e.top.Node(p.Node).Rack
		}
		var why string
		err := waitFor(ctx, time.Minute, "switch connections of "+m, func() (bool, error) {
			var got []string
			for leaf, port := range want {
				sw, err := e.switches.Get(ctx, &apiv1.SwitchServiceGetRequest{Id: leaf})
				if err != nil {
					return false, err
				}
				i := slices.IndexFunc(sw.GetSwitch().GetPorts(), func(p *apiv1.SwitchPort) bool { return p.GetName() == port })
				if i < 0 || sw.GetSwitch().GetPorts()[i].GetMachineId() != uuid {
					why = fmt.Sprintf("%s %s does not name %s", leaf, port, uuid)
					return false, nil
				}
				got = append(got, leaf+"/"+port)
			}
			slices.Sort(got)
			res.Attached[m] = got
			mach, err := e.get(ctx, uuid)
			if err != nil {
				return false, err
			}
			single := slices.IndexFunc(mach.GetIssues(), func(i *apiv1.MachineIssue) bool { return i.GetId() == "not-dual-attached" })
			switch {
			case rack != "" && mach.GetRack() != rack:
				why = fmt.Sprintf("rack %q, want %q", mach.GetRack(), rack)
				return false, nil
			case len(want) >= 2 && single >= 0:
				why = "dual attached, but has the issue " + mach.GetIssues()[single].GetDescription()
				return false, nil
			case len(want) < 2 && single < 0:
				why = "linked to one switch only, but has no not-dual-attached issue"
				return false, nil
			}
			return true, nil
		})
		if err != nil {
			return fmt.Errorf("%w: %s", err, why)
		}
	}
	return nil
}

// checkRefused allocates the single-linked machine by id: central must
// refuse it, naming the missing link.
func (e *e2e) checkRefused(ctx context.Context, node string) error {
	p := e.top.Partition
	out, err := e.metalctl(ctx, "machine", "create", "--id", e.top.Node(node).UUID, "--project", e.state.Project,
		"--partition", p.ID, "--size", p.Sizes[0].ID, "--image", p.Images[0].ID, "--networks", p.Networks[0].ID, "--hostname", "refused-1")
	if err == nil {
		return fmt.Errorf("the single-linked %s was allocated: %s", node, out)
	}
	if !strings.Contains(out, "dual") && !strings.Contains(out, "attached") {
		return fmt.Errorf("allocating the single-linked %s failed, but not for its missing link: %s", node, out)
	}
	return nil
}

// e2eFabric is the end-to-end run of a fabric: the leaves register and
// peer with the spine, EVPN routes flow, machines PXE-boot through the
// leaves' DHCP relays and register with both their switch connections and
// rack, the single-linked one is refused.
func (l *Lab) e2eFabric(ctx context.Context, e *e2e, res *Result) error {
	start := time.Now()
	if err := e.checkFabric(ctx); err != nil {
		return err
	}
	res.Fabric.Fabric = time.Since(start)
	l.progress("e2e: leaves peer with the spine over IPv6 link-local, EVPN routes arrived (%.1f s after the leaves registered)", res.Fabric.Fabric.Seconds())
	var single []string
	for _, m := range l.top.Nodes(topo.KindMachine) {
		uuid := l.top.Node(m).UUID
		if err := e.waitState(ctx, uuid, apiv1.ProvisioningState_PROVISIONING_STATE_WAITING, 6*time.Minute, nil); err != nil {
			return e.failure(ctx, uuid, err)
		}
		res.Waiting[m] = time.Since(res.Up.PoweredOn)
		l.progress("e2e: %s PXE-booted through the leaves' relays and is Waiting %.1f s after power-on", m, res.Waiting[m].Seconds())
		if err := e.checkFacts(ctx, m); err != nil {
			return e.failure(ctx, uuid, err)
		}
		if len(l.top.Ifaces(m)) < 2 {
			single = append(single, m)
		}
	}
	if err := e.checkAttached(ctx, &res.Fabric); err != nil {
		return err
	}
	for m, c := range res.Fabric.Attached {
		l.progress("e2e: %s connected to %s", m, strings.Join(c, ", "))
	}
	for _, m := range single {
		if err := e.checkRefused(ctx, m); err != nil {
			return e.failure(ctx, l.top.Node(m).UUID, err)
		}
		l.progress("e2e: %s (one link) is registered and refused for allocation", m)
	}
	var dual string
	for _, m := range l.top.Nodes(topo.KindMachine) {
		if len(l.top.Ifaces(m)) >= 2 {
			dual = m
			break
		}
	}
	if dual == "" {
		return errors.New("no dual-attached machine in the topology")
	}
	uuid := l.top.Node(dual).UUID

	// A tenant's network (its own VRF) and a machine allocated into it: it
	// installs over the PXE VLAN; at "install done" both its leaf ports
	// move into the VRF; its installed system phones home through the
	// leaves' agent relay, its only way to central from there.
	netID, vni, prefixes, err := e.tenant(ctx, "tenant-1")
	if err != nil {
		return err
	}
	vrf := fmt.Sprintf("Vrf%d", vni)
	p := l.top.Partition
	allocStart := time.Now()
	out, err := l.metalctl(ctx, "machine", "create", "--id", uuid, "--project", l.state.Project, "--partition", p.ID,
		"--size", p.Sizes[0].ID, "--image", p.Images[0].ID, "--networks", netID, "--hostname", "web-1", "--wait", "--wait-timeout", "10m")
	res.Allocate = time.Since(allocStart)
	if err != nil {
		return e.failure(ctx, uuid, fmt.Errorf("%w: %s", err, out))
	}
	l.progress("e2e: %s allocated into %s and Phoned Home through the leaves' relay %.1f s after create", dual, vrf, res.Allocate.Seconds())
	if err := e.checkPorts(ctx, dual, vrf); err != nil {
		return e.failure(ctx, uuid, err)
	}
	l.progress("e2e: both leaf ports of %s are routed in %s (CONFIG_DB and the leaves' Linux)", dual, vrf)

	// From the tenant VRF nothing on the management side answers; the
	// relay does, with central's certificate.
	pr, err := l.probeTenant(ctx, dual, l.top.Ifaces(dual)[0], prefixes)
	if err != nil {
		return e.failure(ctx, uuid, fmt.Errorf("tenant isolation: %w", err))
	}
	res.Fabric.Probe = pr
	l.progress("e2e: from %s's tenant port: %d management endpoints refused (%s); the relay %s answered with central's certificate",
		dual, len(pr.Refused), strings.Join(pr.Refused, " "), pr.Relay)

	// The leaf whose relay carries the installed system's stream now
	// restarts: the system reaches central through the other leaf's relay.
	// (Which one it is depends on which router metal-phonehome tried
	// first; restarting the idle one would prove nothing.)
	// Exactly one relay must hold it (the probe's connection just now
	// may take a moment to close).
	var leaf, other string
	if err := waitFor(ctx, time.Minute, "exactly one leaf relay carrying "+dual+"'s stream", func() (bool, error) {
		lps := e.leafPorts(dual)
		var carrying []int
		for i, lp := range lps {
			n, err := e.relayMetric(ctx, lp[0], "metalfleet_metalcore_relay_open_connections")
			if err != nil {
				return false, err
			}
			if n > 0 {
				carrying = append(carrying, i)
			}
		}
		if len(carrying) != 1 || len(lps) != 2 {
			return false, nil
		}
		leaf, other = lps[carrying[0]][0], lps[1-carrying[0]][0]
		return true, nil
	}); err != nil {
		return e.failure(ctx, uuid, err)
	}
	before, err := e.relayMetric(ctx, other, "metalfleet_metalcore_relay_connections_total")
	if err != nil {
		return err
	}
	failStart := time.Now()
	if err := l.restartRouter(ctx, leaf); err != nil {
		return err
	}
	if err := waitFor(ctx, 3*time.Minute, fmt.Sprintf("%s phoning home through %s's relay while %s restarts", dual, other, leaf), func() (bool, error) {
		n, err := e.relayMetric(ctx, other, "metalfleet_metalcore_relay_connections_total")
		return n > before, err
	}); err != nil {
		return e.failure(ctx, uuid, err)
	}
	res.Fabric.Failover = time.Since(failStart)
	l.progress("e2e: %s restarted; %s reconnected through %s's relay in %.1f s", leaf, dual, other, res.Fabric.Failover.Seconds())
	if err := l.waitRoutersUp(ctx, 4*time.Minute); err != nil {
		return err
	}
	if err := l.provisionLeaf(ctx, leaf); err != nil {
		return err
	}
	if err := e.checkPorts(ctx, dual, vrf); err != nil {
		return e.failure(ctx, uuid, fmt.Errorf("after %s's restart: %w", leaf, err))
	}

	// Freeing: the ports go back to the PXE VLAN, the machine reboots into
	// the installer (central's reboot intent reaches it through the relay)
	// and waits again.
	freeStart := time.Now()
	if _, err := l.metalctl(ctx, "machine", "delete", uuid); err != nil {
		return e.failure(ctx, uuid, err)
	}
	if err := e.waitState(ctx, uuid, apiv1.ProvisioningState_PROVISIONING_STATE_WAITING, 8*time.Minute, func(m *apiv1.Machine) bool {
		return m.GetAllocation() == nil
	}); err != nil {
		return e.failure(ctx, uuid, err)
	}
	res.Free = time.Since(freeStart)
	if err := e.checkPorts(ctx, dual, ""); err != nil {
		return e.failure(ctx, uuid, err)
	}
	l.progress("e2e: freed: %s's ports are back in the PXE VLAN and it is Waiting again after %.1f s", dual, res.Free.Seconds())
	return nil
}

// relayMetric is the sum of a metric of a leaf's agent relay over its
// ports (metal-core's metrics on the leaf's management address).
func (e *e2e) relayMetric(ctx context.Context, leaf, metric string) (float64, error) {
	url := "http://" + net.JoinHostPort(e.top.Node(leaf).MgmtIPv4, "2112") + "/metrics"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, fmt.Errorf("metal-core metrics of %s: %w", leaf, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return 0, err
	}
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		if name, _, _ := strings.Cut(line, " "); name == metric || strings.HasPrefix(name, metric+"{") {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err == nil {
				sum += v
			}
		}
	}
	return sum, nil
}

// tenant allocates a tenant network (a child of the partition's super
// network: its own VRF on the leaves) and returns its id and VNI.
func (e *e2e) tenant(ctx context.Context, name string) (string, uint32, []string, error) {
	out, err := e.metalctl(ctx, "network", "allocate", "--project", e.state.Project, "--partition", e.top.Partition.ID, "--name", name, "-o", "json")
	if err != nil {
		return "", 0, nil, err
	}
	var n struct {
		ID       string   `json:"id"`
		VRF      uint32   `json:"vrf"`
		Prefixes []string `json:"prefixes"`
	}
	if err := json.Unmarshal([]byte(out), &n); err != nil || n.ID == "" || n.VRF == 0 {
		return "", 0, nil, fmt.Errorf("network allocate: %v: %s", err, out)
	}
	return n.ID, n.VRF, n.Prefixes, nil
}

// leafPorts are the (leaf, SONiC port) pairs a machine is linked to.
func (e *e2e) leafPorts(machine string) [][2]string {
	var out [][2]string
	for _, iface := range e.top.Ifaces(machine) {
		p, _ := e.top.Peer(machine, iface)
		port, _ := topo.SONiCPort(p.Iface)
		out = append(out, [2]string{p.Node, port})
	}
	return out
}

// checkPorts verifies where a machine's leaf ports are, in CONFIG_DB (what
// metal-core wrote) and in the leaf's Linux (what the emulation rendered):
// routed in vrf, or (vrf "") untagged members of the PXE VLAN.
func (e *e2e) checkPorts(ctx context.Context, machine, vrf string) error {
	var why string
	err := waitFor(ctx, time.Minute, fmt.Sprintf("%s's leaf ports in %s", machine, cmp.Or(vrf, "the PXE VLAN")), func() (bool, error) {
		for _, lp := range e.leafPorts(machine) {
			leaf, port := lp[0], lp[1]
			rows, err := readConfigDB(ctx, net.JoinHostPort(e.top.Node(leaf).MgmtIPv4, "6379"),
				"INTERFACE|"+port, fmt.Sprintf("VLAN_MEMBER|Vlan%d|%s", pxeVLAN, port))
			if err != nil {
				return false, err
			}
			intf, member := rows[0], rows[1]
			linux, err := e.RouterExec(ctx, leaf, "ip -o link show dev "+port)
			if err != nil {
				return false, err
			}
			if vrf != "" {
				if intf["vrf_name"] != vrf || len(member) > 0 {
					why = fmt.Sprintf("%s CONFIG_DB: INTERFACE|%s %v, VLAN_MEMBER %v; want routed in %s", leaf, port, intf, member, vrf)
					return false, nil
				}
				if !strings.Contains(linux, "master "+vrf+" ") {
					why = fmt.Sprintf("%s Linux: %s not in %s: %s", leaf, port, vrf, strings.TrimSpace(linux))
					return false, nil
				}
				continue
			}
			if len(intf) > 0 || member["tagging_mode"] != "untagged" {
				why = fmt.Sprintf("%s CONFIG_DB: INTERFACE|%s %v, VLAN_MEMBER %v; want an untagged member of the PXE VLAN", leaf, port, intf, member)
				return false, nil
			}
			if !strings.Contains(linux, "master Bridge ") {
				why = fmt.Sprintf("%s Linux: %s not in the bridge: %s", leaf, port, strings.TrimSpace(linux))
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%w: %s", err, why)
	}
	return nil
}

// readConfigDB reads rows of CONFIG_DB (database 4) at addr.
func readConfigDB(ctx context.Context, addr string, keys ...string) ([]map[string]string, error) {
	c := redis.NewClient(&redis.Options{Addr: addr, DB: 4, DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, MaxRetries: -1})
	defer c.Close()
	out := make([]map[string]string, len(keys))
	for i, k := range keys {
		m, err := c.HGetAll(ctx, k).Result()
		if err != nil {
			return nil, fmt.Errorf("CONFIG_DB at %s: %s: %w", addr, k, err)
		}
		out[i] = m
	}
	return out, nil
}
