package lab

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/lab/internal/topo"
)

// Timings are how long the phases of Up took.
type Timings struct {
	Network, Central, Setup, Pixie, BMCs time.Duration
	// MetalBMC: the partition's BMC settings set, metal-bmc enrolled and
	// started, until central knew every machine's BMC from it.
	MetalBMC time.Duration
	// KnownFromBMC: how central knew each machine from metal-bmc before
	// it was powered on (its BMC's address and source, its state).
	KnownFromBMC map[string]KnownBMC `json:",omitempty"`
	// Routers: a fabric's router guests booted, the leaves registered
	// and provisioned (from their boot on, alongside pixie's start).
	Routers time.Duration
	// PoweredOn: when the power-on intents were raised in central
	// (metal-bmc executes them within a second or two; Up waits for that).
	PoweredOn time.Time
}

// ErrRunning is Up's answer for a lab that is up already, when it was not
// asked to recreate it.
var ErrRunning = errors.New("the lab is up already")

// Running tells whether the lab is up: it came up completely and some of
// its daemons still run.
func (l *Lab) Running() bool {
	if !l.state.Up {
		return false
	}
	for _, p := range l.state.Procs {
		if p.Alive() {
			return true
		}
	}
	return false
}

// Up builds the lab from scratch and powers its machines on. The daemons
// keep running after it returns. A lab of the same name that is up is left
// alone (ErrRunning) unless recreate is set; then, like the remains of a
// failed or crashed run, it is torn down first.
func (l *Lab) Up(ctx context.Context, recreate bool) (Timings, error) {
	var tm Timings
	if !recreate && l.Running() {
		return tm, fmt.Errorf("%w: %q (since %s)", ErrRunning, l.top.Name, l.state.Created.Local().Format(time.DateTime))
	}
	if err := l.checkPrerequisites(); err != nil {
		return tm, err
	}
	if err := l.Down(ctx); err != nil {
		return tm, fmt.Errorf("tear down the previous lab: %w", err)
	}
	// The previous run's consoles and logs stayed for a post-mortem; this
	// run starts without them (the e2e reads the consoles).
	for _, d := range []string{filepath.Join(l.dir, "machines"), filepath.Join(l.dir, "logs")} {
		if err := os.RemoveAll(d); err != nil {
			return tm, err
		}
	}
	for _, d := range []string{l.dir, filepath.Join(l.dir, "logs"), filepath.Join(l.dir, "machines")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return tm, err
		}
	}
	// The embedded PostgreSQL runs as user postgres: it must get through
	// every directory above its data. The lab's own are made so; the
	// host's are only checked (a state dir under /root cannot work).
	for _, d := range []string{l.dir, l.cfg.StateDir} {
		if err := os.Chmod(d, 0o711); err != nil {
			return tm, err
		}
	}
	for d := filepath.Dir(l.cfg.StateDir); d != "/" && d != "."; d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm()&0o001 == 0 {
			return tm, fmt.Errorf("--state-dir %s: %s is not searchable by others, so the embedded PostgreSQL (user postgres) cannot reach its data; choose a state directory elsewhere", l.cfg.StateDir, d)
		}
	}
	l.state = &State{Topology: l.cfg.TopologyFile, Name: l.top.Name, Created: time.Now().UTC()}
	if err := l.state.save(l.statePath()); err != nil {
		return tm, err
	}

	start := time.Now()
	l.progress("network: namespaces, veth pairs and bridges of %s", l.cfg.TopologyFile)
	if err := buildNetwork(l.top); err != nil {
		return tm, err
	}
	tm.Network = time.Since(start)

	start = time.Now()
	if err := l.startCentral(ctx); err != nil {
		return tm, err
	}
	tm.Central = time.Since(start)

	start = time.Now()
	secret, err := l.setupPartition(ctx)
	if err != nil {
		return tm, err
	}
	tm.Setup = time.Since(start)

	if l.top.Fabric() {
		start = time.Now()
		if err := l.startRouters(ctx); err != nil {
			return tm, err
		}
	}

	start = time.Now()
	if err := l.startPixie(ctx, secret); err != nil {
		return tm, err
	}
	tm.Pixie = time.Since(start)

	if l.top.Fabric() {
		if err := l.provisionLeaves(ctx); err != nil {
			return tm, err
		}
		if err := l.waitPXEStretched(ctx); err != nil {
			return tm, err
		}
		tm.Routers = time.Since(start)
	}

	start = time.Now()
	if err := l.startBMCs(ctx); err != nil {
		return tm, err
	}
	tm.BMCs = time.Since(start)

	start = time.Now()
	if tm.KnownFromBMC, err = l.startMetalBMC(ctx); err != nil {
		return tm, err
	}
	tm.MetalBMC = time.Since(start)

	if tm.PoweredOn, err = l.powerOn(ctx); err != nil {
		return tm, err
	}
	l.state.Up = true
	if err := l.state.save(l.statePath()); err != nil {
		return tm, err
	}
	return tm, l.writeEnv()
}

