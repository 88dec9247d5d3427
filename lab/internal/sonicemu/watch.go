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

// Applier runs a plan (Executor in the leaf, a recorder in tests).
type Applier interface {
	Apply(ctx context.Context, plan []Cmd) error
}

// Emulator keeps Linux in line with CONFIG_DB: it renders on every change
// CONFIG_DB notifies, reads CONFIG_DB again every Resync (a lost
// notification) and renders everything again every Rerender, which heals
// drift (someone ran `ip` by hand).
type Emulator struct {
	Client *redis.Client
	// Sep is CONFIG_DB's key separator ("|").
	Sep   string
	Apply Applier
	// Resync is the period of the incremental re-read (0: 30 s): it runs
	// commands only when CONFIG_DB differs from what was rendered.
	Resync time.Duration
	// Rerender is the period of the full render (0: 10 min; negative:
	// never). Every command runs again: under TCG the router guest's ~30
	// commands cost ~2 s of CPU, a steady 7 % of a core at 30 s.
	Rerender time.Duration
	// Settle is how long a burst of notifications may last before the
	// render (0: 50 ms): metal-core writes a document in a few pipelines.
	Settle time.Duration
	// Relays, when set, runs the DHCP relays the VLANs ask for; it is
	// updated on every Sync and every RelayCheck (0: 5 s), which picks up
	// routes to the servers that appeared or changed (BGP converging).
	Relays     *Relays
	RelayCheck time.Duration
	Log        *slog.Logger

	applied State
	desired State
	synced  bool
}

// Sync reads CONFIG_DB and applies the plan from what was applied last.
// full adds the render from scratch (idempotent) for the resync. It
// returns the plan it ran. After an error the applied state stays the
// old one, so the next Sync tries the same change again.
func (e *Emulator) Sync(ctx context.Context, full bool) ([]Cmd, error) {
	desired, bad, err := Read(ctx, e.Client, e.Sep)
	if err != nil {
		return nil, err
	}
	for _, b := range bad {
		e.log().Warn("row ignored", "err", b)
	}
	e.desired = desired
	if e.Relays != nil {
		// After the render (deferred): a relay needs its SVI. Whether or
		// not the render failed: one bad port blocks no VLAN's DHCP.
		defer e.Relays.Update(ctx, desired)
	}
	plan := Plan(e.applied, desired)
	if full || !e.synced {
		plan = append(plan, Plan(State{}, desired)...)
	}
	if len(plan) == 0 {
		return nil, nil
	}
	start := time.Now()
	if err := e.Apply.Apply(ctx, plan); err != nil {
		return plan, fmt.Errorf("render: %w", err)
	}
	e.applied, e.synced = desired, true
	e.log().Info("rendered", "commands", len(plan), "full", full, "took", time.Since(start))
	return plan, nil
}

// Run renders CONFIG_DB at start, then on its keyspace notifications,
// every Resync (what changed) and every Rerender (all), until ctx ends.
func (e *Emulator) Run(ctx context.Context) error {
	resync, settle := e.Resync, e.Settle
	if resync <= 0 {
		resync = 30 * time.Second
	}
	if settle <= 0 {
		settle = 50 * time.Millisecond
	}
	if err := enableNotifications(ctx, e.Client); err != nil {
		// Without notifications the resync alone still converges.
		e.log().Warn("no keyspace notifications, resync only", "err", err)
	}
	db := e.Client.Options().DB
	sub := e.Client.PSubscribe(ctx, fmt.Sprintf("__keyspace@%d__:*", db))
	defer sub.Close()
	events := sub.Channel()
	if _, err := e.Sync(ctx, true); err != nil {
		e.log().Error("render", "err", err)
	}
	tick := time.NewTicker(resync)
	defer tick.Stop()
	var rerenderC <-chan time.Time
	switch rerender := e.Rerender; {
	case rerender == 0:
		rerender = 10 * time.Minute
		fallthrough
	case rerender > 0:
		rt := time.NewTicker(rerender)
		defer rt.Stop()
		rerenderC = rt.C
	}
	var relayC <-chan time.Time
	if e.Relays != nil {
		defer e.Relays.Close()
		check := e.RelayCheck
		if check <= 0 {
			check = 5 * time.Second
		}
		rt := time.NewTicker(check)
		defer rt.Stop()
		relayC = rt.C
	}
	var settleC <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-relayC:
			e.Relays.Update(ctx, e.desired)
		case m, ok := <-events:
			if !ok {
				return errors.New("keyspace subscription closed")
			}
			if !e.relevant(m.Channel) || settleC != nil {
				continue
			}
			settleC = time.After(settle)
		case <-settleC:
			settleC = nil
			if _, err := e.Sync(ctx, false); err != nil {
				e.log().Error("render", "err", err)
			}
		case <-tick.C:
			if _, err := e.Sync(ctx, false); err != nil {
				e.log().Error("render", "err", err)
			}
		case <-rerenderC:
			if _, err := e.Sync(ctx, true); err != nil {
				e.log().Error("render", "err", err)
			}
		}
	}
}

// relevant reports whether a keyspace channel names a table the emulation
// renders.
func (e *Emulator) relevant(channel string) bool {
	_, key, ok := strings.Cut(channel, "__:")
	if !ok {
		return false
	}
	table, _, _ := strings.Cut(key, e.Sep)
	for _, t := range tables {
		if t == table {
			return true
		}
	}
	return false
}

// enableNotifications adds K (keyspace), h (hash) and g (DEL) to the
// server's notify-keyspace-events, keeping what is set: metal-core and
// SONiC's own daemons subscribe too.
func enableNotifications(ctx context.Context, c *redis.Client) error {
	cur, err := c.ConfigGet(ctx, "notify-keyspace-events").Result()
	if err != nil {
		return fmt.Errorf("config get notify-keyspace-events: %w", err)
	}
	flags := cur["notify-keyspace-events"]
	if strings.Contains(flags, "A") {
		flags = strings.ReplaceAll(flags, "A", "g$lshzxetd")
	}
	for _, f := range "Khg" {
		if !strings.ContainsRune(flags, f) {
			flags += string(f)
		}
	}
	if err := c.ConfigSet(ctx, "notify-keyspace-events", flags).Err(); err != nil {
		return fmt.Errorf("config set notify-keyspace-events: %w", err)
	}
	return nil
}

func (e *Emulator) log() *slog.Logger {
	if e.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return e.Log
}
