//go:build !linux

package pgembed

import "syscall"

// serverSysProcAttr: without Pdeathsig an orphaned postgres survives us; the
// next Start's stale recovery stops it (where /proc is available).
func serverSysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Setpgid: true}
}
