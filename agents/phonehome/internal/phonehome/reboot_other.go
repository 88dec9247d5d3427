//go:build !linux

package phonehome

import (
	"context"
	"errors"
)

// SystemRebooter is only implemented on Linux.
type SystemRebooter struct{}

// Reboot fails: metal-phonehome runs on Linux only.
func (SystemRebooter) Reboot(context.Context) error {
	return errors.New("reboot: only supported on Linux")
}
