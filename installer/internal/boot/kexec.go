package boot

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Load loads spec into the kernel for a later Exec. The kernel copies the
// files, so the target can be unmounted afterwards (an open file would keep
// it busy).
func Load(spec Spec) error {
	k, err := os.Open(spec.Kernel)
	if err != nil {
		return fmt.Errorf("kexec load: %w", err)
	}
	defer k.Close()
	initrdFd, flags := -1, 0
	if spec.Initrd != "" {
		i, err := os.Open(spec.Initrd)
		if err != nil {
			return fmt.Errorf("kexec load: %w", err)
		}
		defer i.Close()
		initrdFd = int(i.Fd())
	} else {
		flags |= unix.KEXEC_FILE_NO_INITRAMFS
	}
	if err := unix.KexecFileLoad(int(k.Fd()), initrdFd, spec.Cmdline, flags); err != nil {
		return fmt.Errorf("kexec load %s: %w", spec.Kernel, err)
	}
	return nil
}

// Exec starts the loaded kernel. It returns only when that failed.
func Exec() error {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_KEXEC); err != nil {
		return fmt.Errorf("kexec: %w", err)
	}
	return nil
}

// Kexec loads spec and starts it.
func Kexec(spec Spec) error {
	if err := Load(spec); err != nil {
		return err
	}
	return Exec()
}