func (l *Lab) startCentral(ctx context.Context) error {
	t := l.top
	c := t.Node(t.Central())
	hosts := []string{c.MgmtIPv4}
	advertise := []string{net.JoinHostPort(c.MgmtIPv4, "8443")}
	if c.MgmtIPv6 != "" {
		hosts = append(hosts, c.MgmtIPv6)
		advertise = append(advertise, net.JoinHostPort(c.MgmtIPv6, "8443"))
	}
	l.progress("central: metal-central with embedded PostgreSQL on %s", strings.Join(advertise, ", "))
	p, err := l.spawn("central", t.Namespace(t.Central()), []string{l.bin("metal-central"),
		"--data-dir", l.centralDir(), "--listen", ":8443", "--metrics-listen", ":9090",
		// A lab is thrown away: no fsync, much faster on slow disks.
		"--durable=false", "--tls-hosts", strings.Join(hosts, ","), "--advertise", strings.Join(advertise, ",")})
	if err != nil {
		return err
	}
	return waitFor(ctx, 2*time.Minute, "metal-central serving (log: "+p.Log+")", func() (bool, error) {
		if !p.Alive() {
			return false, fmt.Errorf("metal-central exited: %s", tail(p.Log, 2000))
		}
		b, err := os.ReadFile(p.Log)
		return err == nil && strings.Contains(string(b), "is serving the API"), nil
	})
}

// setupPartition creates the topology's partition, sizes, images,
// networks, tenant and project in central, as an operator would with
// metalctl, and enrols pixie. It returns pixie's enrolment secret.
func (l *Lab) setupPartition(ctx context.Context) (string, error) {
	t, p := l.top, l.top.Partition
	l.progress("setup: partition %s, %d size(s), %d image(s), %d network(s), project %s", p.ID, len(p.Sizes), len(p.Images), len(p.Networks), p.Project)
	central := t.Node(t.Central())
	imageBase := "http://" + net.JoinHostPort(central.MgmtIPv4, "8080") + "/"
	serve := []string{l.bin("metal-lab"), "serve", "--listen", net.JoinHostPort(central.MgmtIPv4, "8080")}
	for _, img := range p.Images {
		serve = append(serve, "--file", "/"+img.File+"="+filepath.Join(l.cfg.Root, img.File))
	}
	if _, err := l.spawn("images", t.Namespace(t.Central()), serve); err != nil {
		return "", err
	}
	cmdline := p.BootCmdline
	if cmdline == "" {
		cmdline = "console=ttyS0 panic=1"
	}
	desc := p.Description
	if desc == "" {
		desc = "metal-lab " + t.Name
	}
	cmds := [][]string{{"partition", "create", "--id", p.ID, "--description", desc, "--boot-cmdline", cmdline}}
	if !t.Fabric() {
		// Without a fabric the machines have no switches to be dual
		// attached to.
		cmds[0] = append(cmds[0], "--allow-single-attach")
	}
	for _, s := range p.Sizes {
		cmds = append(cmds, []string{"size", "create", "--id", s.ID, "--cores", s.Cores, "--memory", s.Memory, "--storage", s.Storage})
	}
	for _, img := range p.Images {
		sum, err := os.ReadFile(filepath.Join(l.cfg.Root, img.File+".sha256"))
		if err != nil || len(strings.Fields(string(sum))) == 0 {
			return "", fmt.Errorf("image %s: checksum file: %v", img.ID, err)
		}
		cmds = append(cmds, []string{"image", "create", "--id", img.ID, "--os", img.OS, "--version", img.Version,
			"--url", imageBase + img.File, "--sha256", strings.Fields(string(sum))[0]})
	}
	for _, n := range p.Networks {
		args := []string{"network", "create", "--id", n.ID, "--type", n.Type}
		for _, pr := range n.Prefixes {
			args = append(args, "--prefix", pr)
		}
		if n.Type == "super" {
			// Tenants' networks are allocated from it in the partition.
			args = append(args, "--partition", p.ID)
		}
		for _, l := range n.ChildPrefixLength {
			args = append(args, "--child-prefix-length", l)
		}
		cmds = append(cmds, args)
	}
	cmds = append(cmds, []string{"tenant", "create", "--id", p.Tenant})
	for _, c := range cmds {
		if _, err := l.metalctl(ctx, c...); err != nil {
			return "", err
		}
	}
	project, err := l.metalctl(ctx, "project", "create", "--tenant", p.Tenant, "--name", p.Project)
	if err != nil {
		return "", err
	}
	l.state.Project = project
	// Pixie holds the gateways of the partition's networks; IPAM must not
	// give their addresses to machines (the installed OS routes via the
	// network's first address).
	for _, gw := range t.Node(t.Pixie()).Gateways {
		a := netip.MustParsePrefix(gw)
		for _, n := range p.Networks {
			for _, pr := range n.Prefixes {
				if netip.MustParsePrefix(pr).Contains(a.Addr()) {
					if _, err := l.metalctl(ctx, "ip", "allocate", "--project", project, "--network", n.ID, "--ip", a.Addr().String(),
						"--static", "--name", "gateway", "--description", "the lab's gateway (pixie)"); err != nil {
						return "", err
					}
				}
			}
		}
	}
	if err := l.state.save(l.statePath()); err != nil {
		return "", err
	}
	return l.metalctl(ctx, "agent", "enroll", "--kind", "pixie", "--identity", l.pixieName(), "--partition", p.ID,
		"-o", "template", "--template", "{{.secret}}")
}

