package sonicemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
)

// Executor runs plans with the real `ip`, `bridge` and `sysctl`.
type Executor struct {
	// Netns, when set, runs every command in that network namespace
	// (`ip netns exec`): the lab's tests and a leaf kept in a namespace.
	Netns string
	Log   *slog.Logger
}

// Apply runs every command of the plan in order. A failing command does
// not stop the plan, as one bad row on a switch blocks no other: its
// error is collected and the rest runs. An error the command names in
// Tolerate ("File exists" for an add) means the state is already there.
func (e *Executor) Apply(ctx context.Context, plan []Cmd) error {
	var errs []error
	for _, c := range plan {
		if err := e.run(ctx, c); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (e *Executor) run(ctx context.Context, c Cmd) error {
	args := c.Args
	if e.Netns != "" {
		args = append([]string{"ip", "netns", "exec", e.Netns}, args...)
	}
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	msg := strings.TrimSpace(out.String())
	if err == nil {
		e.log().Debug("ran", "cmd", c.String())
		return nil
	}
	for _, t := range c.Tolerate {
		if strings.Contains(msg, t) {
			e.log().Debug("already so", "cmd", c.String(), "output", msg)
			return nil
		}
	}
	return fmt.Errorf("%s: %w: %s", c, err, msg)
}

func (e *Executor) log() *slog.Logger {
	if e.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Log
}

// Rename gives netdevs the names CONFIG_DB's PORT table uses (eth1 →
// Ethernet0). On SONiC the platform creates the port netdevs with those
// names; a QEMU guest's NICs are ethN. A device already renamed (a restart
// of the emulation) is left alone. A device must be down to be renamed.
func (e *Executor) Rename(ctx context.Context, names map[string]string) error {
	var errs []error
	for _, from := range sorted(names) {
		to := names[from]
		err := e.Apply(ctx, []Cmd{
			{Args: []string{"ip", "link", "set", "dev", from, "down"}, Tolerate: missing},
			{Args: []string{"ip", "link", "set", "dev", from, "name", to}, Tolerate: missing},
		})
		if err != nil {
			errs = append(errs, fmt.Errorf("rename %s to %s: %w", from, to, err))
		}
	}
	return errors.Join(errs...)
}
