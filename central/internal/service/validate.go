package service

import (
	"math/big"
	"net/netip"
	"strconv"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/field"
)

// The people API's shared rules (field.Violations: ID, Text, Labels,
// UUID), recorded with the request's clipping.

func (v *violations) id(f, val string) { v.people().ID(f, val) }

func (v *violations) optionalID(f, val string) { v.people().OptionalID(f, val) }

func (v *violations) text(f, val string, maxLen int) { v.people().Text(f, val, maxLen) }

func (v *violations) labels(f string, m map[string]string) { v.people().Labels(f, m) }

func (v *violations) uuid(f, val string) { v.people().UUID(f, val) }

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

func fieldIndex(f string, i int) string { return field.Index(f, i) }

// quote is how a request value appears in status messages and logs:
// quoted and clipped (auth.Quote, shared with the interceptor).
func quote(s string) string { return auth.Quote(s) }

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func mustUnit(s string) *big.Int {
	u, _ := new(big.Int).SetString(s, 10)
	return u
}
