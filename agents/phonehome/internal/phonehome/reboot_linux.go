package phonehome

import (
	"context"
	"fmt"

	"golang.org/x/sys/unix"
)

// SystemRebooter restarts the machine with the reboot system call, after
// writing the file systems' dirty data out. It skips the init system's
// orderly shutdown on purpose: the machine is going back to PXE, where its
// disks are wiped or reinstalled anyway, and a hung service must not keep a
// freed machine running a tenant's system.
type SystemRebooter struct{}

// Reboot does not return on success.
func (SystemRebooter) Reboot(context.Context) error {
	unix.Sync()
	if err := unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART); err != nil {
		return fmt.Errorf("reboot: %w", err)
	}
	return nil
}
