package driver

import (
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
)

// An IPMI BMC returns its system GUID as 16 bytes whose order is not
// agreed on: the IPMI specification stores it least-significant byte
// first (the whole GUID reversed), many BMCs store it as SMBIOS does (the
// first three fields little-endian, the rest in order), a few as RFC 4122
// (in order). The installer reads the machine's UUID from SMBIOS, so which
// decoding names the machine depends on the BMC's vendor. metal-bmc
// reports one decoding as the machine's UUID and the others as aliases;
// central keys the BMC by whichever names a registered machine.

// guidEncodings are the decodings in the order ipmitool's "mc guid"
// (auto) prefers them.
var guidEncodings = []struct {
	name   string
	decode func(raw [16]byte) uuid.UUID
}{
	{"smbios", func(r [16]byte) uuid.UUID {
		return uuid.UUID{r[3], r[2], r[1], r[0], r[5], r[4], r[7], r[6], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]}
	}},
	{"ipmi", func(r [16]byte) uuid.UUID {
		var u uuid.UUID
		for i := range r {
			u[i] = r[15-i]
		}
		return u
	}},
	{"rfc4122", func(r [16]byte) uuid.UUID { return uuid.UUID(r) }},
}

// GUIDNames decodes a BMC's raw system GUID (as "Get System GUID" returns
// it) in each byte order BMCs use. The first is what ipmitool's "mc guid"
// prints by default, so that metal-bmc names the machine as an operator
// reading the BMC does: a UUID of version 1 with a timestamp between 1970
// and now, else the first whose version is 1 to 5 (SMBIOS, IPMI, RFC 4122
// order), else the IPMI specification's. The others follow, without
// duplicates.
func GUIDNames(raw [16]byte, now time.Time) []string {
	var all []uuid.UUID
	for _, e := range guidEncodings {
		all = append(all, e.decode(raw))
	}
	first := -1
	for i, u := range all {
		if u.Version() == 1 && plausibleTime(u, now) {
			first = i
			break
		}
	}
	for i, u := range all {
		if first < 0 && u.Version() >= 1 && u.Version() <= 5 {
			first = i
		}
	}
	if first < 0 {
		first = 1 // the IPMI specification's
	}
	names := []string{all[first].String()}
	for i, u := range all {
		if s := u.String(); i != first && !slices.Contains(names, s) {
			names = append(names, s)
		}
	}
	return names
}

// plausibleTime: a version 1 UUID's timestamp lies between 1970 and the
// end of now's year, as ipmitool checks.
func plausibleTime(u uuid.UUID, now time.Time) bool {
	sec, _ := u.Time().UnixTime()
	year := time.Unix(sec, 0).UTC().Year()
	return year >= 1970 && year <= now.UTC().Year()
}

// parseGUIDDump reads the 16 bytes of ipmitool's "mc guid dump": hex
// pairs, possibly spaced and over several lines, first byte first.
func parseGUIDDump(out string) ([16]byte, error) {
	var raw [16]byte
	var digits strings.Builder
	for _, l := range strings.Split(out, "\n") {
		// A label ("System GUID  : ...") is not part of the bytes.
		if _, v, ok := strings.Cut(l, ":"); ok {
			l = v
		}
		for _, r := range l {
			switch {
			case r == ' ' || r == '\t' || r == '\r' || r == '-':
			case strings.ContainsRune("0123456789abcdefABCDEF", r):
				digits.WriteRune(r)
			default:
				return raw, fmt.Errorf("ipmitool's GUID dump holds %q, not hex", r)
			}
		}
	}
	b, err := hex.DecodeString(digits.String())
	if err != nil || len(b) != len(raw) {
		return raw, fmt.Errorf("ipmitool's GUID dump has %d hex digits, not 32", digits.Len())
	}
	copy(raw[:], b)
	return raw, nil
}
