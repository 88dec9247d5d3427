package sonicemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// LinkSource tells the state of the netdevs (netlink in the guest, a fake
// in tests).
type LinkSource interface {
	// Links returns every netdev's state by name.
	Links(ctx context.Context) (map[string]LinkState, error)
	// Watch sends on the channel whenever a netdev may have changed,
	// until ctx ends.
	Watch(ctx context.Context) (<-chan struct{}, error)
}

// NeighbourSource tells the LLDP neighbours (lldpd through lldpcli in the
// guest, a fake in tests).
type NeighbourSource interface {
	// Neighbours returns the neighbour of each port that has one.
	Neighbours(ctx context.Context) (map[string]Neighbour, error)
	// Watch sends on the channel whenever the neighbours may have
	// changed, until ctx ends.
	Watch(ctx context.Context) (<-chan struct{}, error)
}

// Observer writes what SONiC's daemons observe back into APPL_DB, for
// every port CONFIG_DB's PORT table names: PORT_TABLE:<port>
// admin_status/oper_status/mtu from the netdev (portsyncd, orchagent) and
// LLDP_ENTRY_TABLE:<port> from lldpd (lldp_syncd), the row deleted when
// the neighbour goes. It writes on every change its sources report and
// everything again every Poll.
type Observer struct {
	// Config is CONFIG_DB (for the port list), ConfigSep its separator.
	Config    *redis.Client
	ConfigSep string
	// Appl writes APPL_DB.
	Appl  *Writer
	Links LinkSource
	// LLDP is nil when the switch runs no lldpd.
	LLDP NeighbourSource
	// Poll is the period of the full write (0: 30 s); it also picks up
	// PORT rows added to CONFIG_DB. Each one runs lldpcli, which is most
	// of an idle guest's sonic-emu CPU under TCG: events carry the rest.
	Poll time.Duration
	// Settle is how long a burst of events may last (0: 20 ms).
	Settle time.Duration
	Log    *slog.Logger
}

// Sync writes PORT_TABLE (and LLDP_ENTRY_TABLE) once.
func (o *Observer) Sync(ctx context.Context) error {
	keys, err := o.Config.Keys(ctx, "PORT"+o.ConfigSep+"*").Result()
	if err != nil {
		return fmt.Errorf("read CONFIG_DB PORT: %w", err)
	}
	var ports []string
	for _, k := range keys {
		p := strings.TrimPrefix(k, "PORT"+o.ConfigSep)
		if p == "" || strings.Contains(p, o.ConfigSep) {
			o.log().Warn("PORT row ignored", "key", k)
			continue
		}
		ports = append(ports, p)
	}
	links, err := o.Links.Links(ctx)
	if err != nil {
		return fmt.Errorf("links: %w", err)
	}
	rows := make(map[string]map[string]string, len(ports))
	for _, p := range ports {
		l, ok := links[p]
		rows[p] = portRow(l, ok)
	}
	var errs []error
	if err := o.Appl.Sync(ctx, PortTable, rows); err != nil {
		errs = append(errs, err)
	}
	if o.LLDP != nil {
		nbrs, err := o.LLDP.Neighbours(ctx)
		if err != nil {
			// The rows stay as they are: an lldpd restarting is no
			// reason to report every neighbour gone.
			errs = append(errs, fmt.Errorf("lldp: %w", err))
		} else {
			rows := map[string]map[string]string{}
			for _, p := range ports {
				if n, ok := nbrs[p]; ok {
					rows[p] = lldpRow(n)
				}
			}
			if err := o.Appl.Sync(ctx, LLDPTable, rows); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// Run writes at start, on every change and every Poll until ctx ends. A
// source that cannot be watched leaves the poll alone to catch up.
func (o *Observer) Run(ctx context.Context) error {
	poll, settle := o.Poll, o.Settle
	if poll <= 0 {
		poll = 30 * time.Second
	}
	if settle <= 0 {
		settle = 20 * time.Millisecond
	}
	var linkC, lldpC <-chan struct{}
	var err error
	if linkC, err = o.Links.Watch(ctx); err != nil {
		o.log().Warn("no link events, polling only", "err", err)
	}
	if o.LLDP != nil {
		if lldpC, err = o.LLDP.Watch(ctx); err != nil {
			o.log().Warn("no LLDP events, polling only", "err", err)
		}
	}
	sync := func() {
		if err := o.Sync(ctx); err != nil && ctx.Err() == nil {
			o.log().Error("APPL_DB write", "err", err)
		}
	}
	sync()
	tick := time.NewTicker(poll)
	defer tick.Stop()
	var settleC <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-linkC:
			if !ok {
				linkC = nil
				o.log().Warn("link events ended, polling only")
			} else if settleC == nil {
				settleC = time.After(settle)
			}
		case _, ok := <-lldpC:
			if !ok {
				lldpC = nil
			} else if settleC == nil {
				settleC = time.After(settle)
			}
		case <-settleC:
			settleC = nil
			sync()
		case <-tick.C:
			sync()
		}
	}
}

func (o *Observer) log() *slog.Logger {
	if o.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return o.Log
}
