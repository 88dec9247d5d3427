// Package netlab builds the lab's network out of Linux parts with netlink:
// named network namespaces, veth pairs between them, bridges, tap devices
// for QEMU, addresses, routes and sysctls, and starts processes inside a
// namespace. The empty namespace name means the host's.
package netlab

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nsDir is where iproute2 keeps named namespaces (bind mounts), so
// `ip netns exec` works on the lab's too.
const nsDir = "/var/run/netns"

// nsfsMagic is statfs's f_type of a namespace file (NSFS_MAGIC): a name
// in nsDir that is mounted.
const nsfsMagic = 0x6e736673

// CreateNS makes a named namespace with its loopback up and without IPv6
// duplicate address detection. An existing one is an error: a stale lab
// must be torn down first.
func CreateNS(name string) error {
	if _, err := os.Stat(filepath.Join(nsDir, name)); err == nil {
		return fmt.Errorf("namespace %s exists already", name)
	}
	if err := setupNSDir(); err != nil {
		return err
	}
	// NewNamed moves the calling thread into the new namespace; Do moves
	// it back.
	if err := Do("", func() error {
		h, err := netns.NewNamed(name)
		if err != nil {
			return fmt.Errorf("create namespace %s: %w", name, err)
		}
		return h.Close()
	}); err != nil {
		return err
	}
	// No duplicate address detection in the lab's namespaces: every
	// address there is the lab's own. While a link-local address is
	// still tentative (1–2 s after its link comes up) the kernel sends no
	// neighbour solicitation from that link at all, so a router forwarding
	// its first packets could fail them with "no route to host".
	for _, scope := range []string{"all", "default"} {
		if err := Sysctl(name, "net/ipv6/conf/"+scope+"/accept_dad", "0"); err != nil {
			return err
		}
	}
	return withHandle(name, func(h *netlink.Handle) error {
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("%s: lo: %w", name, err)
		}
		return h.LinkSetUp(lo)
	})
}

// setupNSDir makes nsDir a shared mount point of its own, as `ip netns
// add` does before its first namespace. Were the lab's namespaces mounted
// on a plain directory, the first `ip netns add` afterwards would bind
// the directory onto itself recursively: every namespace mounted there
// then has a second, hidden copy, and deleting it fails with "device or
// resource busy".
func setupNSDir() error {
	if err := os.MkdirAll(nsDir, 0o755); err != nil {
		return fmt.Errorf("namespace directory: %w", err)
	}
	for bound := false; ; bound = true {
		err := unix.Mount("", nsDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		// EINVAL: not a mount point yet.
		if !errors.Is(err, unix.EINVAL) || bound {
			return fmt.Errorf("make %s a shared mount: %w", nsDir, err)
		}
		if err := unix.Mount(nsDir, nsDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind %s onto itself: %w", nsDir, err)
		}
	}
}

// DeleteNS removes a named namespace; its devices go with it (a veth
// whose peer is elsewhere takes the peer along). Missing is not an error.
// A namespace with a hidden second mount (made before nsDir was set up as
// iproute2 does it, see setupNSDir) is removed too.
func DeleteNS(name string) error {
	path := filepath.Join(nsDir, name)
	unmountAll(path)
	err := os.Remove(path)
	switch {
	case err == nil, errors.Is(err, os.ErrNotExist):
		return nil
	case errors.Is(err, unix.EBUSY):
		return removeHidden(name)
	}
	return fmt.Errorf("delete namespace %s: %w", name, err)
}

// unmountAll unmounts what is mounted on path, also stacked mounts.
func unmountAll(path string) {
	for range 16 {
		if unix.Unmount(path, unix.MNT_DETACH) != nil {
			return
		}
	}
}

// removeHidden removes a namespace whose file is still a mount point
// below a later bind mount of nsDir onto itself, which path lookups cannot
// reach: it takes nsDir's self-binds away, unmounts what was below them,
// sets nsDir up again as iproute2 does and mounts everyone else's
// namespaces there again. Someone running `ip netns` meanwhile may not see
// their namespaces for these few milliseconds.
func removeHidden(name string) error {
	// Keep every other visible namespace open, to mount it again.
	kept := map[string]*os.File{}
	defer func() {
		for _, f := range kept {
			f.Close()
		}
	}()
	ents, err := os.ReadDir(nsDir)
	if err != nil {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	for _, e := range ents {
		if e.Name() == name || !isNSMount(filepath.Join(nsDir, e.Name())) {
			continue
		}
		f, err := os.Open(filepath.Join(nsDir, e.Name()))
		if err != nil {
			return fmt.Errorf("delete namespace %s: keep %s: %w", name, e.Name(), err)
		}
		kept[e.Name()] = f
	}
	unmountAll(nsDir)
	// What was below: the hidden copies (ours and others').
	if ents, err = os.ReadDir(nsDir); err != nil {
		return fmt.Errorf("delete namespace %s: %w", name, err)
	}
	for _, e := range ents {
		unmountAll(filepath.Join(nsDir, e.Name()))
	}
	var errs []error
	if err := os.Remove(filepath.Join(nsDir, name)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("delete namespace %s: %w", name, err))
	}
	if err := setupNSDir(); err != nil {
		errs = append(errs, err)
	}
	for n, f := range kept {
		p := filepath.Join(nsDir, n)
		if t, err := os.OpenFile(p, os.O_CREATE|os.O_RDONLY, 0o444); err == nil {
			t.Close()
		}
		if err := unix.Mount(fmt.Sprintf("/proc/self/fd/%d", f.Fd()), p, "none", unix.MS_BIND, ""); err != nil {
			errs = append(errs, fmt.Errorf("mount namespace %s again: %w", n, err))
		}
	}
	return errors.Join(errs...)
}

// isNSMount tells whether a namespace is mounted on path.
func isNSMount(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Type == nsfsMagic
}

// ListNS returns the named namespaces whose names start with prefix.
func ListNS(prefix string) ([]string, error) {
	ents, err := os.ReadDir(nsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			out = append(out, e.Name())
		}
	}
	slices.Sort(out)
	return out, nil
}

