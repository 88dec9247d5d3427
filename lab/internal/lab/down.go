package lab

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/metalfleet/metalfleet/lab/internal/netlab"
	"github.com/metalfleet/metalfleet/lab/internal/topo"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Down stops every daemon of the lab (metal-bmc first, then the BMCs, so
// QEMU goes down with its BMC; central last), deletes its namespaces and
// the host's link, and removes the disks, central's database and the
// agents' state and credentials. Logs and serial consoles
// stay for a post-mortem until the next Up.
func (l *Lab) Down(ctx context.Context) error {
	procs := slices.Clone(l.state.Procs)
	// Reverse start order: metal-bmc, machines, pixie, image server,
	// central.
	slices.Reverse(procs)
	var errs []error
	for _, p := range procs {
		if err := p.stop(10 * time.Second); err != nil {
			errs = append(errs, err)
		}
	}
	if err := teardownNetwork(l.top); err != nil {
		errs = append(errs, err)
	}
	for _, m := range l.top.Nodes(topo.KindMachine) {
		// The disk, and an IPMI BMC's configuration and state: they hold
		// the BMC password, which goes with bmc.password.
		for _, f := range []string{"disk.raw", "lan.conf", "sim.emu", "ipmi-state", "bmc-ready", "chassis.sock"} {
			_ = os.RemoveAll(filepath.Join(l.machineDir(m), f))
		}
	}
	for _, d := range []string{l.centralDir(), filepath.Join(l.dir, "pixie"), filepath.Join(l.dir, "pixie.token"),
		l.metalBMCStateDir(), l.metalBMCTokenFile(), l.bmcPasswordFile(), l.EnvFile()} {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) == 0 && len(l.state.Procs) > 0 {
		l.state.Procs, l.state.Up = nil, false
		if err := l.state.save(l.statePath()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Status writes what runs, which namespaces exist and what central knows
// about the machines.
func (l *Lab) Status(ctx context.Context, w io.Writer) error {
	fmt.Fprintf(w, "lab %s (%s), state in %s\n\n", l.top.Name, l.cfg.TopologyFile, l.dir)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROCESS\tPID\tNAMESPACE\tSTATE\tLOG")
	running := 0
	for _, p := range l.state.Procs {
		st := "exited"
		if p.Alive() {
			st = "running"
			running++
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", p.Name, p.PID, p.NS, st, p.Log)
	}
	_ = tw.Flush()
	ns, err := netlab.ListNS(l.top.NamespacePrefix())
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\nnamespaces: %s\n", strings.Join(ns, " "))
	if running == 0 {
		fmt.Fprintln(w, "\nthe lab is down (make lab starts it)")
		return nil
	}
	// The power as metal-bmc last read it from the BMC and reported it to
	// central (what `metalctl machine describe` shows), not the BMC asked
	// behind metal-bmc's back.
	api, closeAPI, err := l.machineAPI()
	if err != nil {
		return err
	}
	defer closeAPI()
	for _, m := range l.top.Nodes(topo.KindMachine) {
		ps, bmc := "unknown", l.bmcEndpoint(m)
		resp, err := api.Get(ctx, &apiv1.MachineServiceGetRequest{Id: l.top.Node(m).UUID})
		if err != nil {
			ps += ": " + err.Error()
		} else {
			ps = powerState(resp.GetMachine())
			// Where metal-bmc found it: the static list or a lease.
			if b := resp.GetMachine().GetBmc(); b.GetAddress() != "" {
				bmc = b.GetAddress() + " (" + b.GetSource() + ")"
			}
		}
		fmt.Fprintf(w, "machine %s (uuid %s): power %s, BMC %s, console %s\n", m, l.top.Node(m).UUID, ps,
			bmc, filepath.Join(l.machineDir(m), "serial.log"))
	}
	out, err := l.metalctl(ctx, "machine", "list")
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%s\n", out)
	return nil
}
