// Package dhcpc is the DHCPv4 client of the lab's BMCs: a BMC without a
// fixed address asks the BMC network's DHCP server (metal-pixie) for one,
// puts it on its interface, renews it at T1, rebinds until it expires, and
// starts over when it is refused or lost — what a real BMC's network stack
// does, so that metal-bmc finds it in the server's lease file.
package dhcpc

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Lease is the address a client holds.
type Lease struct {
	// Addr is the address with the network's prefix length.
	Addr    netip.Prefix
	Server  netip.Addr
	Routers []netip.Addr
	// Bound is when the server acknowledged it; Renew (T1), Rebind (T2)
	// and Expires follow from the server's times.
	Bound, Renew, Rebind, Expires time.Time
}

// Config of a client.
type Config struct {
	// Interface is the link to configure (it must exist and be up).
	Interface string
	// Hostname is sent as option 12, as BMCs do (optional).
	Hostname string
	// Exchange bounds one DISCOVER…ACK or one renewal (default 10 s,
	// nclient4 retransmits within it).
	Exchange time.Duration
	// MaxBackoff bounds the wait between failed attempts to get an
	// address (default 30 s; from 1 s, doubling).
	MaxBackoff time.Duration
	// OnLease, when set, is called after every change of the lease that
	// is in effect on the interface: bound, renewed, and (with a zero
	// Lease) lost.
	OnLease func(Lease)
	Log     *slog.Logger
}

// Client keeps one interface's address. Make it in the network namespace
// of the interface: its sockets (a raw one for DHCP, netlink for the
// address) stay there.
type Client struct {
	cfg   Config
	nc    *nclient4.Client
	nl    *netlink.Handle
	link  netlink.Link
	mu    sync.Mutex
	cur   Lease
	bound chan struct{} // closed at the first lease
	once  sync.Once
}

// New opens the client's sockets on cfg.Interface in the caller's network
// namespace.
func New(cfg Config) (*Client, error) {
	if cfg.Interface == "" {
		return nil, errors.New("dhcpc: interface required")
	}
	if cfg.Exchange <= 0 {
		cfg.Exchange = 10 * time.Second
	}
	if cfg.MaxBackoff <= 0 {
		cfg.MaxBackoff = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	nl, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("dhcpc: netlink: %w", err)
	}
	link, err := nl.LinkByName(cfg.Interface)
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("dhcpc: %s: %w", cfg.Interface, err)
	}
	// nclient4 retransmits 3 times, each after Exchange/4: the whole
	// exchange stays within Exchange.
	nc, err := nclient4.New(cfg.Interface, nclient4.WithTimeout(cfg.Exchange/4), nclient4.WithRetry(3))
	if err != nil {
		nl.Close()
		return nil, fmt.Errorf("dhcpc: %s: %w", cfg.Interface, err)
	}
	return &Client{cfg: cfg, nc: nc, nl: nl, link: link, bound: make(chan struct{})}, nil
}

// Lease is the lease in effect (ok false when there is none).
func (c *Client) Lease() (Lease, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cur, c.cur.Addr.IsValid()
}

// Wait returns the first lease, or ctx's error.
func (c *Client) Wait(ctx context.Context) (Lease, error) {
	select {
	case <-c.bound:
		l, _ := c.Lease()
		return l, nil
	case <-ctx.Done():
		return Lease{}, ctx.Err()
	}
}

// Run keeps an address on the interface until ctx ends, then closes the
// client. The address stays on the interface when Run returns (a BMC
// that stops serving does not tell the server; the lease runs out).
func (c *Client) Run(ctx context.Context) error {
	defer c.nc.Close()
	defer c.nl.Close()
	backoff := time.Second
	for {
		raw, err := c.request(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			c.cfg.Log.Warn("dhcp: no address yet; trying again", "interface", c.cfg.Interface, "in", backoff, "err", err)
			if !sleep(ctx, backoff) {
				return nil
			}
			backoff = min(2*backoff, c.cfg.MaxBackoff)
			continue
		}
		backoff = time.Second
		if err := c.keep(ctx, raw); err != nil {
			c.cfg.Log.Warn("dhcp: lease lost; asking for a new one", "interface", c.cfg.Interface, "err", err)
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

func (c *Client) request(ctx context.Context) (*nclient4.Lease, error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Exchange)
	defer cancel()
	return c.nc.Request(ctx, c.mods()...)
}

func (c *Client) mods() []dhcpv4.Modifier {
	var mods []dhcpv4.Modifier
	if c.cfg.Hostname != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(c.cfg.Hostname)))
	}
	return mods
}

