package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/metalfleet/metalfleet/lab/internal/topo"
)

// A fabric's router guests (leaves, spines, exits) are QEMU guests booted
// from build/router-image: Redis with CONFIG_DB, the SONiC emulation, FRR,
// and on the leaves metal-core. Each gets a small ext4 disk (the "lab
// disk", /lab in the guest) the lab fills before boot: host name, NIC
// renames, the operator's base CONFIG_DB rows, a base frr.conf, metal-core's
// flags and credential, and rc.local for the management port.

const (
	pxeVLAN    = 4000   // the PXE VLAN, as metal-stack's leaves have it
	pxeVNI     = 104000 // the PXE VLAN stretched over both leaves
	routerMgmt = "mgmt0"
	// The spine's and exit's ASNs lie outside the range central hands the
	// leaves (fabric.asn_base + ordinal).
	spineASNBase = 4200000100
	exitASNBase  = 4200000200
	routerMAC    = "52:54:00:fa:"
	// routerShellPort is the guests' command channel on the management
	// network (leaves only: spines and exits have no management address).
	routerShellPort = 2323
)

// routerNICs are a router guest's NICs in order: eth0 the management port,
// then its links' ports by swp number (eth1 = the lowest).
func (l *Lab) routerNICs(name string) []string {
	ifs := l.top.Ifaces(name)
	slices.SortFunc(ifs, func(a, b string) int {
		pa, _ := topo.SONiCPort(a)
		pb, _ := topo.SONiCPort(b)
		na, _ := strconv.Atoi(strings.TrimPrefix(pa, "Ethernet"))
		nb, _ := strconv.Atoi(strings.TrimPrefix(pb, "Ethernet"))
		return na - nb
	})
	return append([]string{routerMgmt}, ifs...)
}

// routerDir holds a router guest's disk image, console and its disk's
// source files.
func (l *Lab) routerDir(name string) string { return filepath.Join(l.dir, "routers", name) }

// mgmtCIDRs are a leaf's management addresses with the subnet's length.
func (l *Lab) mgmtCIDRs(n topo.Node) []string {
	t := l.top
	out := []string{n.MgmtIPv4 + "/" + strconv.Itoa(netip.MustParsePrefix(t.Mgmt.IPv4Subnet).Bits())}
	if n.MgmtIPv6 != "" && t.Mgmt.IPv6Subnet != "" {
		out = append(out, n.MgmtIPv6+"/"+strconv.Itoa(netip.MustParsePrefix(t.Mgmt.IPv6Subnet).Bits()))
	}
	return out
}