func (l *Lab) pixieName() string { return "pixie-" + l.top.Name }

func (l *Lab) startPixie(ctx context.Context, secret string) error {
	t := l.top
	n := t.Node(t.Pixie())
	tokenFile := filepath.Join(l.dir, "pixie.token")
	if err := os.WriteFile(tokenFile, []byte(secret), 0o600); err != nil {
		return err
	}
	router := netip.MustParsePrefix(n.PXEIPv4).Addr().String()
	args := []string{l.bin("metal-pixie"), "--name", l.pixieName(), "--central", l.centralAddr(),
		"--ca", filepath.Join(l.centralDir(), "ca.crt"), "--token-file", tokenFile,
		"--state-dir", filepath.Join(l.dir, "pixie"),
		"--dhcp4-range", n.DHCP4Range,
		"--http-listen", ":80", "--tftp-listen", ":69",
		"--kernel", filepath.Join(l.cfg.Root, "build/installer/vmlinuz"),
		"--initramfs", filepath.Join(l.cfg.Root, "build/installer/initramfs.cpio.gz")}
	if t.Fabric() {
		// Behind the leaves' DHCP relays: pixie listens on its management
		// port; the leaves hold the PXE network's gateway and send its
		// router advertisements.
		router = strings.Join(l.pxeRouters(false), ",")
		args = append(args, "--relayed-only", "--interface", mgmtIface, "--server-ip", n.MgmtIPv4,
			"--subnet", netip.MustParsePrefix(n.PXEIPv4).Masked().String())
		if n.MgmtIPv6 != "" && n.PXEIPv6 != "" && n.DHCP6Range != "" {
			args = append(args, "--server-ip6", n.MgmtIPv6, "--subnet6", netip.MustParsePrefix(n.PXEIPv6).Masked().String())
		}
	} else {
		args = append(args, "--interface", pxeBridge, "--ra")
	}
	args = append(args, "--router", router)
	if n.DHCP6Range != "" {
		args = append(args, "--dhcp6-range", n.DHCP6Range)
	}
	if n.BMCDHCP4Range != "" {
		// The BMC network is mgmt here: pixie serves it on its port
		// there, as the management server's one DHCP server serves both
		// networks (docs/pixie.md, "The BMC network").
		args = append(args, "--bmc-interface", mgmtIface, "--bmc-dhcp4-range", n.BMCDHCP4Range, "--bmc-lease-time", bmcLeaseTime)
		l.progress("pixie: serving the BMC network (mgmt) by DHCP from %s, leases of %s", n.BMCDHCP4Range, bmcLeaseTime)
	}
	l.progress("pixie: metal-pixie on %s (DHCP %s), routing the PXE network to mgmt", n.PXEIPv4, n.DHCP4Range)
	p, err := l.spawn("pixie", t.Namespace(t.Pixie()), args)
	if err != nil {
		return err
	}
	health := "http://" + net.JoinHostPort(n.MgmtIPv4, "80") + "/healthz"
	return waitFor(ctx, time.Minute, "metal-pixie connected to central (log: "+p.Log+")", func() (bool, error) {
		if !p.Alive() {
			return false, fmt.Errorf("metal-pixie exited: %s", tail(p.Log, 2000))
		}
		var h struct {
			CentralConnected bool   `json:"central_connected"`
			DocumentRevision uint64 `json:"document_revision"`
		}
		if err := getJSON(ctx, health, &h); err != nil {
			return false, err
		}
		return h.CentralConnected && h.DocumentRevision > 0, nil
	})
}

