package pgembed

import "syscall"

// serverSysProcAttr configures the long-running postgres child.
//
// Setpgid keeps a terminal's Ctrl-C (sent to the whole foreground process
// group) away from postgres, so the embedding program decides the shutdown
// order instead of the database vanishing under it.
//
// Pdeathsig makes postgres do a fast shutdown when we die without calling
// Stop (SIGKILL, OOM, a test binary killed on timeout). The kernel ties it to
// the OS thread that forked, not to the process, so Start forks from a
// goroutine that keeps its thread locked until postgres exits. SIGINT rather
// than SIGKILL lets postgres write its shutdown checkpoint and take its
// backends with it; if even that fails, the next Start's stale recovery
// cleans up.
func serverSysProcAttr(cred *syscall.Credential) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: cred, Setpgid: true, Pdeathsig: syscall.SIGINT}
}
