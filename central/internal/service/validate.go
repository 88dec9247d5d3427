package service

import (
	"math/big"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"github.com/metalfleet/metalfleet/central/internal/auth"
)

// idPattern is what client-chosen ids look like: DNS-label-ish, so they are
// safe in URLs, hostnames and shell commands.
var idPattern = regexp.MustCompile(`^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`)

func (v *violations) id(field, val string) {
	switch {
	case val == "":
		v.add(field, "required")
	case !idPattern.MatchString(val):
		v.add(field, "must be 1-63 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit")
	}
}

func (v *violations) optionalID(field, val string) {
	if val != "" {
		v.id(field, val)
	}
}

func (v *violations) text(field, val string, maxLen int) {
	if len(val) > maxLen {
		v.add(field, "longer than %d bytes", maxLen)
	}
	if strings.ContainsAny(val, "\x00") {
		v.add(field, "contains NUL")
	}
}

func (v *violations) labels(field string, m map[string]string) {
	if len(m) > 64 {
		v.add(field, "more than 64 labels")
	}
	for k, val := range m {
		f := field + "[" + quote(k) + "]"
		if k == "" || len(k) > 63 {
			v.add(f, "label keys must be 1-63 bytes")
		}
		if len(val) > 255 {
			v.add(f, "label values must be at most 255 bytes")
		}
	}
}

func (v *violations) uuid(field, val string) {
	if len(val) != 36 || strings.Count(val, "-") != 4 {
		v.add(field, "must be a UUID")
	}
}

// prefix parses a CIDR that must be in canonical (masked) form.
func (v *violations) prefix(field, val string) (netip.Prefix, bool) {
	p, err := netip.ParsePrefix(val)
	if err != nil {
		v.add(field, "not a CIDR prefix: %v", err)
		return netip.Prefix{}, false
	}
	if p.Addr().Zone() != "" || p.Addr().Is4In6() {
		v.add(field, "must be a plain IPv4 or IPv6 prefix")
		return netip.Prefix{}, false
	}
	if p.Masked() != p {
		v.add(field, "host bits set; did you mean %s?", p.Masked())
		return netip.Prefix{}, false
	}
	return p, true
}

func fieldIndex(field string, i int) string { return field + "[" + strconv.Itoa(i) + "]" }

// quote is how a request value appears in status messages and logs:
// quoted and clipped (auth.Quote, shared with the interceptor).
func quote(s string) string { return auth.Quote(s) }

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func mustUnit(s string) *big.Int {
	u, _ := new(big.Int).SetString(s, 10)
	return u
}
