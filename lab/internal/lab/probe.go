package lab

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/metalfleet/metalfleet/lab/internal/netlab"
)

// The tenant probe proves a tenant VRF's isolation with real packets: a
// network namespace plugged into a machine's cable (the bridge between the
// machine's NIC and its leaf port), so it sits where the installed system
// sits — on a port routed in the tenant's VRF. From there it learns the
// leaf from its router advertisements, takes an address of the tenant's
// network, and tries central, pixie, the leaves' management addresses and
// the host: none may answer. The leaf's agent relay, at the router's
// link-local address, must answer — with central's TLS certificate.

// ProbeResult is what the probe saw.
type ProbeResult struct {
	Router  string   // the leaf's link-local address, from its RAs
	Refused []string // management endpoints that did not answer (good)
	Relay   string   // the relay's address, answered with central's certificate
}

var defaultViaRE = regexp.MustCompile(`default via (fe80::[0-9a-f:]+) dev`)

// probeTenant plugs the probe into machine's NIC iface, whose port is
// routed in the tenant network with the given IPv4/IPv6 prefixes, and
// runs the checks. The probe's namespace is removed afterwards.
func (l *Lab) probeTenant(ctx context.Context, machine, iface string, prefixes []string) (ProbeResult, error) {
	var res ProbeResult
	t := l.top
	ns := t.NamespacePrefix() + "probe"
	mns := t.Namespace(machine)
	_ = netlab.DeleteNS(ns)
	if err := netlab.CreateNS(ns); err != nil {
		return res, err
	}
	defer func() { _ = netlab.DeleteNS(ns) }()
	if err := netlab.Veth(netlab.End{NS: mns, Name: "probe0"}, netlab.End{NS: ns, Name: "p0"}); err != nil {
		return res, err
	}
	defer func() { _ = netlab.DeleteLink(mns, "probe0") }()
	for _, c := range [][]string{
		{"-n", mns, "link", "set", "probe0", "master", bridgeOf(iface), "up"},
		{"-n", ns, "link", "set", "p0", "up"},
	} {
		if out, err := exec.CommandContext(ctx, "ip", c...).CombinedOutput(); err != nil {
			return res, fmt.Errorf("ip %s: %w: %s", strings.Join(c, " "), err, out)
		}
	}
	// Addresses of the tenant's network that IPAM does not hand out soon:
	// the prefixes' last-but-one host.
	var src4 netip.Addr
	for _, p := range prefixes {
		pr, err := netip.ParsePrefix(p)
		if err != nil {
			return res, err
		}
		a := lastButOne(pr)
		if a.Is4() {
			src4 = a
		}
		if out, err := exec.CommandContext(ctx, "ip", "-n", ns, "addr", "add", netip.PrefixFrom(a, pr.Bits()).String(), "dev", "p0", "nodad").CombinedOutput(); err != nil {
			return res, fmt.Errorf("probe address %s: %w: %s", a, err, out)
		}
	}
	// The leaf's router advertisements give the probe its default router.
	if err := waitFor(ctx, 45*time.Second, "a router advertisement on the tenant port of "+machine+":"+iface, func() (bool, error) {
		out, err := exec.CommandContext(ctx, "ip", "-n", ns, "-6", "route", "show", "default").CombinedOutput()
		if m := defaultViaRE.FindStringSubmatch(string(out)); m != nil {
			res.Router = m[1]
			return true, nil
		}
		return false, err
	}); err != nil {
		return res, err
	}
	if src4.IsValid() {
		// IPv4 over the IPv6 link-local next hop (RFC 5549), as a machine
		// with BGP unnumbered routes.
		if out, err := exec.CommandContext(ctx, "ip", "-n", ns, "-4", "route", "replace", "default", "via", "inet6", res.Router, "dev", "p0").CombinedOutput(); err != nil {
			return res, fmt.Errorf("probe IPv4 route: %w: %s", err, out)
		}
	}

	var targets []string
	central := t.Node(t.Central())
	pixie := t.Node(t.Pixie())
	for _, a := range []struct{ addr, port string }{
		{central.MgmtIPv4, "8443"}, {central.MgmtIPv6, "8443"}, {central.MgmtIPv4, "8080"},
		{pixie.MgmtIPv4, "80"}, {pixie.MgmtIPv6, "80"}, {t.Mgmt.HostIPv4, "22"},
	} {
		if a.addr != "" {
			targets = append(targets, net.JoinHostPort(a.addr, a.port))
		}
	}
	for _, leaf := range t.Routers() {
		if n := t.Node(leaf); n.MgmtIPv4 != "" {
			targets = append(targets, net.JoinHostPort(n.MgmtIPv4, "2323"), net.JoinHostPort(n.MgmtIPv4, "6379"))
		}
	}
	ca, err := os.ReadFile(filepath.Join(l.centralDir(), "ca.crt"))
	if err != nil {
		return res, err
	}
	relay := net.JoinHostPort(res.Router+"%p0", "4443")
	err = netlab.Do(ns, func() error {
		for _, target := range targets {
			c, err := net.DialTimeout("tcp", target, 3*time.Second)
			if err == nil {
				c.Close()
				return fmt.Errorf("from the tenant VRF %s answered", target)
			}
			res.Refused = append(res.Refused, target)
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(ca)
		host, _, _ := net.SplitHostPort(l.centralAddr())
		d := &net.Dialer{Timeout: 10 * time.Second}
		c, err := tls.DialWithDialer(d, "tcp", relay, &tls.Config{RootCAs: pool, ServerName: host, NextProtos: []string{"h2"}})
		if err != nil {
			return fmt.Errorf("the leaf's agent relay %s: %w", relay, err)
		}
		c.Close()
		res.Relay = relay
		return nil
	})
	return res, err
}

// lastButOne is the last-but-one address of p.
func lastButOne(p netip.Prefix) netip.Addr {
	a := p.Masked().Addr().AsSlice()
	host := len(a)*8 - p.Bits()
	for i := len(a) - 1; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		a[i] |= byte(1<<n - 1)
		host -= n
	}
	last, _ := netip.AddrFromSlice(a)
	return last.Prev()
}
