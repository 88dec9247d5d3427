package sonicemu

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ExecStarter starts the real dhcrelay as a child of the emulation (so
// that the relays' PIDs are its own and nobody else's), in Netns when
// set, its output appended to LogDir/dhcrelay-<relay>.log.
type ExecStarter struct {
	// Path is dhcrelay (default "dhcrelay").
	Path   string
	Netns  string
	LogDir string
}

// Start starts one relay.
func (e *ExecStarter) Start(spec RelaySpec) (Process, error) {
	path := e.Path
	if path == "" {
		path = "dhcrelay"
	}
	args := append([]string{path}, spec.Args...)
	if e.Netns != "" {
		// ip netns exec execs dhcrelay: the PID stays the relay's.
		args = append([]string{"ip", "netns", "exec", e.Netns}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	var out io.WriteCloser
	if e.LogDir != "" {
		f, err := os.OpenFile(filepath.Join(e.LogDir, "dhcrelay-"+spec.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
		if err != nil {
			return nil, fmt.Errorf("dhcrelay log: %w", err)
		}
		out = f
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		if out != nil {
			out.Close()
		}
		return nil, fmt.Errorf("dhcrelay: %w", err)
	}
	p := &execProcess{cmd: cmd, done: make(chan error, 1), exited: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		if out != nil {
			out.Close()
		}
		p.done <- err
		close(p.exited)
	}()
	return p, nil
}

type execProcess struct {
	cmd    *exec.Cmd
	done   chan error
	exited chan struct{}
}

func (p *execProcess) Done() <-chan error { return p.done }

// Pid is the relay's process id.
func (p *execProcess) Pid() int { return p.cmd.Process.Pid }

// Stop sends SIGTERM and, after 2 s, SIGKILL.
func (p *execProcess) Stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(2 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// RouteUpstreams finds a server's upstream interfaces in the main routing
// table (the default VRF, where the lab's PXE VLAN and its relay live),
// through rtnetlink, in Netns when set: the interfaces of the longest
// matching unicast route, every next hop of a multipath one.
type RouteUpstreams struct {
	Netns string
}

// Upstream looks the route up.
func (u *RouteUpstreams) Upstream(_ context.Context, server netip.Addr) ([]string, error) {
	h, err := (&NetlinkLinks{Netns: u.Netns}).handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	family := netlink.FAMILY_V4
	if server.Is6() {
		family = netlink.FAMILY_V6
	}
	routes, err := h.RouteListFiltered(family, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("route list: %w", err)
	}
	best, bits := -1, -1
	for i, r := range routes {
		if r.Type != unix.RTN_UNICAST {
			continue
		}
		p := netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		if server.Is4() {
			p = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		}
		if r.Dst != nil {
			a, ok := netip.AddrFromSlice(r.Dst.IP)
			ones, _ := r.Dst.Mask.Size()
			if !ok {
				continue
			}
			p = netip.PrefixFrom(a.Unmap(), ones)
		}
		if p.Contains(server) && p.Bits() > bits {
			best, bits = i, p.Bits()
		}
	}
	if best < 0 {
		return nil, nil
	}
	r := routes[best]
	idx := []int{}
	if r.LinkIndex > 0 {
		idx = append(idx, r.LinkIndex)
	}
	for _, nh := range r.MultiPath {
		idx = append(idx, nh.LinkIndex)
	}
	var names []string
	for _, i := range idx {
		l, err := h.LinkByIndex(i)
		if err != nil {
			return nil, fmt.Errorf("link %d: %w", i, err)
		}
		if n := l.Attrs().Name; !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	return names, nil
}
