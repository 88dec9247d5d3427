package driver

import (
	"encoding/hex"
	"slices"
	"strings"
	"testing"
	"time"
)

func rawGUID(t *testing.T, s string) [16]byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil || len(b) != 16 {
		t.Fatalf("bad test GUID %q", s)
	}
	return [16]byte(b)
}

func TestGUIDNames(t *testing.T) {
	now := time.Date(2026, 12, 6, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name string
		raw  string // the bytes as the BMC sends them, first first
		now  time.Time
		want []string // what metal-bmc reports first, then the aliases
	}{
		{"IPMI order: only its decoding has a valid version", "5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0002", now,
			[]string{"02001a2c-7c0d-559d-b14b-9e3f527a1f5c", "527a1f5c-9e3f-b14b-9d55-0d7c2c1a0002", "5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0002"}},
		{"SMBIOS order (most BMCs) comes first when valid", "44454c4c-3100-1052-8034-b2c04f4e3232", now,
			[]string{"4c4c4544-0031-5210-8034-b2c04f4e3232", "32324e4f-c0b2-3480-5210-00314c4c4544", "44454c4c-3100-1052-8034-b2c04f4e3232"}},
		{"a version 1 UUID of a plausible time wins", "c232ab00-9414-11ec-b348-9f6bdeced846", now,
			[]string{"c232ab00-9414-11ec-b348-9f6bdeced846", "00ab32c2-1494-ec11-b348-9f6bdeced846", "46d8cede-6b9f-48b3-ec11-149400ab32c2"}},
		{"a version 1 time after this year is not plausible", "c232ab00-9414-11ec-b348-9f6bdeced846", time.Date(2021, 1, 1, 0, 0, 0, 0, time.UTC),
			[]string{"46d8cede-6b9f-48b3-ec11-149400ab32c2", "00ab32c2-1494-ec11-b348-9f6bdeced846", "c232ab00-9414-11ec-b348-9f6bdeced846"}},
		{"no valid version: the IPMI specification's, duplicates once", "00000000-0000-0000-0000-000000000000", now,
			[]string{"00000000-0000-0000-0000-000000000000"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := GUIDNames(rawGUID(t, tc.raw), tc.now)
			if !slices.Equal(got, tc.want) {
				t.Errorf("GUIDNames(%s) = %v, want %v", tc.raw, got, tc.want)
			}
		})
	}
}

func TestParseGUIDDump(t *testing.T) {
	const want = "5c1f7a523f9e4bb19d550d7c2c1a0002"
	for _, tc := range []struct {
		name, out string
		ok        bool
	}{
		{"spaced", "5c 1f 7a 52 3f 9e 4b b1 9d 55 0d 7c 2c 1a 00 02\n", true},
		{"plain", want + "\n", true},
		{"over lines, upper case", "5C 1F 7A 52 3F 9E 4B B1\r\n9D 55 0D 7C 2C 1A 00 02\n", true},
		{"labelled", "System GUID  : 5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0002\n", true},
		{"short", "5c 1f 7a 52\n", false},
		{"long", want + "00\n", false},
		{"odd digits", want + "0\n", false},
		{"not hex", "Get Device GUID command failed\n", false},
		{"empty", "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, err := parseGUIDDump(tc.out)
			if tc.ok != (err == nil) {
				t.Fatalf("parseGUIDDump(%q) error %v, want ok=%v", tc.out, err, tc.ok)
			}
			if tc.ok && hex.EncodeToString(raw[:]) != want {
				t.Errorf("parseGUIDDump(%q) = %x", tc.out, raw)
			}
		})
	}
}

// FuzzParseGUIDDump: whatever ipmitool prints (a BMC's bytes, decoded),
// the parser returns 16 bytes or an error that does not echo the output,
// and the names are three UUIDs at most, the first always there.
func FuzzParseGUIDDump(f *testing.F) {
	f.Add("5c 1f 7a 52 3f 9e 4b b1 9d 55 0d 7c 2c 1a 00 02\n")
	f.Add("System GUID  : 5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0002\n")
	f.Add("\x00\xff:::\n")
	f.Fuzz(func(t *testing.T, out string) {
		raw, err := parseGUIDDump(out)
		if err != nil {
			if len(out) > 8 && strings.Contains(err.Error(), out) {
				t.Fatalf("error echoes the output: %v", err)
			}
			return
		}
		names := GUIDNames(raw, time.Now())
		if len(names) < 1 || len(names) > 3 {
			t.Fatalf("names %v", names)
		}
		for _, n := range names {
			if len(n) != 36 {
				t.Fatalf("name %q", n)
			}
		}
	})
}
