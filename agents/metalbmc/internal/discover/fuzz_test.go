package discover

import (
	"strings"
	"testing"
	"time"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// FuzzParseAddress: any input is refused or normalised to an address
// that parses again to itself, without spaces or control characters.
func FuzzParseAddress(f *testing.F) {
	for _, s := range []string{"10.0.0.1", "[fd00::1]:623", "https://bmc:8443", "http://[::1]", "a..b", "::ffff:1.2.3.4", "1.2.3.4:", ":80", "[::1", "h%zz"} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, s string, ipmi bool) {
		p := agentv1.BmcProtocol_BMC_PROTOCOL_REDFISH
		if ipmi {
			p = agentv1.BmcProtocol_BMC_PROTOCOL_IPMI
		}
		a, err := ParseAddress(s, p)
		if err != nil {
			return
		}
		if strings.ContainsFunc(a, func(r rune) bool { return r <= ' ' || r == 0x7f }) {
			t.Fatalf("ParseAddress(%q) = %q holds a space or control character", s, a)
		}
		again, err := ParseAddress(a, p)
		if err != nil || again != a {
			t.Fatalf("ParseAddress(%q) = %q, which parses to %q, %v", s, a, again, err)
		}
	})
}

// FuzzLeases: any lease file is refused or read without panicking.
func FuzzLeases(f *testing.F) {
	f.Add(`{"version":1,"leases":[{"key":"v4:1","mac":"AA:BB","addr":"10.0.0.1","expires":"2030-01-01T00:00:00Z"}]}`)
	f.Add(`{"version":1,"leases":[{"key":"","addr":"fe80::1%eth0","expires":"2030-01-01T00:00:00Z"}]}`)
	f.Add(`{"version":1,"leases":null}`)
	f.Add("lease 10.0.0.1 {\n ends 4 2030/01/01 00:00:00;\n binding state active;\n hardware ethernet aa:bb:cc:dd:ee:ff;\n}\n")
	f.Add("lease fd00::1 {\n ends epoch 1900000000;\n}\nlease 10.0.0.1 {\n ends never;\n}\n")
	f.Fuzz(func(t *testing.T, s string) {
		ts, err := Leases([]byte(s), time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), nil)
		if err != nil {
			return
		}
		for _, tg := range ts {
			if tg.Address == "" || tg.Source != Lease {
				t.Fatalf("target %+v", tg)
			}
		}
	})
}
