package service

import (
	"testing"
)

func TestViolationsPrefix(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"10.0.0.0/8", true}, {"fd00::/48", true}, {"10.0.0.1/8", false}, {"10.0.0.0", false},
		{"fe80::/64%eth0", false}, {"::ffff:10.0.0.0/104", false}, {"", false},
	}
	for _, tt := range tests {
		var v violations
		_, ok := v.prefix("p", tt.in)
		if ok != tt.ok || (v.err() == nil) != tt.ok {
			t.Errorf("prefix(%q) ok = %v, err = %v; want ok %v", tt.in, ok, v.err(), tt.ok)
		}
	}
}

func FuzzValidatePrefix(f *testing.F) {
	for _, s := range []string{"10.0.0.0/8", "fd00::/48", "1.2.3.4/33", "::/0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var v violations
		p, ok := v.prefix("p", s)
		if ok && (p.Masked() != p || !p.IsValid()) {
			t.Fatalf("accepted non-canonical prefix %q", s)
		}
		if ok != (v.err() == nil) {
			t.Fatalf("ok=%v but err=%v", ok, v.err())
		}
	})
}
