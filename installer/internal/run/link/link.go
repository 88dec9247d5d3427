// Package link brings the installer's network up: every physical link up,
// DHCPv4 on all links with carrier at once (the first lease wins; the
// machine's cabling is unknown before it registers), the address and the
// default route set with netlink, and the lease kept by renewing it. IPv6
// addresses come from the kernel's SLAAC on the links brought up.
package link

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Options tune Up; the zero value is the installer's.
type Options struct {
	// Filter selects the links to use; nil takes the physical ones (those
	// with a device in sysfs: not lo, bridges, veth or tunnels).
	Filter func(name string) bool
	// CarrierWait bounds the wait for carrier after link up (10 s).
	CarrierWait time.Duration
	// Timeout bounds the whole bring-up (5 min): an installer without a
	// lease reboots and tries PXE again.
	Timeout time.Duration
	// ResolvConf receives the lease's name servers ("" writes none).
	ResolvConf string
	// NoRoute leaves the routing table alone (tests in a shared netns).
	NoRoute bool
	// ClassID is sent as DHCP option 60, so that pixie's DHCP server can
	// tell the installer from a PXE ROM ("metal-installer").
	ClassID string
	Log     *slog.Logger
}

// Lease is the address the installer holds.
type Lease struct {
	Interface string
	MAC       net.HardwareAddr
	Address   netip.Prefix
	Router    netip.Addr
	DNS       []netip.Addr
	Duration  time.Duration

	client *nclient4.Client
	raw    *nclient4.Lease
	opts   Options
}

// Up brings the links up and returns the first lease. Keep holds it.
func Up(ctx context.Context, o Options) (*Lease, error) {
	o.defaults()
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	links, err := bringUp(o)
	if err != nil {
		return nil, err
	}
	if len(links) == 0 {
		return nil, errors.New("link: no network interface")
	}
	names := make([]string, 0, len(links))
	for _, l := range links {
		names = append(names, l.Attrs().Name)
	}
	o.Log.Info("links up", "links", names)
	delay := time.Second
	for {
		up := waitCarrier(ctx, links, o.CarrierWait)
		if len(up) == 0 {
			o.Log.Warn("no link has carrier yet", "links", names)
		} else {
			l, err := race(ctx, up, o)
			if err == nil {
				if err := l.apply(); err != nil {
					l.client.Close()
					return nil, err
				}
				o.Log.Info("dhcp lease", "interface", l.Interface, "address", l.Address, "router", l.Router, "dns", l.DNS, "lease", l.Duration)
				return l, nil
			}
			o.Log.Warn("dhcp: no lease yet", "err", err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("link: no DHCP lease on %v: %w", names, ctx.Err())
		case <-t.C:
		}
		delay = min(delay*2, 30*time.Second)
	}
}

func (o *Options) defaults() {
	if o.Filter == nil {
		o.Filter = physical
	}
	if o.CarrierWait <= 0 {
		o.CarrierWait = 10 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 5 * time.Minute
	}
	if o.ClassID == "" {
		o.ClassID = "metal-installer"
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// physical links have a device behind them in sysfs.
func physical(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name, "device"))
	return err == nil
}

func bringUp(o Options) ([]netlink.Link, error) {
	all, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("link: list: %w", err)
	}
	var out []netlink.Link
	for _, l := range all {
		name := l.Attrs().Name
		if l.Attrs().Flags&net.FlagLoopback != 0 {
			if err := netlink.LinkSetUp(l); err != nil {
				o.Log.Warn("loopback up", "err", err)
			}
			continue
		}
		if !o.Filter(name) {
			continue
		}
		if err := netlink.LinkSetUp(l); err != nil {
			o.Log.Warn("link up failed", "link", name, "err", err)
			continue
		}
		out = append(out, l)
	}
	return out, nil
}