func open(ns string) (netns.NsHandle, error) {
	if ns == "" {
		// The process's own namespace: its main thread never leaves it.
		h, err := netns.GetFromPath(fmt.Sprintf("/proc/%d/ns/net", os.Getpid()))
		if err != nil {
			return 0, fmt.Errorf("host namespace: %w", err)
		}
		return h, nil
	}
	h, err := netns.GetFromName(ns)
	if err != nil {
		return 0, fmt.Errorf("namespace %s: %w", ns, err)
	}
	return h, nil
}

func withHandle(ns string, f func(h *netlink.Handle) error) error {
	nh, err := open(ns)
	if err != nil {
		return err
	}
	defer nh.Close()
	h, err := netlink.NewHandleAt(nh)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", nsName(ns), err)
	}
	defer h.Close()
	return f(h)
}

func nsName(ns string) string {
	if ns == "" {
		return "host"
	}
	return ns
}

// Do runs f on an OS thread inside ns. What f opens (sockets, taps,
// /proc/sys/net files) belongs to ns.
func Do(ns string, f func() error) error {
	target, err := open(ns)
	if err != nil {
		return err
	}
	defer target.Close()
	done := make(chan error, 1)
	// A goroutine of its own: if leaving the namespace fails it ends still
	// locked, and Go discards the thread instead of reusing it elsewhere.
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			done <- fmt.Errorf("current namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			done <- fmt.Errorf("enter %s: %w", nsName(ns), err)
			return
		}
		ferr := f()
		if err := netns.Set(orig); err != nil {
			done <- fmt.Errorf("leave %s: %w", nsName(ns), err)
			return
		}
		runtime.UnlockOSThread()
		done <- ferr
	}()
	return <-done
}

// Start starts cmd inside ns: the child is forked from a thread in ns and
// keeps it.
func Start(ns string, cmd *exec.Cmd) error {
	return Do(ns, cmd.Start)
}

// End is one end of a veth pair.
type End struct {
	NS, Name string
	MAC      string // optional
}

// Veth links a and b with a veth pair and brings both ends up.
func Veth(a, b End) error {
	peer, err := open(b.NS)
	if err != nil {
		return err
	}
	defer peer.Close()
	return withHandle(a.NS, func(h *netlink.Handle) error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: a.Name}, PeerName: b.Name, PeerNamespace: netlink.NsFd(peer)}
		if a.MAC != "" {
			mac, err := net.ParseMAC(a.MAC)
			if err != nil {
				return fmt.Errorf("veth %s: %w", a.Name, err)
			}
			v.HardwareAddr = mac
		}
		if b.MAC != "" {
			mac, err := net.ParseMAC(b.MAC)
			if err != nil {
				return fmt.Errorf("veth %s: %w", b.Name, err)
			}
			v.PeerHardwareAddr = mac
		}
		if err := h.LinkAdd(v); err != nil {
			return fmt.Errorf("veth %s/%s ↔ %s/%s: %w", nsName(a.NS), a.Name, nsName(b.NS), b.Name, err)
		}
		if err := up(h, a.Name); err != nil {
			return err
		}
		return withHandle(b.NS, func(hb *netlink.Handle) error { return up(hb, b.Name) })
	})
}

func up(h *netlink.Handle, name string) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("%s up: %w", name, err)
	}
	return nil
}

// Bridge makes a bridge in ns with the given ports and brings it up.
// LLDP frames (01:80:c2:00:00:0e) are forwarded, so machines see what is
// behind a leaf that is still a plain bridge.
func Bridge(ns, name string, ports ...string) error {
	return withHandle(ns, func(h *netlink.Handle) error {
		mask := uint16(1 << 14)
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}, GroupFwdMask: &mask}
		if err := h.LinkAdd(br); err != nil {
			return fmt.Errorf("bridge %s in %s: %w", name, nsName(ns), err)
		}
		for _, p := range ports {
			l, err := h.LinkByName(p)
			if err != nil {
				return fmt.Errorf("bridge %s port %s: %w", name, p, err)
			}
			if err := h.LinkSetMaster(l, br); err != nil {
				return fmt.Errorf("bridge %s port %s: %w", name, p, err)
			}
		}
		return up(h, name)
	})
}

