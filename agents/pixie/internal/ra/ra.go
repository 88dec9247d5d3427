// Package ra sends IPv6 router advertisements on the PXE network. iPXE
// waits about 16 s for one before it gives up on IPv6 and boots on; a
// PXE network without a router of its own boots much faster when pixie
// advertises (and, for IPv6-only networks, tells clients to use DHCPv6).
package ra

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"time"

	"github.com/mdlayher/ndp"
	"golang.org/x/net/ipv6"
)

// Config of the advertiser.
type Config struct {
	Interface string
	// Prefixes are announced on-link (without SLAAC when Managed).
	Prefixes []netip.Prefix
	// Managed sets the M and O flags: addresses and options from DHCPv6.
	Managed bool
	// RouterLifetime 0 says "not a default router": pixie advertises to
	// configure hosts, not to route.
	RouterLifetime time.Duration
	// Interval between unsolicited advertisements (default 10s).
	Interval time.Duration
	Log      *slog.Logger
}

// Advertisement is the RA pixie sends for cfg on an interface with mac.
func Advertisement(cfg Config, mac net.HardwareAddr) *ndp.RouterAdvertisement {
	ra := &ndp.RouterAdvertisement{
		CurrentHopLimit:      64,
		ManagedConfiguration: cfg.Managed,
		OtherConfiguration:   cfg.Managed,
		RouterLifetime:       cfg.RouterLifetime,
	}
	if len(mac) > 0 {
		ra.Options = append(ra.Options, &ndp.LinkLayerAddress{Direction: ndp.Source, Addr: mac})
	}
	for _, p := range cfg.Prefixes {
		ra.Options = append(ra.Options, &ndp.PrefixInformation{
			PrefixLength:                   uint8(p.Bits()),
			OnLink:                         true,
			AutonomousAddressConfiguration: !cfg.Managed,
			ValidLifetime:                  24 * time.Hour,
			PreferredLifetime:              4 * time.Hour,
			Prefix:                         p.Masked().Addr(),
		})
	}
	return ra
}

// Run advertises until ctx ends: at once, every Interval (with jitter)
// and in answer to router solicitations.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Interval <= 0 {
		cfg.Interval = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	for _, p := range cfg.Prefixes {
		if !p.Addr().Is6() || p.Addr().Is4In6() {
			return fmt.Errorf("ra: prefix %s is not IPv6", p)
		}
	}
	ifi, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return fmt.Errorf("ra: %w", err)
	}
	conn, err := listen(ctx, ifi)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := conn.JoinGroup(netip.MustParseAddr("ff02::2")); err != nil {
		return fmt.Errorf("ra: join all-routers on %s: %w", cfg.Interface, err)
	}
	var f ipv6.ICMPFilter
	f.SetAll(true)
	f.Accept(ipv6.ICMPTypeRouterSolicitation)
	if err := conn.SetICMPFilter(&f); err != nil {
		return fmt.Errorf("ra: icmp filter: %w", err)
	}
	msg := Advertisement(cfg, ifi.HardwareAddr)
	allNodes := netip.MustParseAddr("ff02::1")

	solicited := make(chan struct{}, 1)
	go func() {
		for ctx.Err() == nil {
			_ = conn.SetReadDeadline(time.Now().Add(time.Second))
			m, _, from, err := conn.ReadFrom()
			if err != nil {
				continue
			}
			if _, ok := m.(*ndp.RouterSolicitation); ok {
				cfg.Log.Debug("ra: router solicitation", "from", from)
				select {
				case solicited <- struct{}{}:
				default:
				}
			}
		}
	}()

	var last time.Time
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-solicited:
			// One answer covers a burst of solicitations.
			if time.Since(last) < 500*time.Millisecond {
				continue
			}
		}
		if err := conn.WriteTo(msg, nil, allNodes); err != nil {
			cfg.Log.Warn("ra: send", "interface", cfg.Interface, "err", err)
		}
		last = time.Now()
		timer.Reset(cfg.Interval*3/4 + rand.N(cfg.Interval/2+1))
	}
}

// listen waits for the interface's link-local address: right after the
// link comes up it is tentative (duplicate address detection) and cannot
// be bound.
func listen(ctx context.Context, ifi *net.Interface) (*ndp.Conn, error) {
	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, _, err := ndp.Listen(ifi, ndp.LinkLocal)
		if err == nil {
			return conn, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("ra: listen on %s: %w", ifi.Name, err)
		}
		select {
		case <-ctx.Done():
			return nil, errors.Join(ctx.Err(), err)
		case <-time.After(250 * time.Millisecond):
		}
	}
}
