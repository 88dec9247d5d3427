package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/metalfleet/metalfleet/lab/internal/vm/qmp"
)

// PowerState is a machine's power as a BMC reports it.
type PowerState string

// Power states. QEMU running is On; there is no standby.
const (
	On  PowerState = "On"
	Off PowerState = "Off"
)

var (
	// ErrPoweredOff is returned by Reset on a machine that is off.
	ErrPoweredOff = errors.New("vm: machine is powered off")
	// ErrClosed is returned by every operation after Close.
	ErrClosed = errors.New("vm: machine closed")
)

// How long a start waits for QEMU's QMP socket, and a forced stop for
// QEMU to quit before it is killed.
const (
	startTimeout = 30 * time.Second
	quitTimeout  = 3 * time.Second
)

// Machine is one VM. Power operations run one at a time; PowerState,
// SetBootDevice and BootDevice do not wait for them.
type Machine struct {
	spec Spec
	log  *slog.Logger
	ops  chan struct{} // one slot: the power operation running; a channel so waiting honours ctx

	mu         sync.Mutex // guards the fields below
	proc       *proc      // the QEMU started last; nil when none
	override   BootDevice
	persistent bool
	closed     bool
}

// proc is one QEMU process.
type proc struct {
	pid  int
	boot BootDevice // the order its next reset boots (guest or QMP)
	qmp  *qmp.Client
	done chan struct{} // closed once reaped
	err  error         // Wait's result, valid after done
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// hungUp tells whether a failed QMP command failed because QEMU exited:
// a lost connection (however the socket reported it) while QEMU is
// exiting, given the moment until it is reaped. A QEMU that keeps running
// without its QMP connection is not "off": that is an error.
func (p *proc) hungUp(ctx context.Context, err error) bool {
	if errors.Is(err, qmp.ErrClosed) {
		t := time.NewTimer(quitTimeout)
		defer t.Stop()
		select {
		case <-p.done:
		case <-ctx.Done():
		case <-t.C:
		}
	}
	return p.exited()
}

// New returns a powered-off machine; it starts nothing.
func New(spec Spec, log *slog.Logger) (*Machine, error) {
	spec = spec.withDefaults()
	if err := spec.validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Machine{spec: spec, log: log.With("machine", spec.Name), ops: make(chan struct{}, 1)}, nil
}

// Spec returns the machine's spec with defaults filled in.
func (m *Machine) Spec() Spec { return m.spec }

// lock takes the power operation slot.
func (m *Machine) lock(ctx context.Context) (func(), error) {
	select {
	case m.ops <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	release := func() { <-m.ops }
	m.mu.Lock()
	closed := m.closed
	m.mu.Unlock()
	if closed {
		release()
		return nil, ErrClosed
	}
	return release, nil
}

// running returns the live QEMU, forgetting one that has exited on its
// own (a guest power-off). Called with the operation slot held.
func (m *Machine) running() *proc {
	m.mu.Lock()
	p := m.proc
	gone := p != nil && p.exited()
	if gone {
		m.proc = nil
	}
	m.mu.Unlock()
	if gone {
		p.qmp.Close()
		return nil
	}
	return p
}

// PowerState reports On while QEMU runs (asking it through QMP), Off
// otherwise.
func (m *Machine) PowerState(ctx context.Context) (PowerState, error) {
	m.mu.Lock()
	p := m.proc
	m.mu.Unlock()
	if p == nil || p.exited() {
		return Off, nil
	}
	st, err := p.qmp.QueryStatus(ctx)
	if err != nil {
		if p.hungUp(ctx, err) {
			return Off, nil
		}
		return "", fmt.Errorf("vm %s: power state: %w", m.spec.Name, err)
	}
	if st.Status == "shutdown" { // only with -no-shutdown, which we do not pass
		return Off, nil
	}
	return On, nil
}

// PowerOn starts QEMU with the pending boot device; it does nothing when
// the machine is on. A one-time override is used up by this boot.
func (m *Machine) PowerOn(ctx context.Context) error {
	release, err := m.lock(ctx)
	if err != nil {
		return err
	}
	defer release()
	if m.running() != nil {
		return nil
	}
	return m.start(ctx)
}

// PowerOff stops the machine. graceful presses the ACPI power button and
// waits up to Spec.ShutdownTimeout (or until ctx ends) for the guest to
// power off before forcing it; otherwise QEMU quits at once.
func (m *Machine) PowerOff(ctx context.Context, graceful bool) error {
	release, err := m.lock(ctx)
	if err != nil {
		return err
	}
	defer release()
	p := m.running()
	if p == nil {
		return nil
	}
	return m.stop(ctx, p, graceful)
}

// Reset is a ForceRestart: the guest resets in place. When a pending
// boot override asks for another order than QEMU's next reset would
// boot, QEMU is restarted with it instead, so the override never
// depends on how a firmware treats a boot order changed under it.
func (m *Machine) Reset(ctx context.Context) error {
	release, err := m.lock(ctx)
	if err != nil {
		return err
	}
	defer release()
	p := m.running()
	if p == nil {
		return ErrPoweredOff
	}
	next, _ := m.BootDevice()
	if next.pxeFirst() != p.boot.pxeFirst() {
		m.log.Info("reset with a new boot order: restarting QEMU", "boot", next)
		if err := m.stop(ctx, p, false); err != nil {
			return err
		}
		return m.start(ctx)
	}
	if err := p.qmp.Execute(ctx, "system_reset", nil, nil); err != nil {
		if p.hungUp(ctx, err) {
			// The guest powered itself off as the reset was sent.
			return ErrPoweredOff
		}
		return fmt.Errorf("vm %s: reset: %w", m.spec.Name, err)
	}
	m.consumeOnce(next)
	m.log.Info("reset", "boot", p.boot)
	return nil
}

// PowerCycle forces the machine off and on again (a new QEMU, so a
// pending boot device applies); an off machine is just powered on.
func (m *Machine) PowerCycle(ctx context.Context) error {
	release, err := m.lock(ctx)
	if err != nil {
		return err
	}
	defer release()
	if p := m.running(); p != nil {
		if err := m.stop(ctx, p, false); err != nil {
			return err
		}
	}
	return m.start(ctx)
}

// SetBootDevice sets what the next boot starts from; persistent keeps it
// for every later boot, otherwise the next power-on or reset uses it up.
// BootDefault clears the override.
func (m *Machine) SetBootDevice(dev BootDevice, persistent bool) error {
	if !dev.Valid() {
		return fmt.Errorf("vm %s: boot device %q: want pxe, disk or empty", m.spec.Name, dev)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.override, m.persistent = dev, persistent && dev != BootDefault
	return nil
}

// BootDevice returns the override for the next boot (BootDefault when
// none) and whether it persists.
func (m *Machine) BootDevice() (BootDevice, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.override, m.persistent
}

// consumeOnce clears a one-time override that a boot with dev used,
// unless it was changed meanwhile.
func (m *Machine) consumeOnce(dev BootDevice) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.persistent && m.override == dev {
		m.override = BootDefault
	}
}

// Close forces the machine off and reaps QEMU; later operations fail
// with ErrClosed.
func (m *Machine) Close(ctx context.Context) error {
	release, err := m.lock(ctx)
	if errors.Is(err, ErrClosed) {
		return nil
	}
	if err != nil {
		return err
	}
	defer release()
	var stopErr error
	if p := m.running(); p != nil {
		stopErr = m.stop(ctx, p, false)
	}
	m.mu.Lock()
	m.closed = true
	m.mu.Unlock()
	return stopErr
}

// start runs QEMU and waits until its QMP socket answers. Called with the
// operation slot held and no QEMU running.
func (m *Machine) start(ctx context.Context) error {
	s := m.spec
	boot, _ := m.BootDevice()
	if err := m.prepare(); err != nil {
		return err
	}
	args := s.Args(boot)
	logf, err := os.OpenFile(s.qemuLog(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("vm %s: %w", s.Name, err)
	}
	fmt.Fprintf(logf, "--- %s power on, boot %q: %s %s\n", time.Now().Format(time.RFC3339), boot, s.QEMU, strings.Join(args, " "))
	cmd := exec.Command(s.QEMU, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// QEMU gets a process group of its own, so a terminal's ^C reaches
	// only the BMC, which powers off in order; Pdeathsig ends QEMU when
	// the BMC dies without doing so.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("vm %s: start %s: %w", s.Name, s.QEMU, err)
	}
	p := &proc{pid: cmd.Process.Pid, boot: boot, done: make(chan struct{})}
	go func() {
		// The reaper makes a guest power-off (QEMU exits) show as Off.
		p.err = cmd.Wait()
		close(p.done)
		m.log.Info("QEMU exited", "pid", p.pid, "status", exitStatus(p.err))
	}()

	c, err := m.dialQMP(ctx, p)
	if err != nil {
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		<-p.done
		return fmt.Errorf("vm %s: power on: %w%s", s.Name, err, logTail(s.qemuLog()))
	}
	p.qmp = c
	m.mu.Lock()
	m.proc = p
	m.mu.Unlock()
	m.consumeOnce(boot)
	m.log.Info("powered on", "pid", p.pid, "boot", boot)
	// Once used up, later boots of this QEMU (the guest rebooting
	// itself) take the order that is now pending, as on real hardware.
	next, _ := m.BootDevice()
	if err := m.setOrder(ctx, p, next); err != nil {
		m.log.Warn("boot order for later reboots unchanged", "err", err)
	}
	return nil
}

// setOrder makes p's next reset boot dev first. bootindex is a runtime
// property too; QEMU hands the firmware the new order at its next reset
// (not at once: the boot under way is not disturbed).
func (m *Machine) setOrder(ctx context.Context, p *proc, dev BootDevice) error {
	nic := slices.IndexFunc(m.spec.NICs, func(n NIC) bool { return n.Boot })
	if p.boot.pxeFirst() == dev.pxeFirst() || nic < 0 || m.spec.Disk == "" {
		p.boot = dev // the order does not change
		return nil
	}
	first, second := "/machine/peripheral/nic"+strconv.Itoa(nic), "/machine/peripheral/vda"
	if !dev.pxeFirst() {
		first, second = second, first
	}
	// Through 3, as two devices may not hold the same index.
	for _, set := range []struct {
		path  string
		index int
	}{{second, 3}, {first, 1}, {second, 2}} {
		args := map[string]any{"path": set.path, "property": "bootindex", "value": set.index}
		if err := p.qmp.Execute(ctx, "qom-set", args, nil); err != nil {
			return fmt.Errorf("vm %s: bootindex of %s: %w", m.spec.Name, set.path, err)
		}
	}
	p.boot = dev
	return nil
}

// dialQMP waits for QEMU's QMP socket.
func (m *Machine) dialQMP(ctx context.Context, p *proc) (*qmp.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()
	onEvent := func(ev qmp.Event) { m.log.Debug("QMP event", "event", ev.Name) }
	for {
		dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
		c, err := qmp.Dial(dctx, m.spec.qmpPath(), onEvent)
		dcancel()
		if err == nil {
			return c, nil
		}
		select {
		case <-p.done:
			return nil, fmt.Errorf("QEMU exited: %s", exitStatus(p.err))
		case <-ctx.Done():
			return nil, fmt.Errorf("QMP: %w (last: %v)", ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop ends p: gracefully (ACPI power button, bounded wait) or at once
// (QMP quit, then SIGKILL to its group). It returns once p is reaped.
func (m *Machine) stop(ctx context.Context, p *proc, graceful bool) error {
	defer func() {
		p.qmp.Close()
		m.mu.Lock()
		if m.proc == p {
			m.proc = nil
		}
		m.mu.Unlock()
	}()
	if graceful {
		if err := p.qmp.Execute(ctx, "system_powerdown", nil, nil); err != nil {
			m.log.Warn("graceful power-off: forcing", "err", err)
		} else {
			t := time.NewTimer(m.spec.ShutdownTimeout)
			defer t.Stop()
			select {
			case <-p.done:
				m.log.Info("powered off", "graceful", true)
				return nil
			case <-t.C:
				m.log.Warn("guest did not power off: forcing", "after", m.spec.ShutdownTimeout)
			case <-ctx.Done():
				m.log.Warn("graceful power-off cut short: forcing", "err", ctx.Err())
			}
		}
	}
	// A forced stop must finish even when the caller gives up: the
	// machine may not be left half-off.
	qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), quitTimeout)
	defer cancel()
	if err := p.qmp.Execute(qctx, "quit", nil, nil); err != nil && !errors.Is(err, qmp.ErrClosed) {
		m.log.Debug("QMP quit", "err", err)
	}
	select {
	case <-p.done:
	case <-qctx.Done():
		m.log.Warn("QEMU did not quit: killing", "pid", p.pid)
		_ = syscall.Kill(-p.pid, syscall.SIGKILL)
		<-p.done
	}
	m.log.Info("powered off", "graceful", false)
	return nil
}

// prepare creates the state directory, the disk and the UEFI variable
// store when missing.
func (m *Machine) prepare() error {
	s := m.spec
	if err := os.MkdirAll(s.Dir, 0o700); err != nil {
		return fmt.Errorf("vm %s: %w", s.Name, err)
	}
	// A stale socket would let the QMP dial reach nobody, or worse, an
	// old QEMU.
	for _, p := range []string{s.qmpPath(), s.serialSock()} {
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("vm %s: %w", s.Name, err)
		}
	}
	if s.Disk != "" {
		if _, err := os.Stat(s.Disk); errors.Is(err, os.ErrNotExist) {
			if err := createSparse(s.Disk, s.DiskSize); err != nil {
				return fmt.Errorf("vm %s: disk: %w", s.Name, err)
			}
			m.log.Info("created disk", "path", s.Disk, "bytes", s.DiskSize)
		} else if err != nil {
			return fmt.Errorf("vm %s: disk: %w", s.Name, err)
		}
	}
	if s.Firmware == "uefi" && s.splitOVMF() {
		if _, err := os.Stat(s.varsPath()); errors.Is(err, os.ErrNotExist) {
			if err := copyFile(s.OVMFVars, s.varsPath()); err != nil {
				return fmt.Errorf("vm %s: UEFI variables: %w", s.Name, err)
			}
		}
	}
	return nil
}

func createSparse(path string, size int64) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// copyFile copies src to dst through a temporary file, so a crash never
// leaves a half-written variable store that OVMF would reject.
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		os.Remove(tmp)
		return err
	}
	if err := out.Close(); err != nil {
		os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, dst)
}

func exitStatus(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

// logTail returns the end of QEMU's log for an error message.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return ""
	}
	const max = 1024
	if len(b) > max {
		b = b[len(b)-max:]
	}
	return "; " + filepath.Base(path) + ": " + strings.TrimSpace(string(b))
}
