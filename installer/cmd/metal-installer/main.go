// Command metal-installer is the init of the installer's initramfs
// (docs/installer.md). As PID 1 (or with --init) it mounts the kernel file
// systems, loads the kernel modules of /lib/modules/load.order, logs to
// the console and runs the installation. By hand on a normal Linux,
// --dry-run collects and prints the machine's facts.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/metalfleet/metalfleet/installer/internal/facts"
	"github.com/metalfleet/metalfleet/installer/internal/run"
	"github.com/metalfleet/metalfleet/installer/internal/run/host"
	"github.com/metalfleet/metalfleet/installer/internal/run/link"
	"github.com/metalfleet/metalfleet/installer/internal/run/sysinit"
)

// version is set by the build (-ldflags -X main.version=...); in the
// u-root initramfs (where main is rewritten) from versionFile.
var version = "dev"

const versionFile = "/etc/metal-installer-version"

func main() {
	asInit := flag.Bool("init", os.Getpid() == 1, "act as PID 1: mount /proc, /sys, /dev..., load modules, log to the console")
	cmdlineFile := flag.String("cmdline", "/proc/cmdline", "file with the kernel command line")
	dryRun := flag.Bool("dry-run", false, "collect the machine's facts (and LLDP neighbours), print them as JSON and exit")
	wipeOK := flag.Bool("yes-wipe-all-disks", false, "run the real installation outside the initramfs (wipes every disk of this machine)")
	loadOrder := flag.String("modules", "/lib/modules/load.order", "kernel modules to load, in order (with --init)")
	stateDir := flag.String("state-dir", "/run/metal-installer", "where the agent keeps its credential (a tmpfs)")
	phonehome := flag.String("phonehome", "/usr/local/bin/metal-phonehome", "metal-phonehome binary to install")
	lldpWait := flag.Duration("lldp-wait", 5*time.Second, "how long to listen for LLDP")
	logLevel := flag.String("log-level", "info", "debug, info, warn or error")
	flag.Parse()

	var out io.Writer = os.Stderr
	if *asInit {
		// Signals a console may send must not end PID 1.
		signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGTSTP)
		mountErr := sysinit.Mount()
		out = sysinit.Console()
		if mountErr != nil {
			fmt.Fprintln(out, "metal-installer: mount:", mountErr)
		}
	}
	level := new(slog.LevelVar)
	if err := level.UnmarshalText([]byte(strings.ToUpper(*logLevel))); err != nil {
		fmt.Fprintln(out, "metal-installer: --log-level:", err)
		os.Exit(2)
	}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: level}))

	if b, err := os.ReadFile(versionFile); err == nil && version == "dev" {
		version = strings.TrimSpace(string(b))
	}
	if *asInit {
		// The kernel starts init without PATH; mkfs and friends are
		// looked up on it.
		if os.Getenv("PATH") == "" {
			os.Setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin:/bbin")
		}
		n, err := sysinit.LoadModules(*loadOrder, log)
		if err != nil {
			log.Warn("kernel modules", "err", err)
		}
		log.Info("metal-installer up", "version", version, "modules", n)
		if b, err := os.ReadFile(*cmdlineFile); err == nil && slices.Contains(strings.Fields(string(b)), "metal.shell") {
			go sysinit.Shell(log)
		}
	}

	ctx := context.Background()
	if !*asInit {
		var stop context.CancelFunc
		ctx, stop = signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
		defer stop()
	}

	if *dryRun {
		if err := printFacts(ctx, log, *lldpWait); err != nil {
			log.Error("dry run", "err", err)
			os.Exit(1)
		}
		return
	}
	if !*asInit && !*wipeOK {
		log.Error("refusing to install outside the initramfs: this wipes every disk of the machine; use --dry-run, or --yes-wipe-all-disks")
		os.Exit(2)
	}

	err := install(ctx, log, level, *cmdlineFile, *stateDir, *phonehome, *lldpWait, *asInit)
	if !*asInit {
		if err != nil {
			log.Error("metal-installer", "err", err)
			os.Exit(1)
		}
		return
	}
	// PID 1 must not exit (the kernel would panic); Run reboots itself
	// after failures, so getting here means even that failed.
	log.Error("metal-installer stopped; rebooting", "err", err)
	time.Sleep(10 * time.Second)
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	select {}
}

func install(ctx context.Context, log *slog.Logger, level *slog.LevelVar, cmdlineFile, stateDir, phonehome string, lldpWait time.Duration, asInit bool) error {
	hw := &host.Machine{Log: log}
	if asInit {
		hw.Link = link.Options{ResolvConf: "/etc/resolv.conf"}
	}
	b, err := os.ReadFile(cmdlineFile)
	if err != nil {
		return err
	}
	cl, err := run.ParseCmdline(string(b))
	if err != nil {
		// Without central there is nobody to report to: say it on the
		// console, wait so that it can be read, and boot again.
		log.Error("bad kernel command line; rebooting in 60 s", "err", err)
		if asInit {
			time.Sleep(60 * time.Second)
			_ = hw.Reboot(ctx)
		}
		return err
	}
	return run.Run(ctx, run.Config{
		Cmdline:         cl,
		Hardware:        hw,
		StateDir:        stateDir,
		Version:         version,
		PhonehomeBinary: phonehome,
		Log:             log,
		LogLevel:        level,
		LLDPWait:        lldpWait,
	})
}

func printFacts(ctx context.Context, log *slog.Logger, lldpWait time.Duration) error {
	mf, err := facts.Collect(ctx, facts.Root{}, log)
	if err != nil {
		return err
	}
	var ifaces []string
	for _, n := range mf.GetNics() {
		ifaces = append(ifaces, n.GetName())
	}
	if len(ifaces) > 0 && lldpWait > 0 {
		nb, err := facts.Neighbours(ctx, ifaces, lldpWait)
		if err != nil {
			log.Warn("lldp", "err", err)
		}
		for _, n := range mf.GetNics() {
			n.Neighbours = nb[n.GetName()]
		}
	}
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(mf)
	if err != nil {
		return err
	}
	_, err = os.Stdout.Write(append(b, '\n'))
	return err
}