// keep applies raw and renews it until it is refused or runs out; it
// returns why (nil when ctx ended).
func (c *Client) keep(ctx context.Context, raw *nclient4.Lease) error {
	l, err := parse(raw)
	if err != nil {
		return err
	}
	if err := c.apply(l); err != nil {
		return err
	}
	for {
		// T1: renew. A failed renewal is retried at half the time left
		// until T2, then until expiry (RFC 2131 4.4.5), at least a second
		// apart; nclient4 sends every renewal as a broadcast carrying the
		// bound address, so renewing past T2 is rebinding as well.
		next := l.Renew
		if now := time.Now(); !now.Before(next) {
			until := l.Rebind
			if !now.Before(until) {
				until = l.Expires
			}
			next = now.Add(max(until.Sub(now)/2, time.Second))
		}
		if !next.Before(l.Expires) {
			c.drop(l)
			return fmt.Errorf("lease of %s expired at %s without a renewal", l.Addr, l.Expires.Format(time.TimeOnly))
		}
		if !sleepUntil(ctx, next) {
			return nil
		}
		// An address whose lease ran out is not ours: the exchange ends
		// at the expiry at the latest.
		deadline := time.Now().Add(c.cfg.Exchange)
		if l.Expires.Before(deadline) {
			deadline = l.Expires
		}
		rctx, cancel := context.WithDeadline(ctx, deadline)
		renewed, err := c.nc.Renew(rctx, raw, c.mods()...)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		var nak *nclient4.ErrNak
		switch {
		case errors.As(err, &nak):
			c.drop(l)
			return fmt.Errorf("the server refused the renewal of %s (NAK: %s)", l.Addr, nak.Nak.Message())
		case err != nil:
			c.cfg.Log.Info("dhcp: renewal unanswered; trying again", "address", l.Addr, "expires", l.Expires.Format(time.TimeOnly), "err", err)
			if time.Now().After(l.Expires) {
				c.drop(l)
				return fmt.Errorf("lease of %s expired at %s without a renewal", l.Addr, l.Expires.Format(time.TimeOnly))
			}
			// Past T1 now: the loop's retry rule applies.
			l.Renew = time.Now()
			continue
		}
		nl, err := parse(renewed)
		if err != nil {
			c.drop(l)
			return err
		}
		if nl.Addr != l.Addr {
			// The server moved it: a new lease, not a renewal.
			c.drop(l)
		}
		if err := c.apply(nl); err != nil {
			return err
		}
		raw, l = renewed, nl
	}
}

// parse reads an ACK into a Lease.
func parse(raw *nclient4.Lease) (Lease, error) {
	ack := raw.ACK
	ip, ok := netip.AddrFromSlice(ack.YourIPAddr.To4())
	if !ok || ip.IsUnspecified() {
		return Lease{}, fmt.Errorf("ACK without an address: %s", ack.Summary())
	}
	bits := 32
	if m := ack.SubnetMask(); m != nil {
		bits, _ = net.IPMask(m).Size()
	}
	if bits == 0 {
		// A mask that is not a prefix (or none): a host route, the
		// server is reached through it anyway.
		bits = 32
	}
	srv, _ := netip.AddrFromSlice(ack.ServerIdentifier().To4())
	lt := ack.IPAddressLeaseTime(0)
	if lt <= 0 {
		return Lease{}, fmt.Errorf("ACK without a lease time: %s", ack.Summary())
	}
	t1 := ack.IPAddressRenewalTime(lt / 2)
	t2 := ack.IPAddressRebindingTime(lt * 7 / 8)
	if t1 <= 0 || t1 > lt {
		t1 = lt / 2
	}
	if t2 < t1 || t2 > lt {
		t2 = lt * 7 / 8
	}
	now := time.Now()
	l := Lease{Addr: netip.PrefixFrom(ip, bits), Server: srv, Bound: now, Renew: now.Add(t1), Rebind: now.Add(t2), Expires: now.Add(lt)}
	for _, r := range ack.Router() {
		if a, ok := netip.AddrFromSlice(r.To4()); ok {
			l.Routers = append(l.Routers, a)
		}
	}
	return l, nil
}

// apply puts l's address on the interface with the lease's lifetime, so
// that the kernel drops it at expiry even if this client hangs, and the
// first router as the default route.
func (c *Client) apply(l Lease) error {
	left := uint32(max(time.Until(l.Expires).Round(time.Second)/time.Second, 1))
	a := &netlink.Addr{IPNet: &net.IPNet{IP: l.Addr.Addr().AsSlice(), Mask: net.CIDRMask(l.Addr.Bits(), 32)}, ValidLft: int(left), PreferedLft: int(left)}
	if err := c.nl.AddrReplace(c.link, a); err != nil {
		return fmt.Errorf("put %s on %s: %w", l.Addr, c.cfg.Interface, err)
	}
	if len(l.Routers) > 0 {
		r := &netlink.Route{LinkIndex: c.link.Attrs().Index, Gw: l.Routers[0].AsSlice(), Family: unix.AF_INET}
		if err := c.nl.RouteReplace(r); err != nil {
			c.cfg.Log.Warn("dhcp: default route", "via", l.Routers[0], "err", err)
		}
	}
	c.mu.Lock()
	was := c.cur
	c.cur = l
	c.mu.Unlock()
	if was.Addr != l.Addr {
		c.cfg.Log.Info("dhcp: bound", "interface", c.cfg.Interface, "address", l.Addr, "server", l.Server, "lease", l.Expires.Sub(l.Bound).Round(time.Second))
	} else {
		c.cfg.Log.Debug("dhcp: renewed", "address", l.Addr, "until", l.Expires.Format(time.TimeOnly))
	}
	c.once.Do(func() { close(c.bound) })
	if c.cfg.OnLease != nil {
		c.cfg.OnLease(l)
	}
	return nil
}

// drop takes l's address off the interface: it is no longer ours.
func (c *Client) drop(l Lease) {
	a := &netlink.Addr{IPNet: &net.IPNet{IP: l.Addr.Addr().AsSlice(), Mask: net.CIDRMask(l.Addr.Bits(), 32)}}
	if err := c.nl.AddrDel(c.link, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		c.cfg.Log.Warn("dhcp: remove address", "address", l.Addr, "err", err)
	}
	c.mu.Lock()
	c.cur = Lease{}
	c.mu.Unlock()
	c.cfg.Log.Info("dhcp: address given up", "interface", c.cfg.Interface, "address", l.Addr)
	if c.cfg.OnLease != nil {
		c.cfg.OnLease(Lease{})
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func sleepUntil(ctx context.Context, t time.Time) bool { return sleep(ctx, time.Until(t)) }
