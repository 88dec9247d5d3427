package labcli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/lab/internal/ipmi"
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
		protocol                       string
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

With --protocol ipmi the BMC is OpenIPMI's ipmi_sim instead, on --listen
(host:623): IPMI over LAN (lanplus, cipher suite 3) with the user and
password, its GUID made from --uuid so that ipmitool's "mc guid" prints it,
a FRU with the manufacturer, model and --serial-number the Redfish BMC
reports (ipmitool's "fru print 0"), chassis power, reset and boot device
reaching the machine (ipmi_sim's chassis_control runs "metal-lab
bmc-chassis"), the machine's QEMU wired to it as an in-band BMC
(ipmi-bmc-extern behind ISA KCS, on 127.0.0.1:9002), and serial-over-LAN
to the machine's serial port. <dir>/bmc-ready appears when it answers.

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
			switch protocol {
			case "redfish":
				return redfish.Serve(cmd.Context(), cfg)
			case "ipmi":
				if cfg.DHCP != "" || cfg.SSHListen != "" || cfg.PowerOn {
					return fmt.Errorf("--protocol ipmi: no --dhcp (an IPMI BMC has a fixed address: metal-bmc takes leases as Redfish), --ssh-listen (the console is serial-over-LAN) or --power-on")
				}
				return serveIPMI(cmd.Context(), cfg)
			}
			return fmt.Errorf("--protocol %q: want redfish or ipmi", protocol)
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
	f.StringVar(&protocol, "protocol", "redfish", "redfish (the lab's Redfish server) or ipmi (OpenIPMI's ipmi_sim, --listen host:623)")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	return cmd
}

// ipmiVMInterface is where ipmi_sim's VM interface listens in the
// machine's namespace and the machine's QEMU connects (the namespace is
// the machine's own: a fixed port does not collide).
const ipmiVMInterface = "127.0.0.1:9002"

// serveIPMI runs the machine behind ipmi_sim until ctx ends, then forces
// it off.
func serveIPMI(ctx context.Context, cfg redfish.ServeConfig) (err error) {
	log := cfg.Log
	spec := cfg.Machine
	spec.IPMI = ipmiVMInterface
	m, err := vm.New(spec, log)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		if cerr := m.Close(cctx); cerr != nil {
			err = errors.Join(err, fmt.Errorf("power off: %w", cerr))
		}
	}()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	ready := filepath.Join(spec.Dir, "bmc-ready")
	_ = os.Remove(ready)
	return ipmi.Serve(ctx, ipmi.Config{Machine: m, UUID: spec.UUID, Listen: cfg.Listen, User: cfg.BMC.User, Password: cfg.BMC.Password,
		Dir: spec.Dir, VMListen: ipmiVMInterface, Serial: filepath.Join(spec.Dir, "serial.sock"),
		Chassis: []string{self, "bmc-chassis"}, Log: log,
		// What the Redfish BMC's ComputerSystem says, so that metal-bmc
		// reports the same vendor, model and serial either way.
		FRU: ipmi.FRU{Manufacturer: redfish.Manufacturer, Product: redfish.Model, Serial: cfg.BMC.SerialNumber},
		Ready: func() {
			if err := os.WriteFile(ready, nil, 0o644); err != nil {
				log.Warn("ready file", "err", err)
			}
		}})
}

// bmcChassisCmd is ipmi_sim's chassis_control program: it hands the call
// to the BMC process that owns the machine.
func bmcChassisCmd() *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:    "bmc-chassis --socket PATH [MC] get|set ARGS…",
		Short:  "ipmi_sim's chassis control program for a lab IPMI BMC (run by ipmi_sim)",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			// ipmi_sim's example programs take the MC's address first.
			if len(args) > 0 && strings.HasPrefix(args[0], "0x") {
				args = args[1:]
			}
			ctx, cancel := context.WithTimeout(cmd.Context(), 90*time.Second)
			defer cancel()
			out, err := ipmi.Control(ctx, socket, args)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), out)
			return err
		},
	}
	cmd.Flags().StringVar(&socket, "socket", "", "the BMC's chassis socket (<dir>/chassis.sock)")
	return cmd
}