// routerDisk writes the files of a router guest's lab disk into dir.
// secret is a leaf's agent credential ("" for spines and exits).
func (l *Lab) routerDisk(dir, name, secret string) error {
	t := l.top
	n := t.Node(name)
	nics := l.routerNICs(name)
	var rename []string
	for i, iface := range nics[1:] {
		p, _ := topo.SONiCPort(iface)
		rename = append(rename, fmt.Sprintf("eth%d=%s", i+1, p))
	}
	files := map[string]string{
		"hostname": name + "\n",
		"rename":   strings.Join(rename, ",") + "\n",
	}
	var rc strings.Builder
	rc.WriteString("#!/bin/sh\n# Written by metal-lab: the management port.\n/sbin/ip link set eth0 up\n")
	var rows []string
	rows = append(rows, fmt.Sprintf(`HSET "DEVICE_METADATA|localhost" hostname %s hwsku metal-lab-router platform x86_64-metal_lab-r0 docker_routing_config_mode split type %s`, name, map[string]string{topo.KindLeaf: "LeafRouter", topo.KindSpine: "SpineRouter", topo.KindExit: "BorderRouter"}[n.Kind]))
	for i, iface := range nics[1:] {
		p, _ := topo.SONiCPort(iface)
		rows = append(rows, fmt.Sprintf(`HSET "PORT|%s" alias Eth%d/1 index %d lanes %d,%d,%d,%d speed 100000 mtu 9100 admin_status down`, p, i+1, i, 4*i, 4*i+1, 4*i+2, 4*i+3))
	}
	switch n.Kind {
	case topo.KindLeaf:
		for _, a := range l.mgmtCIDRs(n) {
			fmt.Fprintf(&rc, "/sbin/ip addr add %s dev eth0\n", a)
		}
		// The lab's command channel into the guest (RouterExec; the e2e
		// reads FRR's and Linux's state through it): a shell per TCP
		// connection on the management port. Lab only: unauthenticated root.
		fmt.Fprintf(&rc, "nc -ll -p %d -e /bin/sh >/dev/null 2>&1 &\n", routerShellPort)
		// The emulation's Redis answers on the management port too: the
		// lab writes the rows that depend on the leaf's loopback (known
		// once central numbered the switch) as an operator's provisioning
		// would.
		fmt.Fprintf(&rc, "(i=0; until redis-cli -s /run/redis/redis.sock config set bind \"127.0.0.1 %s\" >/dev/null 2>&1; do i=$((i+1)); [ $i -gt 200 ] && exit 1; sleep 0.1; done; redis-cli -s /run/redis/redis.sock config set protected-mode no >/dev/null) &\n", n.MgmtIPv4)
		pixie := t.Node(t.Pixie())
		relay := fmt.Sprintf(`HSET "VLAN|Vlan%d" vlanid %d dhcp_servers@ %s`, pxeVLAN, pxeVLAN, pixie.MgmtIPv4)
		if pixie.MgmtIPv6 != "" && pixie.PXEIPv6 != "" {
			relay += " dhcpv6_servers@ " + pixie.MgmtIPv6
		}
		rows = append(rows, relay, fmt.Sprintf(`HSET "VLAN_INTERFACE|Vlan%d" NULL NULL`, pxeVLAN))
		for _, a := range l.pxeSVI(name) {
			rows = append(rows, fmt.Sprintf(`HSET "VLAN_INTERFACE|Vlan%d|%s" NULL NULL`, pxeVLAN, a))
		}
		rows = append(rows, `HSET "VXLAN_EVPN_NVO|nvo" source_vtep vtep`)
		// The switch's provisioning puts every machine port into the PXE
		// VLAN: a server about to PXE-boot for the first time sends no
		// LLDP, so central does not know it yet and metal-core leaves the
		// ports its document does not name as they are.
		for _, iface := range nics[1:] {
			if p, ok := t.Peer(name, iface); ok && t.Node(p.Node).Kind == topo.KindMachine {
				s, _ := topo.SONiCPort(iface)
				rows = append(rows, fmt.Sprintf(`HSET "PORT|%s" mtu 9000 admin_status up`, s),
					fmt.Sprintf(`HSET "VLAN_MEMBER|Vlan%d|%s" tagging_mode untagged`, pxeVLAN, s))
			}
		}
		files["frr.conf"] = fmt.Sprintf("frr defaults datacenter\nhostname %s\n!\nline vty\n!\n", name)
		// metal-core renders frr.conf from its built-in template plus the
		// PXE VLAN's router advertisements (managed: addresses from
		// pixie's DHCPv6; A=0), as an operator's --frr-template would.
		tmpl, err := os.ReadFile(filepath.Join(l.cfg.Root, "agents/metalcore/internal/frr/frr.conf.tmpl"))
		if err != nil {
			return fmt.Errorf("metal-core's frr.conf template: %w", err)
		}
		ra := fmt.Sprintf("\ninterface Vlan%d\n ipv6 nd ra-interval 6\n no ipv6 nd suppress-ra\n ipv6 nd managed-config-flag\n ipv6 nd other-config-flag\n", pxeVLAN)
		if pixie.PXEIPv6 != "" {
			ra += fmt.Sprintf(" ipv6 nd prefix %s no-autoconfig\n", netip.MustParsePrefix(pixie.PXEIPv6).Masked())
		}
		// Before `line vty`, closed with `exit`: after it, frr-reload.py
		// would read the stanza as part of the vty context, never find
		// it in the running configuration and reload again each resync.
		if !strings.Contains(string(tmpl), "\nline vty\n") {
			return errors.New("metal-core's frr.conf template has no `line vty` to put the PXE VLAN's stanza before")
		}
		files["frr.tmpl"] = strings.Replace(string(tmpl), "\nline vty\n", ra+"exit\n!\nline vty\n", 1)
		ca, err := os.ReadFile(filepath.Join(l.centralDir(), "ca.crt"))
		if err != nil {
			return err
		}
		files["ca.pem"] = string(ca)
		files["token"] = secret
		var uplinks []string
		for _, iface := range nics[1:] {
			if p, ok := t.Peer(name, iface); ok && t.Node(p.Node).Kind == topo.KindSpine {
				s, _ := topo.SONiCPort(iface)
				uplinks = append(uplinks, s)
			}
		}
		flags := []string{"--name", name, "--central", l.centralAddr(), "--ca", "/lab/ca.pem", "--token-file", "/lab/token",
			"--naming-schema", "name", "--uplinks", strings.Join(uplinks, ","), "--frr-template", "/lab/frr.tmpl",
			"--metrics-listen", net.JoinHostPort(n.MgmtIPv4, "2112")}
		if n.Rack != "" {
			flags = append(flags, "--rack", n.Rack)
		}
		files["metal-core.flags"] = strings.Join(flags, " ") + "\n"
	case topo.KindSpine, topo.KindExit:
		frr, err := l.staticFRR(name)
		if err != nil {
			return err
		}
		files["frr.conf"] = frr
		for _, iface := range nics[1:] {
			p, _ := topo.SONiCPort(iface)
			rows = append(rows, fmt.Sprintf(`HSET "PORT|%s" mtu 9216 admin_status up`, p),
				fmt.Sprintf(`HSET "INTERFACE|%s" ipv6_use_link_local_only enable`, p))
		}
		for _, e := range n.External {
			rows = append(rows, `HSET "LOOPBACK_INTERFACE|Loopback1" NULL NULL`,
				fmt.Sprintf(`HSET "LOOPBACK_INTERFACE|Loopback1|%s" NULL NULL`, e))
		}
	}
	files["configdb.txt"] = strings.Join(rows, "\n") + "\n"
	files["rc.local"] = rc.String()
	for f, content := range files {
		mode := os.FileMode(0o644)
		if f == "rc.local" {
			mode = 0o755
		}
		if f == "token" {
			mode = 0o600
		}
		if err := os.WriteFile(filepath.Join(dir, f), []byte(content), mode); err != nil {
			return err
		}
	}
	return nil
}

