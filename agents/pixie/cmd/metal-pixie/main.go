// Command metal-pixie is a partition's PXE service: DHCPv4/DHCPv6, TFTP
// and HTTP for iPXE, asking central what each machine boots
// (docs/pixie.md).
package main

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/lease"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/pixie"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "metal-pixie:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		cfg                                 pixie.Config
		centrals, tokenFile, caFile         string
		insecure                            bool
		range4, range6, serverIP, serverIP6 string
		subnet, subnet6, routers, dns, dns6 string
		raPrefixes                          string
		imagePrefixes, logLevel, logFormat  string
		kernel, initramfs                   string
		bmcRange, bmcRouters                string
	)
	fs := flag.NewFlagSet("metal-pixie", flag.ExitOnError)
	fs.StringVar(&cfg.Name, "name", "", "agent `identity`, as enrolled with metalctl agent enroll --kind pixie --identity <name> --partition <p> (required)")
	fs.StringVar(&centrals, "central", "", "central's agent endpoints, comma-separated host:port (required)")
	fs.StringVar(&caFile, "ca", "", "central's CA certificate (PEM): pins TLS to central and is served as /ca.pem")
	fs.BoolVar(&insecure, "insecure-plaintext", false, "talk to central without TLS (a central run with --insecure-plaintext)")
	fs.StringVar(&cfg.Token, "token", "", "pixie's agent credential (default: the one kept in <state-dir>/agent/credential)")
	fs.StringVar(&tokenFile, "token-file", "", "file holding pixie's agent credential (keeps it out of the process list)")
	fs.StringVar(&cfg.StateDir, "state-dir", "/var/lib/metal-pixie", "leases, cached boot decisions, the agent's credential and desired document")
	fs.StringVar(&cfg.CacheDir, "cache-dir", "", "installer artifacts and images (default <state-dir>/cache)")

	fs.StringVar(&cfg.Interface, "interface", "", "the PXE network's interface (DHCP and router advertisements are bound to it); with --relayed-only the one the DHCP relays reach pixie on")
	fs.BoolVar(&cfg.RelayedOnly, "relayed-only", false, "the PXE network is routed and its leaves relay DHCP to pixie: answer only relayed DHCP (no broadcasts on --interface, no --ra); needs --server-ip, --subnet, --router (DHCPv4) and --server-ip6, --subnet6 (DHCPv6); HTTP and TFTP listen on the server addresses")
	fs.StringVar(&range4, "dhcp4-range", "", "DHCPv4 pool, first-last (empty: no DHCPv4)")
	fs.StringVar(&serverIP, "server-ip", "", "pixie's IPv4 address as machines reach it: server identifier, next-server, boot URLs (default: the interface's first; with --relayed-only pixie's routed address, required)")
	fs.StringVar(&subnet, "subnet", "", "the IPv4 PXE network, CIDR; relays with a giaddr in it are served (default: the interface's prefix of --server-ip; required with --relayed-only)")
	fs.StringVar(&subnet6, "subnet6", "", "the IPv6 PXE network, CIDR; relays with a link-address in it are served (default: the interface's prefix of --server-ip6; required with --relayed-only)")
	fs.StringVar(&routers, "router", "", "DHCPv4 routers (option 3), comma-separated; with --relayed-only the leaves' addresses on the PXE network (required)")
	fs.StringVar(&dns, "dns", "", "DHCPv4 DNS servers (option 6), comma-separated")
	fs.StringVar(&cfg.Domain, "domain", "", "DHCPv4 domain name (option 15)")
	fs.DurationVar(&cfg.LeaseTime, "lease-time", time.Hour, "DHCP lease time (v4 and v6)")
	fs.StringVar(&range6, "dhcp6-range", "", "DHCPv6 pool, first-last (empty: no DHCPv6)")
	fs.StringVar(&serverIP6, "server-ip6", "", "pixie's IPv6 address on the PXE network (default: the interface's first global one)")
	fs.StringVar(&dns6, "dns6", "", "DHCPv6 DNS servers, comma-separated")
	fs.StringVar(&cfg.BMC.Interface, "bmc-interface", "", "the BMC network's interface: pixie serves it DHCPv4 addresses only, no boot answers (metal-bmc finds the BMCs in pixie's lease file)")
	fs.StringVar(&bmcRange, "bmc-dhcp4-range", "", "the BMC network's DHCPv4 pool, first-last (empty: the BMC network is not served); pixie's address and the prefix are the interface's")
	fs.StringVar(&bmcRouters, "bmc-router", "", "DHCPv4 routers (option 3) for the BMC network, comma-separated")
	fs.DurationVar(&cfg.BMC.LeaseTime, "bmc-lease-time", 0, "DHCP lease time on the BMC network (default --lease-time)")
	fs.BoolVar(&cfg.RA, "ra", false, "send IPv6 router advertisements on --interface (iPXE waits ~16 s for one otherwise)")
	fs.StringVar(&raPrefixes, "ra-prefix", "", "prefixes to advertise on-link, comma-separated CIDR (default: the prefix of --server-ip6)")
	fs.DurationVar(&cfg.RAInterval, "ra-interval", 10*time.Second, "interval of unsolicited router advertisements")

	fs.StringVar(&cfg.TFTPListen, "tftp-listen", ":69", "TFTP address for the iPXE binaries (empty: no TFTP)")
	fs.StringVar(&cfg.IPXEDir, "ipxe-dir", "/usr/lib/ipxe", "directory of the iPXE binaries (Debian package ipxe)")
	fs.StringVar(&cfg.BIOSFile, "bios-bootfile", "undionly.kpxe", "iPXE binary for legacy BIOS PXE (arch 0)")
	fs.StringVar(&cfg.EFIFile, "efi-bootfile", "ipxe.efi", "iPXE binary for UEFI x64 PXE and HTTP boot (arch 7, 9, 16); snponly.efi also works")
	fs.StringVar(&cfg.HTTPListen, "http-listen", ":80", "HTTP address (scripts, installer, images, /metrics, /healthz)")
	fs.StringVar(&cfg.PublicURL, "public-url", "", "pixie's base URL for IPv4 clients (default http://<server-ip>:<port>)")
	fs.StringVar(&cfg.PublicURL6, "public-url6", "", "pixie's base URL for IPv6 clients (default http://[<server-ip6>]:<port>)")
	fs.StringVar(&kernel, "kernel", "", "local installer kernel, served instead of the document's kernel_url")
	fs.StringVar(&initramfs, "initramfs", "", "local installer initramfs, served instead of the document's initramfs_url")
	fs.DurationVar(&cfg.BootTimeout, "boot-timeout", 2*time.Second, "how long a boot script waits for central before answering from the cache")
	fs.StringVar(&imagePrefixes, "image-prefix", "", "URL prefixes the image cache may fetch from, comma-separated (empty: any http/https URL)")
	fs.Int64Var(&cfg.ImageMaxBytes, "image-max-bytes", 16<<30, "largest image the cache stores")
	fs.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&logFormat, "log-format", "text", "text or json")
	_ = fs.Parse(os.Args[1:])

	var err error
	if cfg.Log, cfg.LogLevel, err = agent.NewLogger(os.Stderr, logLevel, logFormat); err != nil {
		return err
	}

	if cfg.Name == "" || centrals == "" {
		return fmt.Errorf("--name and --central are required")
	}
	cfg.Centrals = splitList(centrals)
	switch {
	case insecure:
	case caFile == "":
		return fmt.Errorf("--ca is required (or --insecure-plaintext)")
	default:
		tlsCfg, err := agent.PinnedTLS(caFile)
		if err != nil {
			return err
		}
		cfg.TLS = tlsCfg
	}
	cfg.CAFile = caFile
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return fmt.Errorf("--token-file: %w", err)
		}
		cfg.Token = strings.TrimSpace(string(b))
	}
	if range4 != "" {
		if cfg.Range4, err = lease.ParseRange(range4); err != nil || !cfg.Range4.First.Is4() {
			return fmt.Errorf("--dhcp4-range: want an IPv4 range: %v", err)
		}
	}
	if range6 != "" {
		if cfg.Range6, err = lease.ParseRange(range6); err != nil || !cfg.Range6.First.Is6() {
			return fmt.Errorf("--dhcp6-range: want an IPv6 range: %v", err)
		}
	}
	if bmcRange != "" {
		if cfg.BMC.Range, err = lease.ParseRange(bmcRange); err != nil || !cfg.BMC.Range.First.Is4() {
			return fmt.Errorf("--bmc-dhcp4-range: want an IPv4 range: %v", err)
		}
	}
	if cfg.BMC.Routers, err = pixie.ParseAddrs(bmcRouters); err != nil {
		return fmt.Errorf("--bmc-router: %w", err)
	}
	if serverIP != "" {
		if cfg.ServerIP, err = netip.ParseAddr(serverIP); err != nil || !cfg.ServerIP.Is4() {
			return fmt.Errorf("--server-ip: want an IPv4 address: %v", err)
		}
	}
	if serverIP6 != "" {
		if cfg.ServerIP6, err = netip.ParseAddr(serverIP6); err != nil || !cfg.ServerIP6.Is6() {
			return fmt.Errorf("--server-ip6: want an IPv6 address: %v", err)
		}
	}
	if subnet != "" {
		if cfg.Subnet, err = netip.ParsePrefix(subnet); err != nil {
			return fmt.Errorf("--subnet: %w", err)
		}
		if !cfg.Subnet.Addr().Is4() {
			return fmt.Errorf("--subnet: %s is not an IPv4 prefix", subnet)
		}
		cfg.Subnet = cfg.Subnet.Masked()
	}
	if subnet6 != "" {
		if cfg.Subnet6, err = netip.ParsePrefix(subnet6); err != nil {
			return fmt.Errorf("--subnet6: %w", err)
		}
		if !cfg.Subnet6.Addr().Is6() || cfg.Subnet6.Addr().Is4In6() {
			return fmt.Errorf("--subnet6: %s is not an IPv6 prefix", subnet6)
		}
		cfg.Subnet6 = cfg.Subnet6.Masked()
	}
	for flagName, v := range map[string]struct {
		s   string
		dst *[]netip.Addr
	}{"router": {routers, &cfg.Routers}, "dns": {dns, &cfg.DNS}, "dns6": {dns6, &cfg.DNS6}} {
		if *v.dst, err = pixie.ParseAddrs(v.s); err != nil {
			return fmt.Errorf("--%s: %w", flagName, err)
		}
	}
	for _, s := range splitList(raPrefixes) {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return fmt.Errorf("--ra-prefix: %w", err)
		}
		cfg.RAPrefixes = append(cfg.RAPrefixes, p)
	}
	cfg.ImagePrefixes = splitList(imagePrefixes)
	cfg.Kernel, cfg.Initramfs = kernel, initramfs
	cfg.Version = version()

	p, err := pixie.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := p.Start(ctx); err != nil {
		return err
	}
	fmt.Printf("metal-pixie %s serving HTTP on %v\n", cfg.Name, p.HTTPAddrs())
	return p.Wait()
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func version() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "dev"
}
