package labcli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/lab/internal/redfish"
	"github.com/metalfleet/metalfleet/lab/internal/topo"
	"github.com/metalfleet/metalfleet/lab/internal/vm"
)

func bmcCmd() *cobra.Command {
	var (
		cfg                            redfish.ServeConfig
		nics                           []string
		diskSize, passwordFile         string
		logLevel, logFormat, bmcSerial string
	)
	cmd := &cobra.Command{
		Use:   "bmc",
		Short: "Run one lab machine (QEMU) behind its own Redfish BMC, in the foreground",
		Long: `bmc runs one lab machine as a QEMU VM and serves a Redfish BMC for it on
--listen (HTTPS), as bmclib and gofish speak it: power on/off/cycle/reset and
the boot override (Pxe or Hdd, once or continuous), with session or Basic
auth. QEMU running is "powered on"; it PXE-boots from the --nic marked boot
unless the BMC was told to boot the disk.

With --dhcp IFACE the BMC has no fixed address: it asks the BMC network's
DHCP server for one on IFACE (renewing it while it runs), makes its
certificate for it and serves there; --listen, --ssh-listen and
--metrics-listen then give ports only (:443), and the lease is written to
<dir>/bmc-lease.json.

The serial console is <dir>/serial.log, and live on
  socat - UNIX-CONNECT:<dir>/serial.sock
QEMU's own output goes to <dir>/qemu.log. On SIGTERM or SIGINT the machine
is forced off and the BMC exits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, _, err := agent.NewLogger(cmd.ErrOrStderr(), logLevel, logFormat)
			if err != nil {
				return err
			}
			cfg.Log = log
			m := &cfg.Machine
			if m.Dir == "" {
				return fmt.Errorf("--dir is required")
			}
			if cfg.Listen == "" {
				return fmt.Errorf("--listen is required")
			}
			if passwordFile == "" {
				return fmt.Errorf("--password-file is required")
			}
			b, err := os.ReadFile(passwordFile)
			if err != nil {
				return fmt.Errorf("--password-file: %w", err)
			}
			if cfg.BMC.Password = strings.TrimSpace(string(b)); cfg.BMC.Password == "" {
				return fmt.Errorf("--password-file %s is empty", passwordFile)
			}
			if m.DiskSize, err = topo.ParseBytes(diskSize); err != nil {
				return fmt.Errorf("--disk-size: %w", err)
			}
			for _, s := range nics {
				n, err := vm.ParseNIC(s)
				if err != nil {
					return fmt.Errorf("--nic: %w", err)
				}
				m.NICs = append(m.NICs, n)
			}
			if m.Disk == "" {
				m.Disk = filepath.Join(m.Dir, "disk.raw")
			}
			if cfg.TLSCert == "" {
				cfg.TLSCert = filepath.Join(m.Dir, "bmc.crt")
			}
			if cfg.DHCP != "" && cfg.LeaseFile == "" {
				cfg.LeaseFile = filepath.Join(m.Dir, "bmc-lease.json")
			}
			if cfg.TLSKey == "" {
				cfg.TLSKey = filepath.Join(m.Dir, "bmc.key")
			}
			cfg.BMC.SerialNumber = bmcSerial
			if cfg.BMC.SerialNumber == "" {
				cfg.BMC.SerialNumber = m.Name
			}
			return redfish.Serve(cmd.Context(), cfg)
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Machine.Name, "name", "", "machine name (logs, QEMU -name, Redfish Name)")
	f.StringVar(&cfg.Machine.UUID, "uuid", "", "SMBIOS system UUID (what the machine reports as its identity)")
	f.IntVar(&cfg.Machine.MemoryMiB, "memory", 1024, "memory in MiB")
	f.IntVar(&cfg.Machine.CPUs, "cpus", 1, "virtual CPUs")
	f.StringVar(&cfg.Machine.Firmware, "firmware", "uefi", "uefi (OVMF) or bios (SeaBIOS)")
	f.StringVar(&cfg.Machine.Disk, "disk", "", "raw disk image, created sparse when missing (default <dir>/disk.raw)")
	f.StringVar(&diskSize, "disk-size", "4GiB", "size of a new disk: bytes, or with K/M/G/T or KiB/MiB/GiB/TiB")
	f.StringArrayVar(&nics, "nic", nil, "NIC on an existing tap device: tap=<tap>,mac=<mac>[,boot] (repeatable; boot marks the PXE NIC)")
	f.StringVar(&cfg.Machine.Dir, "dir", "", "state directory: qmp.sock, serial.sock, serial.log, qemu.log, UEFI variables (required)")
	f.StringVar(&cfg.Machine.QEMU, "qemu", "qemu-system-x86_64", "QEMU binary")
	f.StringVar(&cfg.Machine.Accel, "accel", "", "kvm or tcg (default: kvm when QEMU can start a KVM machine here)")
	f.StringVar(&cfg.Listen, "listen", "", "Redfish HTTPS address, e.g. 172.30.0.101:443, or :443 with --dhcp (required)")
	f.StringVar(&cfg.DHCP, "dhcp", "", "get the BMC's IPv4 address by DHCP on this interface and keep it renewed (the listen flags then give ports only)")
	f.StringVar(&cfg.LeaseFile, "lease-file", "", "with --dhcp: where the lease in effect is written (default <dir>/bmc-lease.json)")
	f.StringVar(&cfg.BMC.User, "user", "admin", "BMC user name")
	f.StringVar(&passwordFile, "password-file", "", "file holding the BMC password (required)")
	f.StringVar(&bmcSerial, "serial-number", "", "serial number the BMC reports (default --name)")
	f.StringVar(&cfg.TLSCert, "tls-cert", "", "TLS certificate (PEM); made self-signed for --listen's address with --tls-key when both are missing (default <dir>/bmc.crt)")
	f.StringVar(&cfg.TLSKey, "tls-key", "", "TLS key (PEM, mode 0600 when made) (default <dir>/bmc.key)")
	f.StringVar(&cfg.MetricsListen, "metrics-listen", "", "Prometheus /metrics address over HTTP (empty: none)")
	f.StringVar(&cfg.SSHListen, "ssh-listen", "", "serve the machine's serial console over SSH at this address with the BMC's user and password, as real BMCs do (empty: none)")
	f.BoolVar(&cfg.PowerOn, "power-on", false, "power the machine on at start")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	return cmd
}