// staticFRR is a spine's or exit's frr.conf: BGP unnumbered with every
// neighbour on its ports (peer group FABRIC), IPv4/IPv6 unicast and EVPN;
// a spine passes EVPN routes on with the VTEPs as next hops, an exit
// announces its external network.
func (l *Lab) staticFRR(name string) (string, error) {
	t := l.top
	n := t.Node(name)
	idx := slices.Index(t.Nodes(n.Kind), name) + 1
	asn, rid := spineASNBase+idx, fmt.Sprintf("10.254.0.%d", idx)
	if n.Kind == topo.KindExit {
		asn, rid = exitASNBase+idx, fmt.Sprintf("10.254.1.%d", idx)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "frr defaults datacenter\nhostname %s\nlog syslog informational\n!\n", name)
	var ports []string
	for _, iface := range l.routerNICs(name)[1:] {
		p, _ := topo.SONiCPort(iface)
		ports = append(ports, p)
		fmt.Fprintf(&b, "interface %s\n ipv6 nd ra-interval 6\n no ipv6 nd suppress-ra\n!\n", p)
	}
	fmt.Fprintf(&b, "router bgp %d\n bgp router-id %s\n bgp bestpath as-path multipath-relax\n neighbor FABRIC peer-group\n neighbor FABRIC remote-as external\n neighbor FABRIC timers 2 8\n", asn, rid)
	for _, p := range ports {
		fmt.Fprintf(&b, " neighbor %s interface peer-group FABRIC\n", p)
	}
	b.WriteString(" !\n address-family ipv4 unicast\n")
	if n.Kind == topo.KindExit {
		b.WriteString("  redistribute connected\n")
	}
	b.WriteString("  neighbor FABRIC activate\n exit-address-family\n !\n address-family ipv6 unicast\n  neighbor FABRIC activate\n exit-address-family\n")
	b.WriteString(" !\n address-family l2vpn evpn\n  neighbor FABRIC activate\n")
	if n.Kind == topo.KindSpine {
		b.WriteString("  neighbor FABRIC attribute-unchanged next-hop\n")
	}
	b.WriteString(" exit-address-family\n!\nline vty\n!\n")
	return b.String(), nil
}