func getJSON(ctx context.Context, url string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// startBMCs starts one `metal-lab bmc` per machine in the machine's
// namespace; each owns its QEMU and answers Redfish on mgmt, and SSH with
// the machine's serial console, as real BMCs do.
func (l *Lab) startBMCs(ctx context.Context) error {
	t := l.top
	if err := l.writeBMCPassword(); err != nil {
		return err
	}
	procs := map[string]Proc{}
	for _, name := range t.Nodes(topo.KindMachine) {
		n := t.Node(name)
		dir := l.machineDir(name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return err
		}
		disk, _ := topo.ParseBytes(n.DiskSize)
		args := []string{l.bin("metal-lab"), "bmc", "--name", name, "--uuid", n.UUID,
			"--memory", strconv.Itoa(n.Memory), "--cpus", strconv.Itoa(n.CPUs), "--firmware", n.Firmware,
			"--disk", filepath.Join(dir, "disk.raw"), "--disk-size", strconv.FormatInt(disk, 10), "--dir", dir,
			"--user", n.BMCUser, "--password-file", l.bmcPasswordFile()}
		var kind, where string
		switch {
		case n.BMC == topo.BMCIPMI:
			// ipmi_sim on IPMI's port; its console is serial-over-LAN.
			kind, where = "an IPMI BMC (ipmi_sim)", "on "+net.JoinHostPort(n.BMCIPv4, "623")+" (serial-over-LAN)"
			args = append(args, "--protocol", "ipmi", "--listen", net.JoinHostPort(n.BMCIPv4, "623"))
		default:
			// A BMC without a fixed address listens on the ports of the
			// address it leases.
			host := n.BMCIPv4
			kind, where = "a Redfish BMC", "on https://"+host+" (serial console: ssh "+host+")"
			if t.LeasedBMC(name) {
				host, where = "", "whose address comes by DHCP from pixie"
			}
			args = append(args, "--listen", net.JoinHostPort(host, "443"), "--ssh-listen", net.JoinHostPort(host, "22"),
				"--tls-cert", filepath.Join(dir, "bmc.crt"), "--tls-key", filepath.Join(dir, "bmc.key"),
				"--metrics-listen", net.JoinHostPort(host, "9100"))
			if t.LeasedBMC(name) {
				args = append(args, "--dhcp", bmcIface, "--lease-file", l.bmcLeaseFile(name))
			}
		}
		for i, iface := range t.Ifaces(name) {
			nic := "tap=" + tapOf(iface) + ",mac=" + t.MAC(name, iface)
			if i == 0 {
				nic += ",boot"
			}
			args = append(args, "--nic", nic)
		}
		l.progress("machine %s: QEMU (%s, %d MiB, %s disk) behind %s %s", name, n.Firmware, n.Memory, n.DiskSize, kind, where)
		p, err := l.spawn("bmc-"+name, t.Namespace(name), args)
		if err != nil {
			return err
		}
		procs[name] = p
	}
	for _, name := range t.Nodes(topo.KindMachine) {
		what := "BMC of " + name + " on " + t.Node(name).BMCIPv4
		if t.LeasedBMC(name) {
			what = "BMC of " + name + " with an address by DHCP (" + l.bmcLeaseFile(name) + ", pixie's log " + filepath.Join(l.dir, "logs", "pixie.log") + ")"
		}
		if t.Node(name).BMC == topo.BMCIPMI {
			// UDP: the BMC says when ipmi_sim answers IPMI over LAN.
			if err := waitFor(ctx, time.Minute, "IPMI BMC of "+name+" answering (log: "+procs[name].Log+")", func() (bool, error) {
				if !procs[name].Alive() {
					return false, permanent{fmt.Errorf("the BMC exited: %s", tail(procs[name].Log, 2000))}
				}
				_, err := os.Stat(filepath.Join(l.machineDir(name), "bmc-ready"))
				return err == nil, nil
			}); err != nil {
				return err
			}
			continue
		}
		if err := waitFor(ctx, time.Minute, what, func() (bool, error) {
			if !procs[name].Alive() {
				return false, permanent{fmt.Errorf("the BMC exited: %s", tail(procs[name].Log, 2000))}
			}
			host, err := l.bmcHost(name)
			if err != nil {
				return false, err
			}
			c, err := net.DialTimeout("tcp", net.JoinHostPort(host, "443"), time.Second)
			if err != nil {
				return false, err
			}
			c.Close()
			_, err = os.Stat(filepath.Join(l.machineDir(name), "bmc.crt"))
			return err == nil, err
		}); err != nil {
			return err
		}
	}
	return nil
}

// writeEnv writes <state>/env for `source`: metalctl's settings for the
// lab (mode 0600: it holds the admin token).
func (l *Lab) writeEnv() error {
	env, err := l.Env()
	if err != nil {
		return err
	}
	var b strings.Builder
	b.WriteString("# metalctl against the lab's central: source this file\n")
	for _, e := range env {
		k, v, _ := strings.Cut(e, "=")
		fmt.Fprintf(&b, "export %s=%q\n", k, v)
	}
	return os.WriteFile(filepath.Join(l.dir, "env"), []byte(b.String()), 0o600)
}

// EnvFile is where writeEnv puts it.
func (l *Lab) EnvFile() string { return filepath.Join(l.dir, "env") }

// Instructions tells a person what to do with a lab that is up.
func (l *Lab) Instructions() string {
	t, p := l.top, l.top.Partition
	var b strings.Builder
	fmt.Fprintf(&b, "\nThe lab %q is up: partition %s, machines %s are PXE-booting (about 30 s under TCG).\n\n",
		t.Name, p.ID, strings.Join(t.Nodes(topo.KindMachine), ", "))
	fmt.Fprintf(&b, "  source %s        # metalctl's URL, CA and admin token\n", l.EnvFile())
	bin := l.bin("metalctl")
	fmt.Fprintf(&b, "  %s machine list                     # the machines reach Waiting\n", bin)
	network := p.Networks[0].ID
	if t.Fabric() {
		// A fabric's machines go into a tenant network: a child of the
		// partition's super network, its own VRF on the leaves.
		fmt.Fprintf(&b, "  %s machine issues                   # a machine on one leaf only is not allocatable\n", bin)
		fmt.Fprintf(&b, "  N=$(%s network allocate --project %s --partition %s --name n1 -o template --template '{{.id}}')\n",
			bin, l.state.Project, p.ID)
		network = "$N"
	}
	fmt.Fprintf(&b, "  %s machine create --project %s --partition %s --size %s --image %s --networks %s --hostname web-1 --wait\n",
		bin, l.state.Project, p.ID, p.Sizes[0].ID, p.Images[0].ID, network)
	if t.Fabric() {
		fmt.Fprintf(&b, "  %s switch list                      # the leaves: sync status; switch describe <id>: ports, BGP\n", bin)
	}
	fmt.Fprintf(&b, "  %s machine logs -f <machine id>      # its event log, live\n", bin)
	fmt.Fprintf(&b, "  %s machine console <machine id>     # its serial console through metal-bmc (~. ends it)\n", bin)
	fmt.Fprintf(&b, "  %s machine power reset <machine id> # through metal-bmc and its BMC (on, off, reset, cycle)\n", bin)
	fmt.Fprintf(&b, "  %s machine delete <machine id>       # frees it: wiped, back to Waiting\n\n", bin)
	// The lab's own flags, so the commands reach this lab also when it
	// was started with another topology or state directory.
	lab := func(sub string) string {
		return fmt.Sprintf("%s %s --topology %s --state-dir %s", l.bin("metal-lab"), sub, l.cfg.TopologyFile, l.cfg.StateDir)
	}
	fmt.Fprintf(&b, "  %s   # what runs where\n", lab("status"))
	fmt.Fprintf(&b, "  tail -f %s   # a machine's serial console\n", filepath.Join(l.machineDir(t.Nodes(topo.KindMachine)[0]), "serial.log"))
	fmt.Fprintf(&b, "  %s   # removes everything (make lab-down for the default lab)\n", lab("down"))
	return b.String()
}

// tail returns the last n bytes of a file, for error messages.
func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return ""
	}
	if fi.Size() > int64(n) {
		_, _ = f.Seek(fi.Size()-int64(n), 0)
	}
	var b strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		b.WriteString(sc.Text())
		b.WriteByte('\n')
	}
	return b.String()
}
