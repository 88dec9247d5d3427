// Command sonic-emu is the lab's SONiC emulation on a leaf: it renders
// CONFIG_DB onto Linux as SONiC's managers would (lab/internal/sonicemu,
// docs/lab.md "The SONiC emulation").
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/metalfleet/metalfleet/lab/internal/sonicemu"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "sonic-emu:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("sonic-emu", flag.ExitOnError)
	dbConfig := fs.String("db-config", sonicemu.DefaultDBConfig, "SONiC's database_config.json")
	netns := fs.String("netns", "", "run the commands in this network namespace (default: the current one)")
	resync := fs.Duration("resync", 30*time.Second, "how often CONFIG_DB is read again and what changed rendered (lost notifications)")
	rerender := fs.Duration("rerender", 10*time.Minute, "how often everything is rendered again (heals drift on Linux; negative: never)")
	rename := fs.String("rename", "", "netdevs to rename to CONFIG_DB's port names first, comma-separated from=to (eth1=Ethernet0)")
	once := fs.Bool("once", false, "render once and exit")
	dryRun := fs.Bool("dry-run", false, "print the full plan and exit, running nothing")
	debug := fs.Bool("debug", false, "log every command")
	observe := fs.Bool("appl-db", true, "write the ports' oper state (and LLDP neighbours) into APPL_DB")
	lldp := fs.Bool("lldp", true, "read lldpd's neighbours (lldpcli) into APPL_DB LLDP_ENTRY_TABLE")
	lldpSocket := fs.String("lldp-socket", "", "lldpd's control socket (default lldpd's own)")
	poll := fs.Duration("appl-poll", 30*time.Second, "how often APPL_DB is written in full (besides link and LLDP events)")
	dhcrelay := fs.String("dhcrelay", "dhcrelay", "ISC's dhcrelay, run per VLAN with dhcp_servers@/dhcpv6_servers@ (empty: no DHCP relay)")
	logDir := fs.String("log-dir", "", "directory of the relays' logs (dhcrelay-Vlan<id>-v4.log; default: discarded)")
	_ = fs.Parse(args)

	level := slog.LevelInfo
	if *debug {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	c, sep, err := sonicemu.Open(*dbConfig)
	if err != nil {
		return err
	}
	defer c.Close()
	if *dryRun {
		s, bad, err := sonicemu.Read(ctx, c, sep)
		if err != nil {
			return err
		}
		fmt.Print(sonicemu.Format(sonicemu.Plan(sonicemu.State{}, s)))
		return errors.Join(bad...)
	}
	x := &sonicemu.Executor{Netns: *netns, Log: log}
	if *rename != "" {
		names := map[string]string{}
		for _, p := range strings.Split(*rename, ",") {
			from, to, ok := strings.Cut(strings.TrimSpace(p), "=")
			if !ok || from == "" || to == "" {
				return fmt.Errorf("--rename: %q is not from=to", p)
			}
			names[from] = to
		}
		if err := x.Rename(ctx, names); err != nil {
			return err
		}
	}
	e := &sonicemu.Emulator{Client: c, Sep: sep, Apply: x, Resync: *resync, Rerender: *rerender, Log: log}
	if *dhcrelay != "" && !*once {
		e.Relays = &sonicemu.Relays{
			Starter:   &sonicemu.ExecStarter{Path: *dhcrelay, Netns: *netns, LogDir: *logDir},
			Upstreams: &sonicemu.RouteUpstreams{Netns: *netns},
			Log:       log.With("part", "dhcp-relay"),
		}
	}
	if *once {
		_, err := e.Sync(ctx, true)
		return err
	}
	if !*observe {
		return e.Run(ctx)
	}
	appl, asep, err := sonicemu.OpenAppl(*dbConfig)
	if err != nil {
		return err
	}
	defer appl.Close()
	o := &sonicemu.Observer{
		Config: c, ConfigSep: sep, Appl: &sonicemu.Writer{Client: appl, Sep: asep},
		Links: &sonicemu.NetlinkLinks{Netns: *netns, Log: log}, Poll: *poll, Log: log.With("part", "appl"),
	}
	if *lldp {
		o.LLDP = &sonicemu.LLDPCli{Socket: *lldpSocket, Log: log}
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- o.Run(ctx) }()
	err = e.Run(ctx)
	cancel()
	return errors.Join(err, <-done)
}
