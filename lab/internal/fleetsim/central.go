package fleetsim

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// central is a metal-central child process.
type central struct {
	bin, dataDir, listen string
	args, env            []string
	log                  io.Writer
	cmd                  *exec.Cmd
	exited               chan struct{}
}

// start runs central and waits until it serves.
func (c *central) start(ctx context.Context) error {
	args := append([]string{"--data-dir", c.dataDir, "--listen", c.listen, "--metrics-listen", ""}, c.args...)
	cmd := exec.Command(c.bin, args...)
	cmd.Stderr = c.log
	if len(c.env) > 0 {
		cmd.Env = append(os.Environ(), c.env...)
	}
	// Dies with the simulator, whatever happens to it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.bin, err)
	}
	c.cmd = cmd
	c.exited = make(chan struct{})
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		once := false
		for sc.Scan() {
			if !once && strings.Contains(sc.Text(), "is serving the API") {
				once = true
				close(ready)
			}
		}
	}()
	go func() {
		_ = cmd.Wait()
		close(c.exited)
	}()
	t := time.NewTimer(2 * time.Minute)
	defer t.Stop()
	select {
	case <-ready:
		return nil
	case <-c.exited:
		return errors.New("metal-central exited during start; see its log")
	case <-t.C:
		_ = cmd.Process.Kill()
		return errors.New("metal-central did not come up within 2 minutes")
	case <-ctx.Done():
		_ = cmd.Process.Kill()
		return ctx.Err()
	}
}

// stop sends SIGTERM to the process we started and waits for it.
func (c *central) stop() error {
	if c.cmd == nil {
		return nil
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(time.Minute)
	defer t.Stop()
	select {
	case <-c.exited:
	case <-t.C:
		_ = c.cmd.Process.Kill()
		<-c.exited
		return errors.New("metal-central did not stop within a minute; killed")
	}
	c.cmd = nil
	return nil
}

// rss is the resident set size of central in bytes.
func (c *central) rss() (int64, error) {
	if c.cmd == nil {
		return 0, errors.New("central not running")
	}
	return procRSS(c.cmd.Process.Pid)
}

func procRSS(pid int) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse VmRSS %q: %w", v, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("no VmRSS in /proc status")
}
