// Package facts reads a machine's hardware the way the installer reports it
// to central: DMI, CPUs, memory, disks, NICs, GPUs and the BMC from sysfs,
// procfs and the IPMI device, and LLDP neighbours from the wire. Every
// reader takes its roots from Root so that tests run against fixture trees.
package facts

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Root names where sysfs, procfs and devfs are; "" means "/sys", "/proc",
// "/dev". Tests point it at fixture trees.
type Root struct{ Sys, Proc, Dev string }

func (r Root) sys(p ...string) string  { return join(r.Sys, "/sys", p) }
func (r Root) proc(p ...string) string { return join(r.Proc, "/proc", p) }
func (r Root) dev(p ...string) string  { return join(r.Dev, "/dev", p) }

func join(root, def string, p []string) string {
	if root == "" {
		root = def
	}
	return filepath.Join(append([]string{root}, p...)...)
}

// Collect reads the machine's hardware. Memory and CPUs are required (a
// machine without them is a broken fixture or a broken kernel); everything
// else is reported as far as the machine has it, and a missing part (no
// DMI, no IPMI device) is logged, not an error.
func Collect(ctx context.Context, r Root, log *slog.Logger) (*agentv1.MachineFacts, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &agentv1.MachineFacts{}
	dmi(r, f)
	if f.Uuid == "" {
		log.Warn("no DMI product UUID", "path", r.sys("class/dmi/id/product_uuid"))
	}

	cpus, err := readCPUs(r.proc("cpuinfo"))
	if err != nil {
		return nil, err
	}
	f.Cpus = cpus
	for _, c := range cpus {
		f.Cores += c.Threads
	}

	mem, err := readMemTotal(r.proc("meminfo"))
	if err != nil {
		return nil, err
	}
	f.MemoryBytes = mem

	if f.Disks, err = readDisks(r, log); err != nil {
		return nil, err
	}
	if f.Nics, err = readNICs(r, log); err != nil {
		return nil, err
	}
	if f.Gpus, err = readGPUs(r); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	bmc, err := readBMC(ctx, r.dev("ipmi0"))
	switch {
	case err != nil:
		// A BMC that does not answer is worth a warning, not a failed
		// registration: the machine is still installable.
		log.Warn("IPMI device did not answer", "err", err)
	case bmc == nil:
		log.Debug("no IPMI device", "path", r.dev("ipmi0"))
	default:
		f.Bmc = bmc
	}
	return f, nil
}

// readString returns the trimmed content of a sysfs attribute, "" when it
// is absent or unreadable (sysfs attributes fail with EINVAL or EIO for
// hardware that cannot tell, e.g. the speed of a link that is down).
func readString(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func dmi(r Root, f *agentv1.MachineFacts) {
	id := func(name string) string { return readString(r.sys("class/dmi/id", name)) }
	f.Uuid = strings.ToLower(id("product_uuid"))
	f.Vendor = id("sys_vendor")
	f.Product = id("product_name")
	f.Serial = id("product_serial")
	bios := &agentv1.BIOSFact{Vendor: id("bios_vendor"), Version: id("bios_version"), Date: id("bios_date")}
	if bios.Vendor != "" || bios.Version != "" || bios.Date != "" {
		f.Bios = bios
	}
}

func errPath(path string, err error) error { return fmt.Errorf("%s: %w", path, err) }