// makeDisk builds a router guest's lab disk from the files in src.
func makeDisk(ctx context.Context, src, img string) error {
	_ = os.Remove(img)
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-L", "lab", "-d", src, img, "64M").CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.ext4 %s: %w: %s", img, err, out)
	}
	return nil
}

// enrollSwitch enrolls a leaf's metal-core (kind switch) and returns its
// credential.
func (l *Lab) enrollSwitch(ctx context.Context, name string) (string, error) {
	return l.metalctl(ctx, "agent", "enroll", "--kind", "switch", "--identity", name, "--partition", l.top.Partition.ID,
		"-o", "template", "--template", "{{.secret}}")
}

// startRouters writes each router guest's disk and boots it.
func (l *Lab) startRouters(ctx context.Context) error {
	t := l.top
	for _, name := range t.Routers() {
		dir := l.routerDir(name)
		src := filepath.Join(dir, "disk")
		if err := os.MkdirAll(src, 0o700); err != nil {
			return err
		}
		var secret string
		if t.Node(name).Kind == topo.KindLeaf {
			s, err := l.enrollSwitch(ctx, name)
			if err != nil {
				return err
			}
			secret = s
		}
		if err := l.routerDisk(src, name, secret); err != nil {
			return fmt.Errorf("router %s: %w", name, err)
		}
		if err := makeDisk(ctx, src, filepath.Join(dir, "lab.img")); err != nil {
			return err
		}
		if err := l.bootRouter(name); err != nil {
			return err
		}
	}
	return nil
}

// bootRouter starts a router guest's QEMU in its namespace.
func (l *Lab) bootRouter(name string) error {
	t := l.top
	n := t.Node(name)
	dir := l.routerDir(name)
	img := filepath.Join(l.cfg.Root, "build/router-image")
	console := filepath.Join(dir, "console.log")
	args := []string{"qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-m", strconv.Itoa(n.Memory), "-smp", "1",
		"-display", "none", "-monitor", "none", "-nodefaults", "-no-user-config",
		"-kernel", filepath.Join(img, "vmlinuz"), "-initrd", filepath.Join(img, "router.cpio.gz"),
		"-append", "console=ttyS0 panic=-1 quiet metal.hostname=" + name,
		"-serial", "file:" + console,
		"-drive", "file=" + filepath.Join(dir, "lab.img") + ",if=virtio,format=raw",
		"-device", "virtio-rng-pci"}
	for i, iface := range l.routerNICs(name) {
		id := "n" + strconv.Itoa(i)
		args = append(args, "-netdev", "tap,id="+id+",ifname="+tapOf(iface)+",script=no,downscript=no",
			"-device", "virtio-net-pci,netdev="+id+",mac="+routerMACOf(t, name, i))
	}
	l.progress("router %s (%s): QEMU, %d MiB, ports %s", name, n.Kind, n.Memory, strings.Join(l.routerNICs(name)[1:], " "))
	_, err := l.spawn("router-"+name, t.Namespace(name), args)
	return err
}

// routerMACOf is a stable MAC for a router guest's NIC i.
func routerMACOf(t *topo.Topology, name string, i int) string {
	idx := slices.Index(t.Routers(), name)
	return fmt.Sprintf("%s%02x:%02x", routerMAC, idx, i)
}

