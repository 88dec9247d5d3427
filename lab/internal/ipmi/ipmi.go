// Package ipmi is the lab's IPMI BMC: OpenIPMI's ipmi_sim answering IPMI
// over LAN on the BMC's address, wired to one lab machine as metal-stack's
// mini-lab wires it — QEMU's external BMC device (ipmi-bmc-extern behind an
// ISA KCS interface) connected to ipmi_sim's VM interface, serial-over-LAN
// to the machine's serial port — with the chassis (power, reset, boot
// device) driven through ipmi_sim's chassis_control program, which reaches
// the machine (vm.Machine) over a unix socket of this package.
package ipmi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/google/uuid"

	"github.com/metalfleet/metalfleet/lab/internal/vm"
)

// Machine is what the BMC drives: vm.Machine, or a stand-in in tests.
type Machine interface {
	PowerState(ctx context.Context) (vm.PowerState, error)
	PowerOn(ctx context.Context) error
	PowerOff(ctx context.Context, graceful bool) error
	// Reset restarts a running machine; vm.ErrPoweredOff when it is off.
	Reset(ctx context.Context) error
	SetBootDevice(dev vm.BootDevice, persistent bool) error
	BootDevice() (vm.BootDevice, bool)
}

// Config is one IPMI BMC.
type Config struct {
	Machine Machine
	// UUID is the machine's SMBIOS UUID. The BMC's GUID is made from it so
	// that ipmitool's "mc guid" prints it (ipmitool decodes the GUID's
	// bytes in reverse), and metal-bmc reports the machine under it.
	UUID string
	// Listen is the LAN channel's address, host:port (IPMI's 623).
	Listen string
	// User and Password: the BMC's one administrator.
	User, Password string
	// Dir holds ipmi_sim's configuration (with the password: mode 0600)
	// and state, and the chassis socket.
	Dir string
	// VMListen is host:port of ipmi_sim's VM interface, where the
	// machine's QEMU connects (vm.Spec.IPMI); empty: no in-band BMC.
	VMListen string
	// Serial is the machine's serial port, a unix socket (QEMU's
	// serial.sock); SOL is bridged to it. Empty: no SOL.
	Serial string
	// Chassis is the command ipmi_sim runs for chassis control; Chassis
	// plus "--socket <Dir>/chassis.sock get power" etc. must reach
	// ServeChassis (`metal-lab bmc-chassis`).
	Chassis []string
	// FRU is the machine's inventory in the BMC's FRU device 0 (what
	// "ipmitool fru print 0" shows, metal-bmc's vendor, model and
	// serial); the zero FRU: the BMC has none.
	FRU FRU
	// IPMISim and Ipmitool are the binaries (default from PATH).
	IPMISim, Ipmitool string
	Log               *slog.Logger
	// Ready, when set, is called once the BMC answers IPMI over LAN.
	Ready func()
}

// GUID is the hex GUID ipmi_sim is configured with for a machine UUID:
// its bytes reversed, the IPMI specification's order, which ipmitool's
// "mc guid" and metal-bmc decode back to the UUID (the other orders
// BMCs use are metal-bmc's aliases, docs/bmc.md).
func GUID(machineUUID string) (string, error) {
	u, err := uuid.Parse(machineUUID)
	if err != nil {
		return "", fmt.Errorf("ipmi: uuid %q: %w", machineUUID, err)
	}
	var b strings.Builder
	for i := 15; i >= 0; i-- {
		fmt.Fprintf(&b, "%02x", u[i])
	}
	return b.String(), nil
}

// ChassisSocket is where Serve listens for ipmi_sim's chassis control.
func ChassisSocket(dir string) string { return filepath.Join(dir, "chassis.sock") }

