package labcli

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/lab/internal/lab"
)

// labFlags are what up, down, status and e2e share.
type labFlags struct {
	topology, root, bin, stateDir, logLevel string
}

func (f *labFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.StringVarP(&f.topology, "topology", "t", "lab/topologies/fabric.yaml", "topology file")
	fl.StringVar(&f.root, "root", ".", "the repository (build/ artifacts and the topology's image files are relative to it)")
	fl.StringVar(&f.bin, "bin", "", "directory of metal-central, metalctl, metal-pixie, metal-bmc, metal-lab (default: next to metal-lab)")
	fl.StringVar(&f.stateDir, "state-dir", "/var/lib/metalfleet/lab", "where labs keep their state, logs, disks and database")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
}

func (f *labFlags) open(cmd *cobra.Command) (*lab.Lab, error) {
	root, err := filepath.Abs(f.root)
	if err != nil {
		return nil, err
	}
	bin := f.bin
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, err
		}
		bin = filepath.Dir(exe)
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return nil, err
	}
	top := f.topology
	if !filepath.IsAbs(top) {
		top = filepath.Join(root, top)
	}
	log, _, err := agent.NewLogger(cmd.ErrOrStderr(), f.logLevel, "text")
	if err != nil {
		return nil, err
	}
	return lab.Open(lab.Config{TopologyFile: top, Root: root, Bin: bin, StateDir: f.stateDir, Out: cmd.ErrOrStderr(), Log: log})
}