// waitRoutersUp waits until each router guest printed that it is up.
func (l *Lab) waitRoutersUp(ctx context.Context, d time.Duration) error {
	for _, name := range l.top.Routers() {
		console := filepath.Join(l.routerDir(name), "console.log")
		if err := waitFor(ctx, d, "router "+name+" up (console: "+console+")", func() (bool, error) {
			b, _ := os.ReadFile(console)
			return strings.Contains(string(b), "metal-router: "+name+" up"), nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// provisionLeaves waits for the router guests to boot and each leaf's
// metal-core to register with central, then writes the leaf's rows that
// depend on what central gave it — the loopback (Loopback0, the VTEP's
// source) and the PXE VLAN's VNI map — into its CONFIG_DB over the
// management network, as an operator's provisioning would.
func (l *Lab) provisionLeaves(ctx context.Context) error {
	t := l.top
	if err := l.waitRoutersUp(ctx, 4*time.Minute); err != nil {
		return err
	}
	for _, name := range t.Nodes(topo.KindLeaf) {
		if err := l.provisionLeaf(ctx, name); err != nil {
			return err
		}
	}
	return nil
}

// provisionLeaf writes a registered leaf's loopback rows into its CONFIG_DB
// and waits for its PXE VLAN's DHCP relay. Its Redis lives in the guest's
// RAM, so a restarted leaf is provisioned again.
func (l *Lab) provisionLeaf(ctx context.Context, name string) error {
	t := l.top
	var lo string
	if err := waitFor(ctx, 2*time.Minute, "leaf "+name+" registered with central (guest console: "+filepath.Join(l.routerDir(name), "console.log")+")", func() (bool, error) {
		out, err := l.metalctl(ctx, "switch", "describe", name, "-o", "json")
		if err != nil {
			return false, err
		}
		var sw struct {
			Loopback string `json:"loopback"`
		}
		if err := json.Unmarshal([]byte(out), &sw); err != nil {
			return false, fmt.Errorf("switch describe %s: %w", name, err)
		}
		lo = sw.Loopback
		return lo != "", nil
	}); err != nil {
		return err
	}
	rows := [][]string{
		{"HSET", "LOOPBACK_INTERFACE|Loopback0", "NULL", "NULL"},
		{"HSET", "LOOPBACK_INTERFACE|Loopback0|" + lo + "/32", "NULL", "NULL"},
		{"HSET", "VXLAN_TUNNEL|vtep", "src_ip", lo},
		{"HSET", fmt.Sprintf("VXLAN_TUNNEL_MAP|vtep|map_%d_Vlan%d", pxeVNI, pxeVLAN), "vlan", fmt.Sprintf("Vlan%d", pxeVLAN), "vni", strconv.Itoa(pxeVNI)},
	}
	addr := net.JoinHostPort(t.Node(name).MgmtIPv4, "6379")
	if err := waitFor(ctx, 3*time.Minute, "CONFIG_DB of "+name+" on "+addr, func() (bool, error) {
		return true, writeConfigDB(ctx, addr, rows)
	}); err != nil {
		return err
	}
	l.progress("leaf %s: registered, loopback %s written to its CONFIG_DB", name, lo)
	// Machines powered on before a leaf rendered its PXE VLAN would find
	// no DHCP relay, and their firmware tries PXE once: wait until the
	// leaf's emulation started its relay (after it rendered the VLAN and
	// the ports).
	return waitFor(ctx, 5*time.Minute, "the PXE VLAN's DHCP relay on "+name, func() (bool, error) {
		out, err := l.RouterExec(ctx, name, "ps")
		if err != nil {
			return false, err
		}
		return strings.Contains(out, "dhcrelay -d -4"), nil
	})
}

// writeConfigDB runs the commands against CONFIG_DB (database 4) of the
// Redis at addr.
func writeConfigDB(ctx context.Context, addr string, cmds [][]string) error {
	c := redis.NewClient(&redis.Options{Addr: addr, DB: 4, DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, MaxRetries: -1})
	defer c.Close()
	pipe := c.Pipeline()
	for _, cmd := range cmds {
		args := make([]any, len(cmd))
		for i, a := range cmd {
			args[i] = a
		}
		pipe.Do(ctx, args...)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("CONFIG_DB at %s: %w", addr, err)
	}
	return nil
}

// pxeSVI are a leaf's addresses on the PXE VLAN: the i-th leaf takes the
// i-th host address of the PXE prefixes (pixie's pxe-ipv4/-ipv6 name the
// prefixes and the first leaf's address). Each leaf has its own: the VLAN
// is stretched over both, and one address twice would fail IPv6's
// duplicate address detection.
func (l *Lab) pxeSVI(leaf string) []string {
	t := l.top
	px := t.Node(t.Pixie())
	i := slices.Index(t.Nodes(topo.KindLeaf), leaf)
	var out []string
	for _, a := range []string{px.PXEIPv4, px.PXEIPv6} {
		if a == "" {
			continue
		}
		p := netip.MustParsePrefix(a)
		addr := p.Addr()
		for range i {
			addr = addr.Next()
		}
		out = append(out, netip.PrefixFrom(addr, p.Bits()).String())
	}
	return out
}

// pxeRouters are the leaves' PXE addresses of one family: pixie's routers.
func (l *Lab) pxeRouters(v6 bool) []string {
	var out []string
	for _, leaf := range l.top.Nodes(topo.KindLeaf) {
		for _, a := range l.pxeSVI(leaf) {
			if p := netip.MustParsePrefix(a); p.Addr().Is6() == v6 {
				out = append(out, p.Addr().String())
			}
		}
	}
	return out
}

// RouterExec runs a shell command in a leaf's guest over its command
// channel and returns what it printed (stdout and stderr).
func (l *Lab) RouterExec(ctx context.Context, name, command string) (string, error) {
	n := l.top.Node(name)
	if n.Kind != topo.KindLeaf || n.MgmtIPv4 == "" || !l.top.Fabric() {
		return "", fmt.Errorf("%s is no leaf of a fabric", name)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", net.JoinHostPort(n.MgmtIPv4, strconv.Itoa(routerShellPort)))
	if err != nil {
		return "", fmt.Errorf("%s's command channel: %w", name, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	if _, err := io.WriteString(c, "export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin; ( "+command+" ) 2>&1; exit\n"); err != nil {
		return "", err
	}
	out, err := io.ReadAll(c)
	return string(out), err
}

// restartRouter stops a router guest's QEMU (the lab's own process, by
// PID) and boots it again from its lab disk, as a switch that reboots. A
// leaf's Redis starts empty but for the lab disk's rows: provisionLeaf
// writes the rest again.
func (l *Lab) restartRouter(ctx context.Context, name string) error {
	for _, p := range l.state.Procs {
		if p.Name == "router-"+name && p.Alive() {
			if err := p.stop(5 * time.Second); err != nil {
				return fmt.Errorf("stop router %s: %w", name, err)
			}
		}
	}
	return l.bootRouter(name)
}

// waitPXEStretched waits until every leaf's PXE VNI has each other leaf as
// a remote VTEP. Pixie's route to the PXE network spreads its flows over
// all leaves; a leaf whose EVPN is not up yet blackholes the answers to a
// machine behind another leaf, and a machine powered on then fails its
// PXE boot (iPXE's "Connection timed out") and sits in the firmware's shell.
// An operator boots servers once the fabric is up, too.
func (l *Lab) waitPXEStretched(ctx context.Context) error {
	leaves := l.top.Nodes(topo.KindLeaf)
	for _, leaf := range leaves {
		var last string
		err := waitFor(ctx, 4*time.Minute, fmt.Sprintf("%s's PXE VNI %d reaching the other leaves", leaf, pxeVNI), func() (bool, error) {
			out, err := l.RouterExec(ctx, leaf, fmt.Sprintf("vtysh -c 'show evpn vni %d json'", pxeVNI))
			if err != nil {
				last = err.Error()
				return false, nil
			}
			var v struct {
				RemoteVTEPs []string `json:"numRemoteVteps"`
			}
			if err := json.Unmarshal([]byte(out), &v); err != nil {
				last = fmt.Sprintf("%.200s", out)
				return false, nil
			}
			last = fmt.Sprintf("remote VTEPs %v", v.RemoteVTEPs)
			return len(v.RemoteVTEPs) >= len(leaves)-1, nil
		})
		if err != nil {
			return fmt.Errorf("%w: %s", err, last)
		}
	}
	l.progress("fabric: the PXE VLAN (VNI %d) reaches every leaf over EVPN", pxeVNI)
	return nil
}
