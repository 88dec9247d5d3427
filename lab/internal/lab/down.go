package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/stmcginnis/gofish"
	"github.com/stmcginnis/gofish/redfish"

	"github.com/metalfleet/metalfleet/lab/internal/netlab"
	"github.com/metalfleet/metalfleet/lab/internal/topo"
)

// Down stops every daemon of the lab (BMCs first, so QEMU goes down with
// its BMC; central last), deletes its namespaces and the host's link, and
// removes the disks and central's database. Logs and serial consoles
// stay for a post-mortem until the next Up.
func (l *Lab) Down(ctx context.Context) error {
	procs := slices.Clone(l.state.Procs)
	// Reverse start order: machines, pixie, image server, central.
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
		_ = os.Remove(filepath.Join(l.machineDir(m), "disk.raw"))
	}
	for _, d := range []string{l.centralDir(), filepath.Join(l.dir, "pixie"), filepath.Join(l.dir, "pixie.token"), l.EnvFile()} {
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
	for _, m := range l.top.Nodes(topo.KindMachine) {
		ps, err := l.PowerState(ctx, m)
		if err != nil {
			ps = "unknown: " + err.Error()
		}
		fmt.Fprintf(w, "machine %s (uuid %s): power %s, BMC https://%s, console %s\n", m, l.top.Node(m).UUID, ps,
			l.top.Node(m).BMCIPv4, filepath.Join(l.machineDir(m), "serial.log"))
	}
	out, err := l.metalctl(ctx, "machine", "list")
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "\n%s\n", out)
	return nil
}

// bmc logs in to a machine's Redfish BMC, trusting exactly the
// certificate that BMC made for itself.
func (l *Lab) bmc(ctx context.Context, machine string) (*gofish.APIClient, *redfish.ComputerSystem, error) {
	n, ok := l.top.Topology.Nodes[machine]
	if !ok || n.Kind != topo.KindMachine {
		return nil, nil, fmt.Errorf("no machine %q in the topology (machines: %s)", machine, strings.Join(l.top.Nodes(topo.KindMachine), ", "))
	}
	dir := l.machineDir(machine)
	pem, err := os.ReadFile(filepath.Join(dir, "bmc.crt"))
	if err != nil {
		return nil, nil, fmt.Errorf("BMC of %s: %w", machine, err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, nil, fmt.Errorf("BMC of %s: no certificate in bmc.crt", machine)
	}
	pw, err := os.ReadFile(filepath.Join(dir, "bmc.password"))
	if err != nil {
		return nil, nil, fmt.Errorf("BMC of %s: %w", machine, err)
	}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}
	c, err := gofish.ConnectContext(ctx, gofish.ClientConfig{Endpoint: "https://" + net.JoinHostPort(n.BMCIPv4, "443"),
		Username: n.BMCUser, Password: strings.TrimSpace(string(pw)), HTTPClient: hc})
	if err != nil {
		return nil, nil, fmt.Errorf("BMC of %s: log in: %w", machine, err)
	}
	systems, err := c.Service.Systems()
	if err != nil || len(systems) != 1 {
		c.Logout()
		return nil, nil, fmt.Errorf("BMC of %s: want one system, have %d (%v)", machine, len(systems), err)
	}
	return c, systems[0], nil
}

// Power sends a Redfish reset (On, ForceOff, GracefulShutdown,
// ForceRestart, PowerCycle) to a machine's BMC.
func (l *Lab) Power(ctx context.Context, machine, action string) error {
	c, sys, err := l.bmc(ctx, machine)
	if err != nil {
		return err
	}
	defer c.Logout()
	if err := sys.Reset(redfish.ResetType(action)); err != nil {
		return fmt.Errorf("BMC of %s: %s: %w", machine, action, err)
	}
	return nil
}

// PowerState asks a machine's BMC.
func (l *Lab) PowerState(ctx context.Context, machine string) (string, error) {
	c, sys, err := l.bmc(ctx, machine)
	if err != nil {
		return "", err
	}
	defer c.Logout()
	return string(sys.PowerState), nil
}