// Tap makes a persistent tap device in ns (QEMU opens it by name) as a
// port of bridge.
func Tap(ns, name, bridge string) error {
	if err := Do(ns, func() error {
		return netlink.LinkAdd(&netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: name}, Mode: netlink.TUNTAP_MODE_TAP})
	}); err != nil {
		return fmt.Errorf("tap %s in %s: %w", name, nsName(ns), err)
	}
	return withHandle(ns, func(h *netlink.Handle) error {
		t, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("tap %s: %w", name, err)
		}
		br, err := h.LinkByName(bridge)
		if err != nil {
			return fmt.Errorf("tap %s: bridge %s: %w", name, bridge, err)
		}
		if err := h.LinkSetMaster(t, br); err != nil {
			return fmt.Errorf("tap %s into %s: %w", name, bridge, err)
		}
		return h.LinkSetUp(t)
	})
}

// MTU sets a link's MTU.
func MTU(ns, name string, mtu int) error {
	return withHandle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			return fmt.Errorf("%s in %s: %w", name, nsName(ns), err)
		}
		if err := h.LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("mtu %d on %s in %s: %w", mtu, name, nsName(ns), err)
		}
		return nil
	})
}

// Addr assigns addresses (address/prefix) to a link; IPv6 ones skip
// duplicate address detection, so they work at once.
func Addr(ns, link string, cidrs ...string) error {
	return withHandle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(link)
		if err != nil {
			return fmt.Errorf("%s in %s: %w", link, nsName(ns), err)
		}
		for _, c := range cidrs {
			a, err := netlink.ParseAddr(c)
			if err != nil {
				return fmt.Errorf("address %q: %w", c, err)
			}
			if a.IP.To4() == nil {
				a.Flags |= unix.IFA_F_NODAD
			}
			if err := h.AddrAdd(l, a); err != nil {
				return fmt.Errorf("address %s on %s in %s: %w", c, link, nsName(ns), err)
			}
		}
		return nil
	})
}

// Route adds a route to dst (a prefix) via a gateway address.
func Route(ns, dst, via string) error {
	p, err := netip.ParsePrefix(dst)
	if err != nil {
		return fmt.Errorf("route %q: %w", dst, err)
	}
	gw := net.ParseIP(via)
	if gw == nil {
		return fmt.Errorf("route %s: gateway %q is no address", dst, via)
	}
	return withHandle(ns, func(h *netlink.Handle) error {
		r := &netlink.Route{Dst: &net.IPNet{IP: p.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}, Gw: gw}
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("route %s via %s in %s: %w", dst, via, nsName(ns), err)
		}
		return nil
	})
}

// RouteMulti adds a route to dst over several gateways at once (ECMP;
// one gateway is a plain route).
func RouteMulti(ns, dst string, vias ...string) error {
	if len(vias) == 1 {
		return Route(ns, dst, vias[0])
	}
	p, err := netip.ParsePrefix(dst)
	if err != nil {
		return fmt.Errorf("route %q: %w", dst, err)
	}
	r := &netlink.Route{Dst: &net.IPNet{IP: p.Masked().Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
	for _, v := range vias {
		gw := net.ParseIP(v)
		if gw == nil {
			return fmt.Errorf("route %s: gateway %q is no address", dst, v)
		}
		r.MultiPath = append(r.MultiPath, &netlink.NexthopInfo{Gw: gw})
	}
	return withHandle(ns, func(h *netlink.Handle) error {
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("route %s via %s in %s: %w", dst, strings.Join(vias, ", "), nsName(ns), err)
		}
		return nil
	})
}

// Sysctl writes a net sysctl (e.g. "net/ipv4/ip_forward") inside ns.
func Sysctl(ns, key, value string) error {
	return Do(ns, func() error {
		if err := os.WriteFile(filepath.Join("/proc/sys", key), []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s in %s: %w", key, nsName(ns), err)
		}
		return nil
	})
}

// DeleteLink removes a link; missing is not an error.
func DeleteLink(ns, name string) error {
	return withHandle(ns, func(h *netlink.Handle) error {
		l, err := h.LinkByName(name)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				return nil
			}
			return fmt.Errorf("%s in %s: %w", name, nsName(ns), err)
		}
		if err := h.LinkDel(l); err != nil {
			return fmt.Errorf("delete %s in %s: %w", name, nsName(ns), err)
		}
		return nil
	})
}

// Links lists the names of a namespace's links.
func Links(ns string) ([]string, error) {
	var out []string
	err := withHandle(ns, func(h *netlink.Handle) error {
		ls, err := h.LinkList()
		if err != nil {
			return fmt.Errorf("links of %s: %w", nsName(ns), err)
		}
		for _, l := range ls {
			out = append(out, l.Attrs().Name)
		}
		return nil
	})
	return out, err
}
