// Package discover finds a partition's BMCs: the static list of the
// document plus the active leases of the BMC network's DHCP server. In the
// lab and in small sites that server is metal-pixie, whose lease file
// (leases.json, version 1) is read here; ISC dhcpd's dhcpd.leases (what
// metal-stack's metal-bmc reads) is read as well. Lease files are read,
// never written, so metal-bmc cannot disturb the DHCP server.
package discover

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Sources of a target.
const (
	Static = "static"
	Lease  = "lease"
)

// Target is one BMC to poll.
type Target struct {
	// Address is host:port or host, normalised (see ParseAddress); it
	// names the target.
	Address  string
	Protocol agentv1.BmcProtocol
	Source   string
	MAC      string
}

// maxAddress bounds an address from a document or a lease file.
const maxAddress = 256

// ParseAddress checks and normalises a BMC address: "host", "host:port",
// "[v6]:port" or a bare IPv6 address, with an optional http:// or
// https:// prefix for Redfish (http is kept: a lab BMC may serve plain
// HTTP). Hostile input gets an error that says what is wrong.
func ParseAddress(s string, proto agentv1.BmcProtocol) (string, error) {
	if s == "" {
		return "", errors.New("empty address")
	}
	if len(s) > maxAddress {
		return "", fmt.Errorf("address longer than %d bytes", maxAddress)
	}
	for _, r := range s {
		if r <= ' ' || r == 0x7f {
			return "", fmt.Errorf("address %q holds a space or control character", s)
		}
	}
	scheme := ""
	if i := strings.Index(s, "://"); i >= 0 {
		u, err := url.Parse(s)
		if err != nil {
			return "", fmt.Errorf("address %q: %w", s, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return "", fmt.Errorf("address %q: scheme %q, want http or https", s, u.Scheme)
		}
		if proto == agentv1.BmcProtocol_BMC_PROTOCOL_IPMI {
			return "", fmt.Errorf("address %q: an IPMI BMC takes host[:port], not a URL", s)
		}
		if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			return "", fmt.Errorf("address %q: only scheme, host and port are allowed", s)
		}
		scheme, s = u.Scheme+"://", u.Host
	}
	host, port, hasPort := s, "", false
	if h, p, err := net.SplitHostPort(s); err == nil {
		host, port, hasPort = h, p, true
	} else if inner, ok := strings.CutPrefix(s, "["); ok && strings.HasSuffix(inner, "]") {
		host = strings.TrimSuffix(inner, "]")
		if a, err := netip.ParseAddr(host); err != nil || !a.Is6() {
			return "", fmt.Errorf("address %q: brackets hold only an IPv6 address", s)
		}
	} else if a, err := netip.ParseAddr(s); err == nil && a.Is6() {
		host = a.String()
	}
	if host == "" {
		return "", fmt.Errorf("address %q: no host", s)
	}
	if hasPort {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return "", fmt.Errorf("address %q: port %q is not 1-65535", s, port)
		}
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" {
			return "", fmt.Errorf("address %q: zoned addresses are not supported", s)
		}
		if a.IsUnspecified() || a.IsMulticast() {
			return "", fmt.Errorf("address %q: not a host's address", s)
		}
		host = a.Unmap().String()
	} else if !validHostname(host) {
		return "", fmt.Errorf("address %q: %q is neither an IP address nor a host name", s, host)
	}
	out := host
	if port != "" || strings.Contains(host, ":") {
		if port == "" {
			out = "[" + host + "]"
		} else {
			out = net.JoinHostPort(host, port)
		}
	}
	return scheme + out, nil
}

func validHostname(h string) bool {
	if len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return false
			}
		}
	}
	return true
}

// lease is one entry of metal-pixie's leases.json (agents/pixie's lease
// package writes it; the format is its file format, version 1).
type lease struct {
	Key     string     `json:"key"`
	MAC     string     `json:"mac"`
	Addr    netip.Addr `json:"addr"`
	Expires time.Time  `json:"expires"`
}

type leaseFile struct {
	Version int     `json:"version"`
	Leases  []lease `json:"leases"`
}

// maxLeaseFile bounds the lease file read.
const maxLeaseFile = 64 << 20

