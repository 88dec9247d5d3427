// Package lab runs a whole Metalfleet partition on one Linux box: the
// topology's namespaces and links, metal-central with its embedded
// PostgreSQL, the partition's metal-pixie, and QEMU machines behind
// emulated Redfish BMCs that PXE-boot into the real installer. Up leaves
// it running (its daemons outlive the command), Down removes every trace,
// Status shows it, and E2E is the project's end-to-end test on top.
package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/lab/internal/topo"
)

// Config says where things are.
type Config struct {
	TopologyFile string
	// Root is the repository: the image files of the topology are
	// relative to it, and build/installer holds the installer.
	Root string
	// Bin holds metal-central, metalctl, metal-pixie, metal-bmc and metal-lab.
	Bin string
	// StateDir holds one directory per lab (named after the topology).
	StateDir string
	Out      io.Writer // progress for people
	Log      *slog.Logger
}

// Lab is one lab, running or about to.
type Lab struct {
	cfg   Config
	top   *topo.Topology
	dir   string
	state *State
}

// Open loads the topology; nothing is changed yet.
func Open(cfg Config) (*Lab, error) {
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	t, err := topo.Load(cfg.TopologyFile)
	if err != nil {
		return nil, err
	}
	l := &Lab{cfg: cfg, top: t, dir: filepath.Join(cfg.StateDir, t.Name)}
	l.state = &State{Topology: cfg.TopologyFile, Name: t.Name}
	if s, err := loadState(l.statePath()); err == nil {
		l.state = s
	}
	return l, nil
}

func (l *Lab) statePath() string             { return filepath.Join(l.dir, "state.json") }
func (l *Lab) centralDir() string            { return filepath.Join(l.dir, "central") }
func (l *Lab) machineDir(name string) string { return filepath.Join(l.dir, "machines", name) }
func (l *Lab) bin(name string) string        { return filepath.Join(l.cfg.Bin, name) }

// centralAddr is central's API on mgmt, as metalctl on the host dials it.
func (l *Lab) centralAddr() string {
	return net.JoinHostPort(l.top.Node(l.top.Central()).MgmtIPv4, "8443")
}

// Env is what metalctl needs to talk to the lab's central.
func (l *Lab) Env() ([]string, error) {
	token, err := os.ReadFile(filepath.Join(l.centralDir(), "admin.token"))
	if err != nil {
		return nil, fmt.Errorf("admin token: %w (is the lab up?)", err)
	}
	return []string{
		"METALCTL_API_URL=" + l.centralAddr(),
		"METALCTL_CA_FILE=" + filepath.Join(l.centralDir(), "ca.crt"),
		"METALCTL_API_TOKEN=" + strings.TrimSpace(string(token)),
	}, nil
}

// metalctlCmd is metalctl against the lab's central, not started.
func (l *Lab) metalctlCmd(ctx context.Context, args ...string) (*exec.Cmd, error) {
	env, err := l.Env()
	if err != nil {
		return nil, err
	}
	cmd := exec.CommandContext(ctx, l.bin("metalctl"), args...)
	// Its own config file: a person's contexts must not redirect the lab.
	cmd.Env = append(append(os.Environ(), env...), "METALCTL_CONFIG="+filepath.Join(l.dir, "metalctl.yaml"))
	return cmd, nil
}

// metalctl runs metalctl against the lab's central and returns its output.
func (l *Lab) metalctl(ctx context.Context, args ...string) (string, error) {
	cmd, err := l.metalctlCmd(ctx, args...)
	if err != nil {
		return "", err
	}
	out, err := cmd.CombinedOutput()
	s := strings.TrimSpace(string(out))
	if err != nil {
		return s, fmt.Errorf("metalctl %s: %w: %s", strings.Join(args, " "), err, s)
	}
	return s, nil
}

func (l *Lab) progress(format string, args ...any) {
	fmt.Fprintf(l.cfg.Out, format+"\n", args...)
}

// checkPrerequisites fails early, naming what is missing and how to get it.
func (l *Lab) checkPrerequisites() error {
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root: network namespaces, bridges and taps")
	}
	var missing []string
	for _, b := range []string{"metal-central", "metalctl", "metal-pixie", "metal-bmc", "metal-lab"} {
		if _, err := os.Stat(l.bin(b)); err != nil {
			missing = append(missing, l.bin(b)+" (make build)")
		}
	}
	for _, f := range []string{"build/installer/vmlinuz", "build/installer/initramfs.cpio.gz"} {
		if _, err := os.Stat(filepath.Join(l.cfg.Root, f)); err != nil {
			missing = append(missing, f+" (make installer-image)")
		}
	}
	for _, img := range l.top.Partition.Images {
		for _, f := range []string{img.File, img.File + ".sha256"} {
			if _, err := os.Stat(filepath.Join(l.cfg.Root, f)); err != nil {
				missing = append(missing, f+" (make lab-image)")
			}
		}
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		missing = append(missing, "qemu-system-x86_64 (apt-get install qemu-system-x86)")
	}
	for _, m := range l.top.Nodes(topo.KindMachine) {
		if l.top.Node(m).BMC != topo.BMCIPMI {
			continue
		}
		// The IPMI BMC is ipmi_sim; metal-bmc and its readiness check
		// speak to it with ipmitool.
		for _, b := range []string{"ipmi_sim", "ipmitool"} {
			if _, err := exec.LookPath(b); err != nil {
				missing = append(missing, b+" (apt-get install openipmi ipmitool, or make deps)")
			}
		}
		break
	}
	if l.top.Fabric() {
		for _, f := range []string{"build/router-image/vmlinuz", "build/router-image/router.cpio.gz"} {
			if _, err := os.Stat(filepath.Join(l.cfg.Root, f)); err != nil {
				missing = append(missing, f+" (make lab-router-image)")
			}
		}
		if _, err := exec.LookPath("mkfs.ext4"); err != nil {
			missing = append(missing, "mkfs.ext4 (apt-get install e2fsprogs)")
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing: %s", strings.Join(missing, ", "))
	}
	return nil
}

// permanent is an error of waitFor's ok that ends the wait at once (a
// daemon that exited will not come).
type permanent struct{ error }

// waitFor polls ok until it returns true, an error, or the deadline.
func waitFor(ctx context.Context, timeout time.Duration, what string, ok func() (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		done, err := ok()
		if done {
			return nil
		}
		var p permanent
		if errors.As(err, &p) {
			return fmt.Errorf("%s: %w", what, p.error)
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("%s: not within %s: %w", what, timeout, last)
			}
			return fmt.Errorf("%s: not within %s", what, timeout)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func randomSecret() (string, error) {
	b := make([]byte, 18)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}
