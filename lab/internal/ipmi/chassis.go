package ipmi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/lab/internal/vm"
)

// ipmi_sim runs its chassis_control program for every chassis operation,
// "<program> get power boot" or "<program> set power 1" (one parameter
// and value a call in practice), and reads "name:value" lines back from a
// get; a non-zero exit is an IPMI error. The program (`metal-lab
// bmc-chassis`, Control) forwards the words over a unix socket to the
// BMC process that owns the machine (Chassis), which answers with the
// output lines or "error: …".

// chassisTimeout bounds one operation: a power-on starts QEMU and waits
// for its QMP socket. ipmi_sim waits for the program meanwhile (it is
// single-threaded), so nothing may hang it for long.
const chassisTimeout = time.Minute

// Boot devices as ipmi_sim names the boot flags' device selector: 1 PXE,
// 2 "default hard drive", 5 CD, 6 BIOS setup, 0 no override.
var bootNames = map[vm.BootDevice]string{vm.BootDefault: "none", vm.BootPXE: "pxe", vm.BootDisk: "default"}

// Chassis answers ipmi_sim's chassis control for one machine.
type Chassis struct {
	ln      net.Listener
	machine Machine
	log     *slog.Logger
}

// ListenChassis listens on the unix socket path (a stale one is
// replaced; the socket is only for root, like the BMC's own files).
func ListenChassis(path string, m Machine, log *slog.Logger) (*Chassis, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("ipmi: chassis socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return &Chassis{ln: ln, machine: m, log: log.With("part", "chassis")}, nil
}

// Close stops listening.
func (c *Chassis) Close() error { return c.ln.Close() }

// Serve answers until ctx ends or the listener is closed, one call at a
// time (ipmi_sim makes one at a time anyway).
func (c *Chassis) Serve(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { c.ln.Close() })
	defer stop()
	for {
		conn, err := c.ln.Accept()
		if err != nil {
			return
		}
		c.answer(ctx, conn)
	}
}

func (c *Chassis) answer(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(chassisTimeout + 5*time.Second))
	line, err := bufio.NewReader(io.LimitReader(conn, 512)).ReadString('\n')
	if err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, chassisTimeout)
	defer cancel()
	out, err := c.Do(ctx, strings.Fields(line))
	if err != nil {
		c.log.Warn("chassis control", "call", strings.TrimSpace(line), "err", err)
		fmt.Fprintf(conn, "error: %v\n", err)
		return
	}
	c.log.Debug("chassis control", "call", strings.TrimSpace(line), "answer", strings.TrimSpace(out))
	_, _ = io.WriteString(conn, out)
}

// Do carries out one call: "get" and parameter names, or "set" and
// parameter/value pairs. It returns the output lines of a get.
func (c *Chassis) Do(ctx context.Context, words []string) (string, error) {
	if len(words) == 0 {
		return "", errors.New("empty call")
	}
	op, args := words[0], words[1:]
	switch op {
	case "get":
		var b strings.Builder
		for _, p := range args {
			switch p {
			case "power":
				ps, err := c.machine.PowerState(ctx)
				if err != nil {
					return "", err
				}
				on := 0
				if ps == vm.On {
					on = 1
				}
				fmt.Fprintf(&b, "power:%d\n", on)
			case "boot":
				dev, _ := c.machine.BootDevice()
				fmt.Fprintf(&b, "boot:%s\n", bootNames[dev])
			default:
				return "", fmt.Errorf("get %s: not a chassis parameter of this BMC", p)
			}
		}
		return b.String(), nil
	case "set":
		if len(args)%2 != 0 {
			return "", fmt.Errorf("set %s: want parameter/value pairs", strings.Join(args, " "))
		}
		for i := 0; i < len(args); i += 2 {
			if err := c.set(ctx, args[i], strings.Trim(args[i+1], `"`)); err != nil {
				return "", fmt.Errorf("set %s %s: %w", args[i], args[i+1], err)
			}
		}
		return "", nil
	}
	return "", fmt.Errorf("%q: want get or set", op)
}

func (c *Chassis) set(ctx context.Context, param, value string) error {
	m := c.machine
	switch param {
	case "power":
		c.log.Info("chassis power", "on", value)
		switch value {
		case "1":
			return m.PowerOn(ctx)
		case "0":
			return m.PowerOff(ctx, false)
		}
	case "reset":
		if value != "1" {
			return nil
		}
		c.log.Info("chassis reset")
		return m.Reset(ctx)
	case "shutdown":
		if value != "1" {
			return nil
		}
		// A soft power-off waits for the guest (minutes at worst):
		// ipmi_sim must not wait with it. A BMC presses the button and
		// answers.
		c.log.Info("chassis soft power-off")
		go func() {
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 3*time.Minute)
			defer cancel()
			if err := m.PowerOff(sctx, true); err != nil {
				c.log.Warn("soft power-off", "err", err)
			}
		}()
		return nil
	case "boot":
		for dev, name := range bootNames {
			if name == value {
				c.log.Info("chassis boot device", "next", value, "device", dev)
				// IPMI's boot flags are for the next boot only as
				// bmclib sets them (no persistent bit).
				return m.SetBootDevice(dev, false)
			}
		}
		return fmt.Errorf("boot device %q: the lab's machines boot pxe or the disk (default) only", value)
	case "identify":
		// No LED on a VM; taken, as BMCs take it without one.
		c.log.Info("chassis identify", "value", value)
		return nil
	}
	return fmt.Errorf("not a chassis parameter of this BMC, or value %q not taken", value)
}

// Control makes one call to the BMC at socket (what `metal-lab
// bmc-chassis` runs for ipmi_sim) and returns its output.
func Control(ctx context.Context, socket string, words []string) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return "", fmt.Errorf("the BMC's chassis socket: %w", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := io.WriteString(conn, strings.Join(words, " ")+"\n"); err != nil {
		return "", err
	}
	out, err := io.ReadAll(io.LimitReader(conn, 4096))
	if err != nil {
		return "", err
	}
	if msg, ok := strings.CutPrefix(string(out), "error: "); ok {
		return "", errors.New(strings.TrimSpace(msg))
	}
	return string(out), nil
}
