package phonehome

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// A routing table as the kernel writes it: two default routes through the
// leaves on two uplinks (an ECMP pair), a repeat, a default route through a
// global address, the local table's routes.
const ipv6Routes = `00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe80000000000000020c29fffe000001 00000400 00000001 00000000 00000003 eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe80000000000000020c29fffe000002 00000400 00000001 00000000 00000003 eth1
00000000000000000000000000000000 00 00000000000000000000000000000000 00 fe80000000000000020c29fffe000001 00000400 00000001 00000000 00000003 eth0
00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db8000000000000000000000001 00000400 00000001 00000000 00000003 eth2
fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001 eth0
00000000000000000000000000000001 80 00000000000000000000000000000000 00 00000000000000000000000000000000 00000000 00000002 00000000 80200001 lo
garbage
`

func TestRouters(t *testing.T) {
	var got []string
	for _, a := range Routers(strings.NewReader(ipv6Routes)) {
		got = append(got, a.String())
	}
	want := []string{"fe80::20c:29ff:fe00:1%eth0", "fe80::20c:29ff:fe00:2%eth1"}
	if !slices.Equal(got, want) {
		t.Fatalf("routers %v, want %v", got, want)
	}
}

func TestEndpoints(t *testing.T) {
	routes := filepath.Join(t.TempDir(), "ipv6_route")
	if err := os.WriteFile(routes, []byte(ipv6Routes), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		relay  int
		routes string
		want   []string
	}{
		{name: "no relay", routes: routes, want: []string{"central.example:8443"}},
		{name: "both leaves' relays first, central last", relay: 4443, routes: routes,
			want: []string{"[fe80::20c:29ff:fe00:1%eth0]:4443", "[fe80::20c:29ff:fe00:2%eth1]:4443", "central.example:8443"}},
		{name: "no routing table", relay: 4443, routes: filepath.Join(t.TempDir(), "none"), want: []string{"central.example:8443"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &File{Centrals: []string{"central.example:8443"}, RelayPort: tc.relay}
			if got := f.Endpoints(tc.routes); !slices.Equal(got, tc.want) {
				t.Fatalf("endpoints %v, want %v", got, tc.want)
			}
			wantName := ""
			if tc.relay != 0 {
				wantName = "central.example"
			}
			if got := f.TLS().ServerName; got != wantName {
				t.Fatalf("TLS server name %q, want %q", got, wantName)
			}
		})
	}
}

func FuzzRouters(f *testing.F) {
	f.Add(ipv6Routes)
	f.Add("00000000000000000000000000000000 00 x 00 fe80000000000000020c29fffe000001 0 0 0 0 " + strings.Repeat("e", 40))
	f.Fuzz(func(t *testing.T, s string) {
		for _, a := range Routers(strings.NewReader(s)) {
			if !a.IsLinkLocalUnicast() || a.Zone() == "" || len(a.Zone()) > 15 {
				t.Fatalf("router %v from %q", a, s)
			}
		}
	})
}