// waitCarrier returns the links with carrier once at least one has it and
// the others had a moment to follow, or none after wait.
func waitCarrier(ctx context.Context, links []netlink.Link, wait time.Duration) []netlink.Link {
	deadline := time.Now().Add(wait)
	var firstSeen time.Time
	for {
		var up []netlink.Link
		for _, l := range links {
			cur, err := netlink.LinkByIndex(l.Attrs().Index)
			if err == nil && cur.Attrs().RawFlags&unix.IFF_LOWER_UP != 0 {
				up = append(up, cur)
			}
		}
		now := time.Now()
		if len(up) > 0 && firstSeen.IsZero() {
			firstSeen = now
		}
		// Links negotiate at different speeds; a second more lets a
		// machine with several cabled NICs race them all.
		if len(up) == len(links) || (!firstSeen.IsZero() && now.Sub(firstSeen) > time.Second) || now.After(deadline) {
			return up
		}
		select {
		case <-ctx.Done():
			return up
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// race runs DHCP on every link at once; the first lease wins.
func race(ctx context.Context, links []netlink.Link, o Options) (*Lease, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		l   *Lease
		err error
	}
	results := make(chan result, len(links))
	for _, l := range links {
		go func() {
			le, err := request(ctx, l, o)
			results <- result{le, err}
		}()
	}
	var errs []error
	var won *Lease
	for range links {
		r := <-results
		switch {
		case r.err != nil:
			errs = append(errs, r.err)
		case won == nil:
			won = r.l
			cancel()
		default:
			// A later lease on another link: let the server have it
			// back rather than wait for it to expire.
			_ = r.l.client.Release(r.l.raw)
			r.l.client.Close()
		}
	}
	if won != nil {
		return won, nil
	}
	return nil, errors.Join(errs...)
}

func request(ctx context.Context, l netlink.Link, o Options) (*Lease, error) {
	name := l.Attrs().Name
	c, err := nclient4.New(name, nclient4.WithTimeout(4*time.Second), nclient4.WithRetry(3))
	if err != nil {
		return nil, fmt.Errorf("dhcp %s: %w", name, err)
	}
	raw, err := c.Request(ctx, dhcpv4.WithOption(dhcpv4.OptClassIdentifier(o.ClassID)))
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("dhcp %s: %w", name, err)
	}
	le, err := fromACK(name, l.Attrs().HardwareAddr, raw)
	if err != nil {
		_ = c.Release(raw)
		c.Close()
		return nil, err
	}
	le.client, le.raw, le.opts = c, raw, o
	return le, nil
}

func fromACK(name string, mac net.HardwareAddr, raw *nclient4.Lease) (*Lease, error) {
	ack := raw.ACK
	ip, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok || ip.IsUnspecified() {
		return nil, fmt.Errorf("dhcp %s: lease without an address", name)
	}
	mask := ack.SubnetMask()
	if mask == nil {
		mask = ip4DefaultMask(ip)
	}
	bits, _ := mask.Size()
	le := &Lease{Interface: name, MAC: mac, Address: netip.PrefixFrom(ip, bits), Duration: ack.IPAddressLeaseTime(time.Hour)}
	for _, r := range ack.Router() {
		if a, ok := netip.AddrFromSlice(r.To4()); ok && !a.IsUnspecified() {
			le.Router = a
			break
		}
	}
	for _, d := range ack.DNS() {
		if a, ok := netip.AddrFromSlice(d); ok {
			le.DNS = append(le.DNS, a.Unmap())
		}
	}
	return le, nil
}

func ip4DefaultMask(ip netip.Addr) net.IPMask {
	return net.IP(ip.AsSlice()).DefaultMask()
}

// apply puts the lease on the link.
func (l *Lease) apply() error {
	link, err := netlink.LinkByName(l.Interface)
	if err != nil {
		return fmt.Errorf("link %s: %w", l.Interface, err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: l.Address.Addr().AsSlice(), Mask: net.CIDRMask(l.Address.Bits(), 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("link %s: address %s: %w", l.Interface, l.Address, err)
	}
	if l.Router.IsValid() && !l.opts.NoRoute {
		r := &netlink.Route{LinkIndex: link.Attrs().Index, Gw: l.Router.AsSlice(),
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}}
		if err := netlink.RouteReplace(r); err != nil {
			return fmt.Errorf("link %s: default route via %s: %w", l.Interface, l.Router, err)
		}
	}
	if l.opts.ResolvConf != "" && len(l.DNS) > 0 {
		var b strings.Builder
		for _, d := range l.DNS {
			b.WriteString("nameserver " + d.String() + "\n")
		}
		if err := os.MkdirAll(filepath.Dir(l.opts.ResolvConf), 0o755); err == nil {
			if err := os.WriteFile(l.opts.ResolvConf, []byte(b.String()), 0o644); err != nil {
				l.opts.Log.Warn("write resolv.conf", "err", err)
			}
		}
	}
	return nil
}

// Keep renews the lease at half its time until ctx ends: an installer can
// wait in the pool for days, and pixie must not hand its address to
// another machine meanwhile.
func (l *Lease) Keep(ctx context.Context) {
	defer l.client.Close()
	for {
		wait := l.Duration / 2
		if wait < 30*time.Second {
			wait = 30 * time.Second
		}
		expires := time.Now().Add(l.Duration)
		for {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			raw, err := l.client.Renew(rctx, l.raw)
			cancel()
			if err == nil {
				l.raw = raw
				l.Duration = raw.ACK.IPAddressLeaseTime(l.Duration)
				l.opts.Log.Debug("dhcp lease renewed", "interface", l.Interface, "lease", l.Duration)
				break
			}
			if time.Now().After(expires) {
				// Lost: start over; the server may still give the same
				// address (pixie keeps leases per MAC).
				rctx, cancel := context.WithTimeout(ctx, time.Minute)
				raw, err = l.client.Request(rctx, dhcpv4.WithOption(dhcpv4.OptClassIdentifier(l.opts.ClassID)))
				cancel()
				if err == nil {
					if nl, err2 := fromACK(l.Interface, l.MAC, raw); err2 == nil {
						l.raw, l.Address, l.Router, l.DNS, l.Duration = raw, nl.Address, nl.Router, nl.DNS, nl.Duration
						if err := l.apply(); err != nil {
							l.opts.Log.Error("dhcp: apply new lease", "err", err)
						}
						break
					}
				}
			}
			l.opts.Log.Warn("dhcp renew failed", "interface", l.Interface, "err", err)
			wait = max(time.Until(expires)/2, 10*time.Second)
		}
	}
}
