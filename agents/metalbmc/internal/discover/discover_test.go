package discover

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

func TestParseAddress(t *testing.T) {
	redfish, ipmi := agentv1.BmcProtocol_BMC_PROTOCOL_REDFISH, agentv1.BmcProtocol_BMC_PROTOCOL_IPMI
	for _, tc := range []struct {
		in    string
		proto agentv1.BmcProtocol
		want  string
		err   string
	}{
		{in: "10.0.0.1", proto: redfish, want: "10.0.0.1"},
		{in: "10.0.0.1:8443", proto: redfish, want: "10.0.0.1:8443"},
		{in: "https://10.0.0.1", proto: redfish, want: "https://10.0.0.1"},
		{in: "http://bmc-1.example:8080/", proto: redfish, want: "http://bmc-1.example:8080"},
		{in: "fd00::1", proto: redfish, want: "[fd00::1]"},
		{in: "[fd00::1]:623", proto: ipmi, want: "[fd00::1]:623"},
		{in: "::ffff:10.0.0.1", proto: redfish, want: "10.0.0.1"},
		{in: "[fd00::1]", proto: redfish, want: "[fd00::1]"},
		{in: "", err: "empty"},
		{in: "[::1]:", err: "port"},
		{in: "[10.0.0.1]", err: "brackets"},
		{in: "::", err: "not a host"},
		{in: "224.0.0.1", err: "not a host"},
		{in: "10.0.0.1:0", err: "port"},
		{in: "10.0.0.1:99999", err: "port"},
		{in: "ftp://10.0.0.1", err: "scheme"},
		{in: "https://10.0.0.1", proto: ipmi, err: "not a URL"},
		{in: "https://u:p@10.0.0.1", err: "only scheme"},
		{in: "https://10.0.0.1/redfish", err: "only scheme"},
		{in: "10.0.0.1 ; rm -rf /", err: "space"},
		{in: "bmc\x00", err: "control"},
		{in: "bad_host", err: "neither"},
		{in: "fe80::1%eth0", err: "zone"},
		{in: strings.Repeat("a", 300), err: "longer"},
	} {
		got, err := ParseAddress(tc.in, tc.proto)
		switch {
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("ParseAddress(%q) = %q, %v; want error with %q", tc.in, got, err, tc.err)
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("ParseAddress(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestLeases(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	file := `{"version":1,"leases":[
	 {"key":"v4:01aa","mac":"AA:00:00:00:00:01","addr":"10.1.0.11","expires":"2026-01-01T13:00:00Z"},
	 {"key":"v4:01aa-old","mac":"aa:00:00:00:00:01","addr":"10.1.0.99","expires":"2026-01-01T12:30:00Z"},
	 {"key":"v4:02","mac":"aa:00:00:00:00:02","addr":"10.1.0.12","expires":"2026-01-01T11:00:00Z"},
	 {"key":"v4:03","mac":"aa:00:00:00:00:03","addr":"192.168.0.3","expires":"2026-01-01T13:00:00Z"},
	 {"key":"v6:04/1","mac":"aa:00:00:00:00:04","addr":"fd00::4","expires":"2026-01-01T13:00:00Z"},
	 {"key":"declined","addr":"10.1.0.13","expires":"2026-01-01T13:00:00Z"}
	]}`
	all, err := Leases([]byte(file), now, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tg := range all {
		got = append(got, tg.Address+"/"+tg.MAC)
	}
	want := "10.1.0.11/aa:00:00:00:00:01 192.168.0.3/aa:00:00:00:00:03 [fd00::4]/aa:00:00:00:00:04"
	if strings.Join(got, " ") != want {
		t.Errorf("leases = %v\nwant %s", got, want)
	}
	inNet, err := Leases([]byte(file), now, []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")})
	if err != nil || len(inNet) != 1 || inNet[0].Address != "10.1.0.11" || inNet[0].Source != Lease {
		t.Errorf("in 10.1.0.0/24: %+v, %v", inNet, err)
	}

	for _, bad := range []string{`{`, `{"version":2,"leases":[]}`, `[]`} {
		if _, err := Leases([]byte(bad), now, nil); err == nil {
			t.Errorf("Leases(%q) succeeded", bad)
		}
	}
	if l, err := ReadLeases(filepath.Join(t.TempDir(), "none.json"), now, nil); err != nil || l != nil {
		t.Errorf("missing file: %v, %v", l, err)
	}
	p := filepath.Join(t.TempDir(), "leases.json")
	if err := os.WriteFile(p, []byte(file), 0o600); err != nil {
		t.Fatal(err)
	}
	if l, err := ReadLeases(p, now, nil); err != nil || len(l) != 3 {
		t.Errorf("ReadLeases: %v, %v", l, err)
	}
}

func TestMergeStaticWins(t *testing.T) {
	static := []Target{{Address: "https://10.1.0.11", Protocol: agentv1.BmcProtocol_BMC_PROTOCOL_REDFISH, Source: Static}, {Address: "10.1.0.20:623", Protocol: agentv1.BmcProtocol_BMC_PROTOCOL_IPMI, Source: Static}}
	leased := []Target{{Address: "10.1.0.11", Source: Lease}, {Address: "10.1.0.12", Source: Lease}}
	got := Merge(static, leased)
	if len(got) != 3 || got[0].Source != Static || got[2].Address != "10.1.0.12" {
		t.Errorf("Merge = %+v", got)
	}
}

func TestISCLeases(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	file := `# The format of this file is documented in the dhcpd.leases(5) manual page.
authoring-byte-order little-endian;
server-duid "\\000\\001";

lease 10.1.0.11 {
  starts 4 2026/01/01 11:00:00;
  ends 4 2026/01/01 13:00:00;
  binding state active;
  next binding state free;
  hardware ethernet aa:00:00:00:00:01;
  client-hostname "bmc-1";
}
lease 10.1.0.12 {
  starts 4 2026/01/01 09:00:00;
  ends 4 2026/01/01 10:00:00;
  binding state free;
  hardware ethernet aa:00:00:00:00:02;
}
lease 10.1.0.13 {
  ends never;
  binding state active;
  hardware ethernet aa:00:00:00:00:03;
}
lease 10.1.0.14 {
  ends epoch 1767272400; # 2026/01/01 13:00:00
  binding state active;
  hardware ethernet aa:00:00:00:00:04;
}
lease 10.1.0.11 {
  ends 4 2026/01/01 13:00:00;
  binding state free;
  hardware ethernet aa:00:00:00:00:01;
}
`
	ts, err := Leases([]byte(file), now, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, tg := range ts {
		got = append(got, tg.Address+"/"+tg.MAC)
	}
	// .11 was freed by its later block, .12 is free and expired.
	if want := "10.1.0.13/aa:00:00:00:00:03 10.1.0.14/aa:00:00:00:00:04"; strings.Join(got, " ") != want {
		t.Errorf("leases = %v, want %s", got, want)
	}
	for _, bad := range []string{"lease 10.1.0.1 {\n ends 4 2026/01/01 13:00:00;\n", "lease x {\n}\n", "lease 10.1.0.1 {\n ends someday;\n}\n"} {
		if _, err := Leases([]byte(bad), now, nil); err == nil {
			t.Errorf("Leases(%q) succeeded", bad)
		}
	}
}
