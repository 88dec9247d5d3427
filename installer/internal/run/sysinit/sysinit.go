// Package sysinit is what the installer does as PID 1 of its initramfs
// before anything else: the kernel file systems, the kernel modules the
// initramfs carries, and a console to log to.
package sysinit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Mounts are the file systems PID 1 mounts, in order.
var mounts = []struct {
	target, fstype string
	flags          uintptr
	data           string
}{
	{"/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"},
	{"/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	{"/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"/sys/firmware/efi/efivars", "efivarfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
}

// Mount mounts the kernel file systems. Already mounted ones are fine (a
// kernel with DEVTMPFS_MOUNT mounts /dev itself); efivarfs exists only on
// UEFI machines.
func Mount() error {
	var errs []error
	for _, m := range mounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			if m.fstype != "efivarfs" {
				errs = append(errs, err)
			}
			continue
		}
		err := unix.Mount(m.fstype, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) && m.fstype != "efivarfs" {
			errs = append(errs, fmt.Errorf("mount %s on %s: %w", m.fstype, m.target, err))
		}
	}
	return errors.Join(errs...)
}

// ReadLoadOrder reads a load.order file: one module file per line,
// relative to the file's directory, # comments and blank lines allowed.
func ReadLoadOrder(r io.Reader) ([]string, error) {
	var out []string
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if filepath.IsAbs(line) || strings.Contains(line, "..") {
			return nil, fmt.Errorf("load.order: %q must be relative and stay below its directory", line)
		}
		out = append(out, line)
	}
	return out, sc.Err()
}

// LoadModules loads the modules listed in the load.order file at path, in
// order (the list is in dependency order: the kernel resolves no
// dependencies for finit_module). A missing or failing module is logged,
// not fatal: the machine may simply not have that hardware. It returns
// how many modules are loaded.
func LoadModules(path string, log *slog.Logger) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	names, err := ReadLoadOrder(f)
	if err != nil {
		return 0, err
	}
	dir := filepath.Dir(path)
	loaded := 0
	for _, n := range names {
		err := load(filepath.Join(dir, n))
		switch {
		case err == nil:
			loaded++
		case errors.Is(err, unix.EEXIST):
			loaded++
		case errors.Is(err, unix.ENODEV):
			// The module's hardware or firmware is not there
			// (efivarfs on a BIOS machine).
			log.Debug("kernel module not needed here", "module", n)
		default:
			log.Warn("kernel module not loaded", "module", n, "err", err)
		}
	}
	return loaded, nil
}

func load(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.FinitModule(int(f.Fd()), "", 0)
}

// Console opens where the installer logs: /dev/console, plus ttyS0 when
// the kernel's console is elsewhere (the serial console is how a stuck
// installer is debugged in a rack).
func Console() io.Writer {
	var ws []io.Writer
	if c, err := os.OpenFile("/dev/console", os.O_WRONLY|unix.O_NOCTTY, 0); err == nil {
		ws = append(ws, c)
	}
	active, _ := os.ReadFile("/sys/class/tty/console/active")
	if !strings.Contains(string(active), "ttyS0") {
		if s, err := os.OpenFile("/dev/ttyS0", os.O_WRONLY|unix.O_NOCTTY|unix.O_NONBLOCK, 0); err == nil {
			ws = append(ws, s)
		}
	}
	if len(ws) == 0 {
		return os.Stderr
	}
	return io.MultiWriter(ws...)
}

// Shell keeps a shell on the console for debugging (metal.shell on the
// kernel command line): the installer's log and the shell share it.
func Shell(log *slog.Logger) {
	for {
		tty, err := os.OpenFile("/dev/console", os.O_RDWR, 0)
		if err != nil {
			log.Warn("debug shell", "err", err)
			return
		}
		cmd := exec.Command("/bin/sh")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = tty, tty, tty
		cmd.Env = append(os.Environ(), "TERM=linux")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true}
		log.Info("debug shell on the console (metal.shell)")
		if err := cmd.Run(); err != nil {
			log.Warn("debug shell ended", "err", err)
		}
		tty.Close()
		time.Sleep(time.Second)
	}
}
