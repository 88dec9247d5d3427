package lab

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

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
	if len(single) == len(l.top.Nodes(topo.KindMachine)) {
		return errors.New("no dual-attached machine in the topology")
	}
	return nil
}