func upCmd() *cobra.Command {
	var (
		f        labFlags
		recreate bool
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Build the lab's partition and power its machines on; it keeps running",
		Long: `up builds the topology's network namespaces, veth pairs and bridges,
starts metal-central (embedded PostgreSQL), sets up the partition with
metalctl, starts metal-pixie (also the BMC network's DHCP server) and one BMC
per machine (Redfish with its SSH serial console, at a fixed address or one
leased from pixie; or ipmi_sim with serial-over-LAN), gives central the
partition's BMC settings, starts the partition's metal-bmc (the static list
plus pixie's leases), and powers the machines on with metalctl machine
power on, which metal-bmc carries out. They PXE-boot into the installer and
wait.

A lab of the same name that is up stays as it is: up says so and prints how
to use it. --recreate tears it down and builds it anew. What a failed or
crashed run left behind is always torn down first.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open(cmd)
			if err != nil {
				return err
			}
			tm, err := l.Up(cmd.Context(), recreate)
			if errors.Is(err, lab.ErrRunning) {
				fmt.Fprintf(cmd.ErrOrStderr(), "%v: nothing changed (metal-lab up --recreate, or make lab LAB_RECREATE=1, builds it anew)\n", err)
				fmt.Fprint(cmd.OutOrStdout(), l.Instructions())
				return nil
			}
			if err != nil {
				return fmt.Errorf("%w\n(the lab is left as it is for a look; `metal-lab down` removes it)", err)
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "up in %s: network %s, central %s, setup %s, pixie %s, BMCs %s, metal-bmc %s\n",
				(tm.Network + tm.Central + tm.Setup + tm.Pixie + tm.BMCs + tm.MetalBMC).Round(time.Second),
				tm.Network.Round(time.Millisecond), tm.Central.Round(time.Millisecond), tm.Setup.Round(time.Millisecond),
				tm.Pixie.Round(time.Millisecond), tm.BMCs.Round(time.Millisecond), tm.MetalBMC.Round(time.Millisecond))
			fmt.Fprint(cmd.OutOrStdout(), l.Instructions())
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&recreate, "recreate", false, "tear a lab that is up down and build it anew")
	return cmd
}

func downCmd() *cobra.Command {
	var f labFlags
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop the lab's processes and delete its namespaces, disks and database (logs stay)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open(cmd)
			if err != nil {
				return err
			}
			return l.Down(cmd.Context())
		},
	}
	f.add(cmd)
	return cmd
}

func statusCmd() *cobra.Command {
	var f labFlags
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the lab's processes, namespaces, machines' power and central's machine list",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open(cmd)
			if err != nil {
				return err
			}
			return l.Status(cmd.Context(), cmd.OutOrStdout())
		},
	}
	f.add(cmd)
	return cmd
}

func e2eCmd() *cobra.Command {
	var (
		f       labFlags
		keep    bool
		jsonOut string
	)
	cmd := &cobra.Command{
		Use:   "e2e",
		Short: "The end-to-end test: up, machines wait, allocate, boot from disk, reinstall, free (the installer on metalctl machine console), down",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := f.open(cmd)
			if err != nil {
				return err
			}
			res, err := l.E2E(cmd.Context(), keep)
			printE2E(cmd, res)
			if jsonOut != "" {
				b, _ := json.MarshalIndent(struct {
					lab.Result
					Passed bool
					Cores  int
				}{res, err == nil, runtime.NumCPU()}, "", "  ")
				if werr := os.WriteFile(jsonOut, append(b, '\n'), 0o644); werr != nil {
					return errors.Join(err, werr)
				}
			}
			if err != nil {
				return fmt.Errorf("e2e failed: %w", err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), "e2e passed")
			return nil
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&keep, "keep", false, "leave the lab running afterwards (also after a failure)")
	cmd.Flags().StringVar(&jsonOut, "json", "", "also write the timings as JSON to this file (durations in nanoseconds)")
	return cmd
}

func printE2E(cmd *cobra.Command, r lab.Result) {
	w := cmd.OutOrStdout()
	s := func(d time.Duration) string {
		if d == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f s", d.Seconds())
	}
	fmt.Fprintf(w, "lab timings (accel %s):\n", r.Accel)
	fmt.Fprintf(w, "  up: network %s, central %s, setup %s, pixie %s, BMCs %s, metal-bmc %s\n", s(r.Up.Network), s(r.Up.Central), s(r.Up.Setup), s(r.Up.Pixie), s(r.Up.BMCs), s(r.Up.MetalBMC))
	if r.Up.Routers > 0 {
		fmt.Fprintf(w, "  router guests booted, leaves registered and provisioned: %s\n", s(r.Up.Routers))
		fmt.Fprintf(w, "  leaves registered → BGP Established with EVPN routes: %s\n", s(r.Fabric.Fabric))
	}
	for _, m := range slices.Sorted(maps.Keys(r.Up.KnownFromBMC)) {
		k := r.Up.KnownFromBMC[m]
		fmt.Fprintf(w, "  before power-on: %s %s from its BMC %s (%s)\n", m, k.Provisioning, k.Address, k.Source)
	}
	for _, m := range slices.Sorted(maps.Keys(r.Waiting)) {
		fmt.Fprintf(w, "  power on (metalctl, metal-bmc) → Waiting %s: %s\n", m, s(r.Waiting[m]))
	}
	fmt.Fprintf(w, "  allocate → Phoned Home: %s\n", s(r.Allocate))
	fmt.Fprintf(w, "  power reset (metalctl, metal-bmc) → OS up from disk: %s\n", s(r.DiskBoot))
	fmt.Fprintf(w, "  reinstall → Phoned Home: %s\n", s(r.Reinstall))
	fmt.Fprintf(w, "  delete (machine off) → Waiting: %s\n", s(r.Free))
	if r.Console.Bytes > 0 {
		fmt.Fprintf(w, "  delete → installer's first byte on metalctl machine console: %s (%d bytes, %d sessions)\n", s(r.Console.FirstByte), r.Console.Bytes, r.Console.Sessions)
	}
	for _, m := range slices.Sorted(maps.Keys(r.BMCLeases)) {
		fmt.Fprintf(w, "  %s's BMC lease at the end: %s\n", m, r.BMCLeases[m])
	}
	fmt.Fprintf(w, "  total: %s\n", s(r.Total))
}

// serveCmd serves files over HTTP: the lab's stand-in for wherever an
// operator keeps OS images. Paths in URLs are what --file names them.
func serveCmd() *cobra.Command {
	var (
		listen string
		files  []string
	)
	cmd := &cobra.Command{
		Use:    "serve",
		Short:  "Serve files over HTTP (the lab's image server)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			mux := http.NewServeMux()
			for _, f := range files {
				path, file, ok := strings.Cut(f, "=")
				if !ok || !strings.HasPrefix(path, "/") {
					return fmt.Errorf("--file %q: want /url/path=/file", f)
				}
				mux.HandleFunc("GET "+path, func(w http.ResponseWriter, r *http.Request) { http.ServeFile(w, r, file) })
			}
			l, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
			go func() {
				<-cmd.Context().Done()
				_ = srv.Close()
			}()
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&listen, "listen", ":8080", "address")
	cmd.Flags().StringArrayVar(&files, "file", nil, "/url/path=/file/to/serve (repeatable)")
	return cmd
}

func execCmd() *cobra.Command {
	var f labFlags
	cmd := &cobra.Command{
		Use:   "exec LEAF COMMAND...",
		Short: "Run a shell command in a fabric leaf's router guest (its command channel on mgmt)",
		Example: `  metal-lab exec leaf01 vtysh -c "'show bgp l2vpn evpn summary'" -t lab/topologies/fabric.yaml
  metal-lab exec leaf01 ip -br link show master Vrf104001 -t lab/topologies/fabric.yaml`,
		Args: cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := f.open(cmd)
			if err != nil {
				return err
			}
			out, err := l.RouterExec(cmd.Context(), args[0], strings.Join(args[1:], " "))
			fmt.Fprint(cmd.OutOrStdout(), out)
			return err
		},
	}
	f.add(cmd)
	return cmd
}
