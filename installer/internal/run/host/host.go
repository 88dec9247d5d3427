// Package host is run.Hardware for the real machine: it wires the
// installer's flow to the packages that touch the hardware (link, facts,
// disk, image, config, boot).
package host

import (
	"context"
	"log/slog"
	"net"
	"net/http"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/metalfleet/metalfleet/installer/internal/boot"
	"github.com/metalfleet/metalfleet/installer/internal/config"
	"github.com/metalfleet/metalfleet/installer/internal/disk"
	"github.com/metalfleet/metalfleet/installer/internal/facts"
	"github.com/metalfleet/metalfleet/installer/internal/image"
	"github.com/metalfleet/metalfleet/installer/internal/run"
	"github.com/metalfleet/metalfleet/installer/internal/run/link"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Machine is the machine the installer runs on.
type Machine struct {
	Log *slog.Logger
	// Link tunes the network bring-up.
	Link link.Options
	// Target is where the layout is mounted (default /mnt/target).
	Target string
	// HTTP streams images; nil uses a client without an overall timeout
	// (an image may take long) but with connect and header timeouts.
	HTTP *http.Client
}

var _ run.Hardware = (*Machine)(nil)

func (m *Machine) log() *slog.Logger {
	if m.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return m.Log
}

// NetworkUp brings the links up and keeps the lease for as long as ctx.
func (m *Machine) NetworkUp(ctx context.Context) (run.Lease, error) {
	o := m.Link
	if o.Log == nil {
		o.Log = m.log()
	}
	l, err := link.Up(ctx, o)
	if err != nil {
		return run.Lease{}, err
	}
	go l.Keep(ctx)
	return run.Lease{Interface: l.Interface, MAC: l.MAC, Address: l.Address, Router: l.Router, DNS: l.DNS}, nil
}

// Collect reads the hardware.
func (m *Machine) Collect(ctx context.Context) (*agentv1.MachineFacts, error) {
	return facts.Collect(ctx, facts.Root{}, m.log())
}

// Neighbours listens for LLDP.
func (m *Machine) Neighbours(ctx context.Context, ifaces []string, wait time.Duration) (map[string][]*agentv1.LLDPNeighbour, error) {
	return facts.Neighbours(ctx, ifaces, wait)
}

// Wipe wipes devices.
func (m *Machine) Wipe(ctx context.Context, devices []string) error {
	return disk.Wipe(ctx, devices, m.log())
}

// Apply partitions, formats and mounts the layout.
func (m *Machine) Apply(ctx context.Context, layout *agentv1.Layout, reinstall bool) (*run.Installed, error) {
	target := m.Target
	if target == "" {
		target = "/mnt/target"
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return nil, err
	}
	a, err := disk.Apply(ctx, layout, disk.Options{Target: target, Reinstall: reinstall, Log: m.log()})
	if err != nil {
		return nil, err
	}
	inst := &run.Installed{Target: a.Target, Fstab: a.Fstab(), Unmount: a.Unmount}
	if r := a.Root(); r != nil {
		inst.RootUUID = r.UUID
	}
	if e := a.ESP(); e != nil {
		inst.ESP = e.Path
	}
	// The disks Apply repartitioned: on a reinstall the kept data disks
	// are not among them, and a failed install must not wipe those.
	inst.Devices = a.Wiped
	return inst, nil
}

// Stream writes the image into target.
func (m *Machine) Stream(ctx context.Context, url, sha256, target string, progress func(read, total int64)) error {
	c := m.HTTP
	if c == nil {
		c = &http.Client{Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ResponseHeaderTimeout: time.Minute,
			TLSHandshakeTimeout:   10 * time.Second,
		}}
	}
	_, err := image.Stream(ctx, c, url, sha256, target, progress)
	return err
}

// WriteConfig writes the allocation into the installed system.
func (m *Machine) WriteConfig(_ context.Context, target string, doc *agentv1.MachineDocument, ph config.Phonehome, sys config.System) error {
	if ph.Binary != "" {
		if _, err := os.Stat(ph.Binary); err != nil {
			m.log().Warn("this installer carries no metal-phonehome; the machine will not phone home", "path", ph.Binary)
			ph.Binary = ""
		}
	}
	return config.Write(target, doc, ph, sys, m.log())
}

// PrepareBoot finds the kernel and sets up booting from disk.
func (m *Machine) PrepareBoot(_ context.Context, inst *run.Installed) (boot.Spec, error) {
	return boot.Prepare(inst.Target, inst.RootUUID, inst.ESP, m.log())
}

// LoadKernel loads the installed kernel for kexec.
func (m *Machine) LoadKernel(_ context.Context, spec boot.Spec) error { return boot.Load(spec) }

// Kexec starts the loaded kernel.
func (m *Machine) Kexec(context.Context) error { return boot.Exec() }

// Reboot restarts the machine.
func (m *Machine) Reboot(context.Context) error {
	unix.Sync()
	return unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
}