// Serve runs the BMC until ctx ends (or ipmi_sim dies, an error).
func Serve(ctx context.Context, cfg Config) error {
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.IPMISim == "" {
		cfg.IPMISim = "ipmi_sim"
	}
	if cfg.Ipmitool == "" {
		cfg.Ipmitool = "ipmitool"
	}
	if cfg.Machine == nil || cfg.Dir == "" || cfg.User == "" || cfg.Password == "" || len(cfg.Chassis) == 0 {
		return errors.New("ipmi: machine, dir, user, password and chassis command are required")
	}
	// The config file quotes them, and ipmi_sim keeps 15 bytes of a user
	// name and 19 of a password (IPMI's 16 and 20 with a NUL): a longer
	// one would silently be another.
	for _, c := range []struct {
		what, s string
		max     int
	}{{"user", cfg.User, 15}, {"password", cfg.Password, 19}} {
		if strings.ContainsAny(c.s, "\"\\\n\r") || len(c.s) > c.max {
			return fmt.Errorf("ipmi: the %s must be at most %d bytes without quotes, backslashes or line breaks (ipmi_sim keeps no more)", c.what, c.max)
		}
	}
	host, port, err := net.SplitHostPort(cfg.Listen)
	if err != nil {
		return fmt.Errorf("ipmi: listen %q: %w", cfg.Listen, err)
	}
	guid, err := GUID(cfg.UUID)
	if err != nil {
		return err
	}
	fru := ""
	if cfg.FRU != (FRU{}) {
		img, err := cfg.FRU.Encode()
		if err != nil {
			return err
		}
		fru = fruEmuCommand(img)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// ipmi_sim keeps users and SOL settings in its state directory, which
	// win over the configuration: a new start (a new password per lab)
	// starts from the configuration, as a BMC reset to its settings.
	state := filepath.Join(cfg.Dir, "ipmi-state")
	if err := os.RemoveAll(state); err != nil {
		return err
	}
	if err := os.MkdirAll(state, 0o700); err != nil {
		return err
	}

	chassis, err := ListenChassis(ChassisSocket(cfg.Dir), cfg.Machine, log)
	if err != nil {
		return err
	}
	defer chassis.Close()
	go chassis.Serve(ctx)

	sol := ""
	if cfg.Serial != "" {
		b, err := newSerialBridge(cfg.Serial, log)
		if err != nil {
			return err
		}
		defer b.Close()
		go b.Serve(ctx)
		sol = fmt.Sprintf("sol \"tcp:%s\" 115200\n", b.Addr())
	}
	vmIface := ""
	if cfg.VMListen != "" {
		vh, vp, err := net.SplitHostPort(cfg.VMListen)
		if err != nil {
			return fmt.Errorf("ipmi: VM interface %q: %w", cfg.VMListen, err)
		}
		vmIface = fmt.Sprintf("serial kcs %s %s codec VM ipmb 0x20\n", vh, vp)
	}
	control := strings.Join(append(append([]string(nil), cfg.Chassis...), "--socket", ChassisSocket(cfg.Dir)), " ")
	if strings.ContainsAny(control, "\"\\\n") {
		return fmt.Errorf("ipmi: chassis command %q: no quotes, backslashes or line breaks", control)
	}
	lan := fmt.Sprintf(`# made by metal-lab: the BMC of machine %s
name "%s"
set_working_mc 0x20
startlan 1
  addr %s %s
  priv_limit admin
  allowed_auths_callback none md2 md5 straight
  allowed_auths_user none md2 md5 straight
  allowed_auths_operator none md2 md5 straight
  allowed_auths_admin none md2 md5 straight
  guid %s
endlan
%s%schassis_control "%s"
user 2 true "%s" "%s" admin 10 none md2 md5 straight
`, cfg.UUID, "bmc-"+guid[:8], host, port, guid, vmIface, sol, control, cfg.User, cfg.Password)
	// An MC with the chassis device (bit 7 of the support byte, 0x9f):
	// chassis control, boot options, SOL; and the FRU inventory device
	// (bit 3), whose device 0 holds the FRU image when there is one.
	emu := "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\nsel_enable 0x20 1000 0x0a\n" +
		fru + "mc_enable 0x20\n"
	lanConf, emuFile := filepath.Join(cfg.Dir, "lan.conf"), filepath.Join(cfg.Dir, "sim.emu")
	if err := os.WriteFile(lanConf, []byte(lan), 0o600); err != nil {
		return err
	}
	if err := os.WriteFile(emuFile, []byte(emu), 0o600); err != nil {
		return err
	}

	// -n: no console on stdin (the BMC runs as a daemon).
	cmd := exec.Command(cfg.IPMISim, "-c", lanConf, "-f", emuFile, "-s", state, "-n")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	// ipmi_sim dies with the BMC process, whatever kills it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("ipmi: start %s: %w", cfg.IPMISim, err)
	}
	// done closes when ipmi_sim has exited; waitErr is why.
	done := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(done) }()
	defer func() {
		select {
		case <-done:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}()
	log.Info("BMC serving IPMI over LAN (ipmi_sim)", "addr", cfg.Listen, "guid", guid, "vm_interface", cfg.VMListen, "sol", cfg.Serial != "")

	if err := waitAnswer(ctx, cfg, done); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("ipmi: ipmi_sim exited at start: %v", waitErr)
		default:
		}
		return err
	}
	if cfg.Ready != nil {
		cfg.Ready()
	}
	select {
	case <-ctx.Done():
		return nil
	case <-done:
		return fmt.Errorf("ipmi: ipmi_sim exited: %v", waitErr)
	}
}

// waitAnswer waits until ipmi_sim answers over LAN as metal-bmc will ask
// it (lanplus, cipher suite 3, the BMC's user and password).
func waitAnswer(ctx context.Context, cfg Config, exited <-chan struct{}) error {
	host, port, _ := net.SplitHostPort(cfg.Listen)
	deadline := time.Now().Add(30 * time.Second)
	for {
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c := exec.CommandContext(qctx, cfg.Ipmitool, "-I", "lanplus", "-C", "3", "-N", "1", "-R", "1", "-H", host, "-p", port, "-U", cfg.User, "-E", "mc", "guid")
		// The password in the environment, as metal-bmc passes it.
		c.Env = append(os.Environ(), "IPMITOOL_PASSWORD="+cfg.Password, "IPMI_PASSWORD="+cfg.Password)
		out, err := c.CombinedOutput()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("ipmi: ipmi_sim does not answer on %s within 30 s: %s", cfg.Listen, strings.TrimSpace(string(out)))
		}
		select {
		case <-exited:
			return errors.New("ipmi: ipmi_sim exited")
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}
