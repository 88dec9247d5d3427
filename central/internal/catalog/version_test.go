package catalog

import "testing"

func TestParseSemverAndOrder(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"12.0.0", true}, {"v12.1", true}, {"12", true}, {"1.2.3-rc1", true}, {"1.2.3+build", true},
		{"", false}, {"a.b.c", false}, {"1.2.3.4", false}, {"01.2.3", false}, {"1..3", false},
	}
	for _, tt := range tests {
		if _, ok := parseSemver(tt.in); ok != tt.ok {
			t.Errorf("parseSemver(%q) ok = %v, want %v", tt.in, ok, tt.ok)
		}
	}
	ordered := []string{"1.0.0-alpha", "1.0.0-beta", "1.0.0", "1.0.1", "1.2.0", "2.0.0", "10.0.0"}
	for i := 1; i < len(ordered); i++ {
		a, _ := parseSemver(ordered[i-1])
		b, _ := parseSemver(ordered[i])
		if !a.less(b) || b.less(a) {
			t.Errorf("%s < %s does not hold", ordered[i-1], ordered[i])
		}
	}
}

func FuzzParseSemver(f *testing.F) {
	for _, s := range []string{"12.0.0", "v1.2.3-rc.1+b", "0.0.0", "99999999999999999999.1.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, ok := parseSemver(s)
		if !ok {
			return
		}
		if v.less(v) {
			t.Fatalf("%q less than itself", s)
		}
	})
}

func TestPreReleaseOrder(t *testing.T) {
	// The precedence example of semver.org, §11, lowest first.
	ordered := []string{"1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-rc.1", "1.0.0"}
	for i := range ordered {
		for j := range ordered {
			a, _ := parseSemver(ordered[i])
			b, _ := parseSemver(ordered[j])
			if got := a.less(b); got != (i < j) {
				t.Errorf("%s < %s = %v, want %v", ordered[i], ordered[j], got, i < j)
			}
		}
	}
}

func TestVersionAccepts(t *testing.T) {
	tests := []struct {
		constraint, version string
		want                bool
	}{
		{"", "12.0.0", true},
		{"*", "12.0.0", true},
		{" * ", "anything", true},
		{">= 12.0", "12.0.0", true},
		{">= 12.0", "11.9.9", false},
		{">=12", "12.0.1", true},
		{"> 12.0.0", "12.0.0", false},
		{"> 12.0.0", "12.0.1", true},
		{"< 13", "12.99.0", true},
		{"< 13", "13.0.0", false},
		{"< 13", "13.0.0-rc.1", true},
		{"<= 12.1", "12.1.0", true},
		{"<= 12.1", "12.1.1", false},
		{"!= 12.1.0", "12.1.0", false},
		{"!= 12.1.0", "12.1.1", true},
		{"12.1.0", "12.1.0", true},
		{"= 12.1", "v12.1.0", true},
		{"12.1.0", "12.1.0+build.7", true},
		{"12.1.0", "12.1.1", false},
		{">= 12", "not a version", false},
		{">= twelve", "12.0.0", false},
		{"~> 12", "12.0.0", false},
	}
	for _, tt := range tests {
		if got := VersionAccepts(tt.constraint, tt.version); got != tt.want {
			t.Errorf("VersionAccepts(%q, %q) = %v, want %v", tt.constraint, tt.version, got, tt.want)
		}
	}
}
