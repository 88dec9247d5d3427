package cli

import (
	"strings"
	"testing"
)

func TestChildPrefixLengths(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		prefixes []string
		lengths  []string
		v4, v6   uint32
		wantErr  string
	}{
		{name: "spec example", prefixes: []string{"10.128.0.0/14", "fd00:10::/48"}, lengths: []string{"22", "64"}, v4: 22, v6: 64},
		{name: "ipv6 first", prefixes: []string{"fd00:10::/48", "10.128.0.0/14"}, lengths: []string{"64", "22"}, v4: 22, v6: 64},
		{name: "family order from first appearance", prefixes: []string{"10.0.0.0/16", "10.1.0.0/16", "fd00::/48"}, lengths: []string{"24", "64"}, v4: 24, v6: 64},
		{name: "explicit", prefixes: []string{"10.128.0.0/14", "fd00:10::/48"}, lengths: []string{"ipv6=56", "ipv4=24"}, v4: 24, v6: 56},
		{name: "explicit upper case", prefixes: []string{"fd00:10::/48"}, lengths: []string{"IPv6=64"}, v6: 64},
		{name: "positional fills what explicit left", prefixes: []string{"10.128.0.0/14", "fd00:10::/48"}, lengths: []string{"ipv4=22", "64"}, v4: 22, v6: 64},
		{name: "only one family given", prefixes: []string{"10.128.0.0/14", "fd00:10::/48"}, lengths: []string{"22"}, v4: 22},
		{name: "none", prefixes: []string{"10.128.0.0/14"}},
		{name: "equal to prefix", prefixes: []string{"10.0.0.0/24"}, lengths: []string{"24"}, v4: 24},
		{name: "too many", prefixes: []string{"10.128.0.0/14"}, lengths: []string{"22", "64"}, wantErr: "2 values but only 1 address families left"},
		{name: "twice", prefixes: []string{"10.128.0.0/14"}, lengths: []string{"ipv4=22", "ipv4=24"}, wantErr: "ipv4 given twice"},
		{name: "positional after explicit of the only family", prefixes: []string{"10.128.0.0/14"}, lengths: []string{"22", "ipv4=24"}, wantErr: "1 values but only 0 address families left"},
		{name: "family without prefix", prefixes: []string{"10.128.0.0/14"}, lengths: []string{"ipv6=64"}, wantErr: "no ipv6 --prefix given"},
		{name: "unknown family", prefixes: []string{"10.128.0.0/14"}, lengths: []string{"ipx=22"}, wantErr: "unknown address family \"ipx\""},
		{name: "not a number", prefixes: []string{"10.128.0.0/14"}, lengths: []string{"big"}, wantErr: "want a number from 1 to 32 for ipv4"},
		{name: "ipv4 too long", prefixes: []string{"10.128.0.0/14"}, lengths: []string{"33"}, wantErr: "from 1 to 32"},
		{name: "ipv6 too long", prefixes: []string{"fd00::/48"}, lengths: []string{"129"}, wantErr: "from 1 to 128"},
		{name: "shorter than prefix", prefixes: []string{"10.128.0.0/14"}, lengths: []string{"12"}, wantErr: "/12 does not fit into a /14 ipv4 prefix"},
		{name: "shorter than longest prefix of family", prefixes: []string{"10.0.0.0/8", "192.168.0.0/24"}, lengths: []string{"16"}, wantErr: "does not fit into a /24"},
		{name: "bad prefix", prefixes: []string{"10.128.0.0"}, lengths: []string{"22"}, wantErr: "--prefix \"10.128.0.0\""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v4, v6, err := childPrefixLengths(tc.prefixes, tc.lengths)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if v4 != tc.v4 || v6 != tc.v6 {
				t.Errorf("got ipv4=%d ipv6=%d, want ipv4=%d ipv6=%d", v4, v6, tc.v4, tc.v6)
			}
		})
	}
}
