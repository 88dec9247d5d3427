package run

import (
	"context"
	"net"
	"net/netip"
	"time"

	"github.com/metalfleet/metalfleet/installer/internal/boot"
	"github.com/metalfleet/metalfleet/installer/internal/config"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Hardware is everything the installer does to the machine. The flow in
// Run is the same for the real machine (package host) and for the fakes
// of the tests, which is what lets a test drive a whole installation.
type Hardware interface {
	// NetworkUp brings the links up and leases an IPv4 address.
	NetworkUp(ctx context.Context) (Lease, error)
	// Collect reports the machine's hardware (without LLDP neighbours).
	Collect(ctx context.Context) (*agentv1.MachineFacts, error)
	// Neighbours listens for LLDP on ifaces for up to wait.
	Neighbours(ctx context.Context, ifaces []string, wait time.Duration) (map[string][]*agentv1.LLDPNeighbour, error)
	// Wipe erases the signatures and partition tables of devices.
	Wipe(ctx context.Context, devices []string) error
	// Apply partitions, formats and mounts the layout.
	Apply(ctx context.Context, layout *agentv1.Layout, reinstall bool) (*Installed, error)
	// Stream extracts the image at url into target while verifying it; a
	// mismatch wraps image.ErrChecksum.
	Stream(ctx context.Context, url, sha256, target string, progress func(read, total int64)) error
	// WriteConfig writes the allocation into the installed system.
	WriteConfig(ctx context.Context, target string, doc *agentv1.MachineDocument, ph config.Phonehome, sys config.System) error
	// PrepareBoot finds the installed kernel, sets up booting from disk
	// and says what to kexec.
	PrepareBoot(ctx context.Context, inst *Installed) (boot.Spec, error)
	// LoadKernel loads spec for kexec; the files may go away afterwards.
	LoadKernel(ctx context.Context, spec boot.Spec) error
	// Kexec starts the loaded kernel; it returns only on failure.
	Kexec(ctx context.Context) error
	// Reboot restarts the machine (into PXE); it returns only on failure.
	Reboot(ctx context.Context) error
}

// Lease is the address the installer got.
type Lease struct {
	Interface string
	MAC       net.HardwareAddr
	Address   netip.Prefix
	Router    netip.Addr
	DNS       []netip.Addr
}

// Installed is a layout applied and mounted under Target.
type Installed struct {
	Target string
	// Fstab is the installed system's /etc/fstab.
	Fstab    string
	RootUUID string
	// ESP is the mount path of the EFI system partition inside Target
	// ("/boot/efi"), empty when the layout has none.
	ESP string
	// Devices are the disks the layout wiped (for a wipe after a failed
	// install: on a reinstall the data disks stay untouched).
	Devices []string
	Unmount func(ctx context.Context) error
}
