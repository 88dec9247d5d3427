// Package frr is metal-core's FRR backend: it renders the leaf's frr.conf
// from the switch's Spec, validates it with FRR's own parser, swaps it in
// with a backup and reloads FRR, restoring the backup when the reload
// fails; and it reads the BGP sessions from FRR live.
package frr

import (
	"bytes"
	_ "embed"
	"fmt"
	"net/netip"
	"text/template"

	"github.com/metalfleet/metalfleet/agents/metalcore/internal/spec"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

//go:embed frr.conf.tmpl
var confTemplate string

// Template is the parsed frr.conf template. Parsing it is cheap; a
// Renderer keeps one so that a custom template is checked once, at start.
type Template struct{ t *template.Template }

// ParseTemplate parses text, or the built-in template when text is empty.
func ParseTemplate(text string) (*Template, error) {
	if text == "" {
		text = confTemplate
	}
	t, err := template.New("frr.conf").Option("missingkey=error").
		Funcs(template.FuncMap{"add": func(a, b int) int { return a + b }}).Parse(text)
	if err != nil {
		return nil, fmt.Errorf("frr template: %w", err)
	}
	return &Template{t: t}, nil
}

// view is what the template sees.
type view struct {
	Hostname          string
	ASN               uint32
	RouterID          netip.Addr
	Loopback          netip.Addr
	ManagementGateway string
	SetSource         bool
	Fabric            spec.PeerGroup
	Firewall          spec.PeerGroup
	Machine           spec.PeerGroup
	Interfaces        []iface
	Uplinks           []string
	Firewalls         []firewall
	VRFs              []vrf
}

type iface struct{ Name, VRF string }

type firewall struct {
	Port             string
	In4, In6, VNIMap string
	VNIs             []uint32
	Lists            []prefixLine
}

type vrf struct {
	Name         string
	VNI          uint32
	Ports        []string
	HasV4, HasV6 bool
	In4, In6     string
	Lists        []prefixLine
}

// prefixLine is one line of a prefix list.
type prefixLine struct {
	Family string // "ip" or "ipv6"
	Name   string
	Seq    int
	Prefix netip.Prefix
	// Max is the longest prefix the line admits: the whole range down to
	// host routes (empty when the prefix is a host route already).
	Max string
}

// prefixLines numbers the permit lines of one prefix list.
func prefixLines(family, name string, ps []netip.Prefix) []prefixLine {
	out := make([]prefixLine, 0, len(ps))
	for i, p := range ps {
		l := prefixLine{Family: family, Name: name, Seq: 10 * (i + 1), Prefix: p}
		if p.Bits() < p.Addr().BitLen() {
			l.Max = fmt.Sprint(p.Addr().BitLen())
		}
		out = append(out, l)
	}
	return out
}

// Render writes the frr.conf of s.
func (t *Template) Render(s *spec.Spec) ([]byte, error) {
	v := view{
		Hostname: s.Hostname, ASN: s.ASN, RouterID: s.RouterID, Loopback: s.Loopback, SetSource: s.SetSourceLoopback,
		Fabric: s.Groups[spec.GroupFabric], Firewall: s.Groups[spec.GroupFirewall], Machine: s.Groups[spec.GroupMachine],
	}
	if s.ManagementGateway.IsValid() {
		v.ManagementGateway = s.ManagementGateway.String()
	}
	for _, p := range s.Ports {
		switch p.Role {
		case agentv1.SwitchPortRole_SWITCH_PORT_ROLE_UPLINK:
			v.Uplinks = append(v.Uplinks, p.Name)
		case agentv1.SwitchPortRole_SWITCH_PORT_ROLE_FIREWALL:
			fw := firewall{Port: p.Name, In4: "fw-" + p.Name + "-in", In6: "fw-" + p.Name + "-in6", VNIMap: "fw-" + p.Name + "-vni", VNIs: p.Filter.VNIs}
			fw.Lists = append(prefixLines("ip", fw.In4+"-prefixes", p.Filter.V4), prefixLines("ipv6", fw.In6+"-prefixes", p.Filter.V6)...)
			v.Firewalls = append(v.Firewalls, fw)
		}
		if p.Routed() {
			v.Interfaces = append(v.Interfaces, iface{Name: p.Name, VRF: p.VRF})
		}
	}
	for _, r := range s.VRFs {
		x := vrf{Name: r.Name, VNI: r.VNI, Ports: r.Ports, HasV4: len(r.V4) > 0, HasV6: len(r.V6) > 0, In4: r.Name + "-in", In6: r.Name + "-in6"}
		x.Lists = append(prefixLines("ip", x.In4+"-prefixes", r.V4), prefixLines("ipv6", x.In6+"-prefixes", r.V6)...)
		v.VRFs = append(v.VRFs, x)
	}
	var b bytes.Buffer
	if err := t.t.Execute(&b, v); err != nil {
		return nil, fmt.Errorf("render frr.conf: %w", err)
	}
	return b.Bytes(), nil
}
