package service

import (
	"context"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/metalfleet/metalfleet/central/internal/bmc"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type bmcService struct {
	*API
	apiv1.UnimplementedBMCServiceServer
}

// Limits of a partition's BMC settings; metal-bmc refuses a document
// beyond its own (docs/bmc.md), so central refuses it first, naming the field.
const (
	maxBMCCredential = 256
	// The API's bound on any list (auth.MaxElements); metal-bmc takes
	// up to 10,000, leases bring the rest.
	maxStaticBMCs = 1000
	// maxBMCViolations bounds what one bad request is told: the first
	// few bad entries, not one line per entry of a long list.
	maxBMCViolations = 16
	maxBMCAddress    = 256
	maxLeaseCIDRs    = 256
	maxPollSeconds   = 3600
	// maxStuckCycles bounds the cycles of one stuck episode: more than a
	// hundred reboots of one machine is no policy but a loop.
	maxStuckCycles = 100
)

func (s *bmcService) GetSettings(ctx context.Context, req *apiv1.BMCServiceGetSettingsRequest) (*apiv1.BMCServiceGetSettingsResponse, error) {
	var v violations
	v.id("partition_id", req.GetPartitionId())
	if err := v.err(); err != nil {
		return nil, err
	}
	out, err := bmc.Get(ctx, s.store.Pool(), req.GetPartitionId())
	if err != nil {
		return nil, toStatus(err, "bmc settings")
	}
	return &apiv1.BMCServiceGetSettingsResponse{Settings: out}, nil
}

func (s *bmcService) SetSettings(ctx context.Context, req *apiv1.BMCServiceSetSettingsRequest) (*apiv1.BMCServiceSetSettingsResponse, error) {
	in := req.GetSettings()
	var v violations
	if in == nil {
		v.add("settings", "required")
		return nil, v.err()
	}
	v.id("settings.partition_id", in.GetPartitionId())
	checkBMCSettings(&v, in)
	if err := v.err(); err != nil {
		return nil, err
	}
	var docs bmc.Docs
	if s.fleet != nil {
		docs = s.fleet
	}
	out, err := bmc.Set(ctx, s.store, docs, in)
	if err != nil {
		return nil, toStatus(err, "bmc settings")
	}
	return &apiv1.BMCServiceSetSettingsResponse{Settings: out}, nil
}

// checkBMCSettings checks what metal-bmc would refuse. A credential's
// value is never echoed: it may be the password.
func checkBMCSettings(v *violations, in *apiv1.PartitionBMC) {
	for _, c := range []struct{ field, val string }{{"settings.user", in.GetUser()}, {"settings.password", in.GetPassword()}} {
		switch {
		case len(c.val) > maxBMCCredential:
			v.add(c.field, "longer than %d bytes", maxBMCCredential)
		case strings.ContainsAny(c.val, "\x00\r\n"):
			v.add(c.field, "contains a NUL byte or a line break")
		case !utf8.ValidString(c.val):
			v.add(c.field, "not UTF-8")
		}
	}
	if in.GetPasswordSet() {
		v.add("settings.password_set", "output only")
	}
	if in.GetUpdatedAt() != nil {
		v.add("settings.updated_at", "output only")
	}
	if n := len(in.GetStaticBmcs()); n > maxStaticBMCs {
		v.add("settings.static_bmcs", "%d entries, at most %d", n, maxStaticBMCs)
	} else {
		seen := map[string]int{}
		for i, e := range in.GetStaticBmcs() {
			if len(v.List()) >= maxBMCViolations {
				break
			}
			f := fieldIndex("settings.static_bmcs", i) + ".address"
			if msg := badBMCAddress(e.GetAddress(), e.GetIpmi()); msg != "" {
				v.add(f, "%s", msg)
				continue
			}
			if j, dup := seen[e.GetAddress()]; dup {
				v.add(f, "%s is listed twice (also static_bmcs[%d])", quote(e.GetAddress()), j)
			}
			seen[e.GetAddress()] = i
		}
	}
	if n := len(in.GetLeaseCidrs()); n > maxLeaseCIDRs {
		v.add("settings.lease_cidrs", "%d entries, at most %d", n, maxLeaseCIDRs)
	} else {
		for i, c := range in.GetLeaseCidrs() {
			if len(v.List()) >= maxBMCViolations {
				break
			}
			v.prefix(fieldIndex("settings.lease_cidrs", i), c)
		}
	}
	if p := in.GetPollIntervalSeconds(); p > maxPollSeconds {
		v.add("settings.poll_interval_seconds", "%d is more than %d (an hour)", p, maxPollSeconds)
	}
	if n := in.GetStuckMaxCycles(); n > maxStuckCycles {
		v.add("settings.stuck_max_cycles", "%d is more than %d", n, maxStuckCycles)
	}
}

// badBMCAddress says what is wrong with a static BMC's address ("" when
// nothing): host, host:port, [v6]:port, or an http(s) URL of scheme, host
// and port for Redfish — as metal-bmc reads it.
func badBMCAddress(s string, ipmi bool) string {
	switch {
	case s == "":
		return "required"
	case len(s) > maxBMCAddress:
		return "longer than " + strconv.Itoa(maxBMCAddress) + " bytes"
	case strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return "holds a space or control character"
	}
	if strings.Contains(s, "://") {
		if ipmi {
			return "an IPMI BMC takes host[:port], not a URL"
		}
		u, err := url.Parse(s)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
			return quote(s) + " is not an http(s) URL"
		}
		if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
			return quote(s) + ": only scheme, host and port are allowed"
		}
		s = u.Host
	}
	host := s
	if h, port, err := net.SplitHostPort(s); err == nil {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return quote(s) + ": port is not 1-65535"
		}
		host = h
	} else if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil && a.Is6() {
		host = a.String()
	}
	if host == "" {
		return quote(s) + ": no host"
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.Zone() != "" || a.IsUnspecified() || a.IsMulticast() {
			return quote(s) + ": not a host's address"
		}
		return ""
	}
	if len(host) > 253 || strings.ContainsFunc(host, func(r rune) bool {
		return !(r == '-' || r == '.' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}) {
		return quote(s) + ": neither an IP address nor a host name"
	}
	return ""
}
