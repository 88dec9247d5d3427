package sonicemu

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/vishvananda/netlink"
	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetlinkLinks is the LinkSource of the switch's Linux: netdevs listed and
// followed through rtnetlink (RTMGRP_LINK), in Netns when it is set.
type NetlinkLinks struct {
	// Netns is a named network namespace (/run/netns/<name>); empty: the
	// current one.
	Netns string
	Log   *slog.Logger
}

// handle opens rtnetlink only: a handle of every family needs xfrm and
// netfilter sockets, which the router guest's kernel does not load
// ("protocol not supported").
func (n *NetlinkLinks) handle() (*netlink.Handle, error) {
	if n.Netns == "" {
		return netlink.NewHandle(unix.NETLINK_ROUTE)
	}
	ns, err := vnetns.GetFromName(n.Netns)
	if err != nil {
		return nil, fmt.Errorf("netns %s: %w", n.Netns, err)
	}
	defer ns.Close()
	return netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
}

// Links lists the netdevs.
func (n *NetlinkLinks) Links(_ context.Context) (map[string]LinkState, error) {
	h, err := n.handle()
	if err != nil {
		return nil, err
	}
	defer h.Close()
	ls, err := h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("link list: %w", err)
	}
	out := make(map[string]LinkState, len(ls))
	for _, l := range ls {
		a := l.Attrs()
		out[a.Name] = linkState(a)
	}
	return out, nil
}

// linkState reads a netdev's state as SONiC's oper_status means it: the
// port is up and has a carrier. A driver that reports no operstate
// ("unknown") is judged by its carrier (IFF_LOWER_UP).
func linkState(a *netlink.LinkAttrs) LinkState {
	up := a.Flags&net.FlagUp != 0
	oper := a.OperState == netlink.OperUp ||
		(a.OperState == netlink.OperUnknown && a.RawFlags&unix.IFF_LOWER_UP != 0)
	return LinkState{AdminUp: up, OperUp: up && oper, MTU: a.MTU}
}

// Watch subscribes to link events; the channel closes when the
// subscription fails or ctx ends.
func (n *NetlinkLinks) Watch(ctx context.Context) (<-chan struct{}, error) {
	updates := make(chan netlink.LinkUpdate, 64)
	done := make(chan struct{})
	opts := netlink.LinkSubscribeOptions{
		ErrorCallback: func(err error) { n.log().Warn("link events", "err", err) },
	}
	if n.Netns != "" {
		ns, err := vnetns.GetFromName(n.Netns)
		if err != nil {
			return nil, fmt.Errorf("netns %s: %w", n.Netns, err)
		}
		defer ns.Close()
		opts.Namespace = &ns
	}
	if err := netlink.LinkSubscribeWithOptions(updates, done, opts); err != nil {
		return nil, fmt.Errorf("link subscribe: %w", err)
	}
	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case _, ok := <-updates:
				if !ok {
					return
				}
				select {
				case out <- struct{}{}:
				default: // one pending wake-up is enough
				}
			}
		}
	}()
	return out, nil
}

func (n *NetlinkLinks) log() *slog.Logger {
	if n.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return n.Log
}