// Leases returns the BMCs in a pixie lease file: the active leases
// (expiring after now) inside one of cidrs (all when cidrs is empty), the
// newest per MAC, sorted by address. Every lease is taken as Redfish on
// its default port; a BMC that speaks only IPMI belongs in the static list.
func Leases(b []byte, now time.Time, cidrs []netip.Prefix) ([]Target, error) {
	if len(b) > maxLeaseFile {
		return nil, fmt.Errorf("lease file larger than %d bytes", maxLeaseFile)
	}
	var f leaseFile
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] != '{' && t[0] != '[' {
		ls, err := iscLeases(b)
		if err != nil {
			return nil, err
		}
		f = leaseFile{Version: 1, Leases: ls}
	} else {
		if err := json.Unmarshal(b, &f); err != nil {
			return nil, fmt.Errorf("parse lease file: %w", err)
		}
		if f.Version != 1 {
			return nil, fmt.Errorf("lease file version %d, want 1", f.Version)
		}
	}
	newest := map[string]lease{} // by MAC, or by key when it has none
	for _, l := range f.Leases {
		a := l.Addr.Unmap()
		if !a.IsValid() || a.Zone() != "" || !now.Before(l.Expires) || l.Key == "declined" {
			continue
		}
		if len(cidrs) > 0 && !containsAny(cidrs, a) {
			continue
		}
		id := strings.ToLower(l.MAC)
		if id == "" {
			id = l.Key
		}
		if cur, ok := newest[id]; ok && !l.Expires.After(cur.Expires) {
			continue
		}
		l.Addr, l.MAC = a, strings.ToLower(l.MAC)
		newest[id] = l
	}
	out := make([]Target, 0, len(newest))
	for _, l := range newest {
		mac := l.MAC
		if len(mac) > 64 {
			mac = ""
		}
		addr := l.Addr.String()
		if l.Addr.Is6() {
			addr = "[" + addr + "]"
		}
		out = append(out, Target{Address: addr, Protocol: agentv1.BmcProtocol_BMC_PROTOCOL_REDFISH, Source: Lease, MAC: mac})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Address < out[j].Address })
	return out, nil
}

func containsAny(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// iscLeases reads ISC dhcpd's lease file: "lease ADDR { ... }" blocks with
// "ends", "binding state" and "hardware ethernet". dhcpd appends a block
// per change, so a later block of an address replaces an earlier one. A
// lease in another binding state than active is not a BMC now; one that
// never ends gets a far expiry.
func iscLeases(b []byte) ([]lease, error) {
	var (
		out []lease
		cur *lease
		ok  bool
	)
	byAddr := map[netip.Addr]int{}
	for n, raw := range strings.Split(string(b), "\n") {
		line := strings.TrimSpace(raw)
		if i := strings.Index(line, "#"); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		switch {
		case line == "":
		case cur == nil && strings.HasPrefix(line, "lease "):
			f := strings.Fields(line)
			if len(f) != 3 || f[2] != "{" {
				return nil, fmt.Errorf("dhcpd.leases line %d: want \"lease ADDR {\"", n+1)
			}
			a, err := netip.ParseAddr(f[1])
			if err != nil {
				return nil, fmt.Errorf("dhcpd.leases line %d: %w", n+1, err)
			}
			cur, ok = &lease{Key: "isc:" + a.String(), Addr: a}, true
		case cur == nil:
			// Other top-level statements (server-duid, authoring-byte-order…).
		case line == "}":
			if !ok {
				// Not active: expired for the caller, and it replaces an
				// earlier active block of the address.
				cur.Expires = time.Time{}
			}
			if i, seen := byAddr[cur.Addr]; seen {
				out[i] = *cur
			} else {
				byAddr[cur.Addr] = len(out)
				out = append(out, *cur)
			}
			cur = nil
		case strings.HasPrefix(line, "ends "):
			v := strings.TrimSuffix(strings.TrimSpace(strings.TrimPrefix(line, "ends ")), ";")
			switch f := strings.Fields(v); {
			case v == "never":
				cur.Expires = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)
			case len(f) == 2 && f[0] == "epoch":
				sec, err := strconv.ParseInt(f[1], 10, 64)
				if err != nil {
					return nil, fmt.Errorf("dhcpd.leases line %d: %w", n+1, err)
				}
				cur.Expires = time.Unix(sec, 0).UTC()
			case len(f) == 3:
				t, err := time.Parse("2006/01/02 15:04:05", f[1]+" "+f[2])
				if err != nil {
					return nil, fmt.Errorf("dhcpd.leases line %d: %w", n+1, err)
				}
				cur.Expires = t
			default:
				return nil, fmt.Errorf("dhcpd.leases line %d: cannot read %q", n+1, line)
			}
		case strings.HasPrefix(line, "binding state "):
			ok = strings.TrimSuffix(strings.TrimPrefix(line, "binding state "), ";") == "active"
		case strings.HasPrefix(line, "hardware ethernet "):
			cur.MAC = strings.TrimSuffix(strings.TrimPrefix(line, "hardware ethernet "), ";")
		}
	}
	if cur != nil {
		return nil, errors.New("dhcpd.leases: the last lease block is not closed")
	}
	return out, nil
}

// ReadLeases reads the lease file at path; a missing file has no leases
// (pixie may not have handed out any yet).
func ReadLeases(path string, now time.Time, cidrs []netip.Prefix) ([]Target, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lease file: %w", err)
	}
	return Leases(b, now, cidrs)
}

// Merge joins static targets and leased ones; a static entry wins over a
// lease of the same address (it names the protocol on purpose).
func Merge(static, leased []Target) []Target {
	seen := map[string]bool{}
	out := make([]Target, 0, len(static)+len(leased))
	for _, lists := range [][]Target{static, leased} {
		for _, t := range lists {
			if seen[hostPort(t.Address)] {
				continue
			}
			seen[hostPort(t.Address)] = true
			out = append(out, t)
		}
	}
	return out
}

// hostPort strips a scheme, so that https://10.0.0.1 and a lease of
// 10.0.0.1 are one BMC.
func hostPort(a string) string {
	if _, rest, ok := strings.Cut(a, "://"); ok {
		return rest
	}
	return a
}
