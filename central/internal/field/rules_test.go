package field

import (
	"regexp"
	"strings"
	"testing"
)

// idPattern is the id rule as the people API first wrote it; validID must
// agree with it on every input.
const idPattern = `^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$`

func TestRules(t *testing.T) {
	for _, tc := range []struct {
		name  string
		check func(v *Violations)
		want  []string // "field: description" of each violation, in order
	}{
		{"id ok", func(v *Violations) { v.ID("id", "fra-1.a_b") }, nil},
		{"id one char", func(v *Violations) { v.ID("id", "a") }, nil},
		{"id 63", func(v *Violations) { v.ID("id", strings.Repeat("a", 63)) }, nil},
		{"id required", func(v *Violations) { v.ID("x.id", "") }, []string{"x.id: required"}},
		{"id 64", func(v *Violations) { v.ID("id", strings.Repeat("a", 64)) }, []string{"id: must be 1-63 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit"}},
		{"id upper", func(v *Violations) { v.ID("id", "Fra1") }, []string{"id: must be 1-63 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit"}},
		{"id ends in dash", func(v *Violations) { v.ID("id", "fra-") }, []string{"id: must be 1-63 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit"}},
		{"optional id empty", func(v *Violations) { v.OptionalID("id", "") }, nil},
		{"optional id bad", func(v *Violations) { v.OptionalID("id", "-") }, []string{"id: must be 1-63 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit"}},
		{"text ok", func(v *Violations) { v.Text("name", "abc", 3) }, nil},
		{"text long and NUL", func(v *Violations) { v.Text("name", "ab\x00c", 3) }, []string{"name: longer than 3 bytes", "name: contains NUL"}},
		{"labels ok", func(v *Violations) { v.Labels("labels", map[string]string{"k": "v"}) }, nil},
		{"label key empty", func(v *Violations) { v.Labels("labels", map[string]string{"": "v"}) }, []string{`labels[""]: label keys must be 1-63 bytes`}},
		{"label value long", func(v *Violations) { v.Labels("labels", map[string]string{"k": strings.Repeat("v", 256)}) }, []string{`labels["k"]: label values must be at most 255 bytes`}},
		{"label key quoted by Quote", func(v *Violations) {
			v.Quote = func(s string) string { return "<" + s + ">" }
			v.Labels("labels", map[string]string{strings.Repeat("k", 64): ""})
		}, []string{"labels[<" + strings.Repeat("k", 64) + ">]: label keys must be 1-63 bytes"}},
		{"too many labels", func(v *Violations) {
			m := map[string]string{}
			for i := range 65 {
				m[Index("k", i)] = ""
			}
			v.Labels("labels", m)
		}, []string{"labels: more than 64 labels"}},
		{"uuid ok", func(v *Violations) { v.UUID("project_id", "0d4b3f0e-8a61-4c63-9c5f-0f3c8f0b6a11") }, nil},
		{"uuid bad", func(v *Violations) { v.UUID("project_id", "p1") }, []string{"project_id: must be a UUID"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var v Violations
			tc.check(&v)
			var got []string
			for _, f := range v.List() {
				got = append(got, f.GetField()+": "+f.GetDescription())
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Fatalf("violations = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestValidIDIsThePattern(t *testing.T) {
	re := regexp.MustCompile(idPattern)
	for _, s := range []string{"", "a", "0", "-", ".", "_", "a-", "-a", "a.b", "a_b", "a--b", "A", "aé", "a b", "a\n",
		strings.Repeat("a", 63), strings.Repeat("a", 64), "a" + strings.Repeat("-", 61) + "a", "a" + strings.Repeat("-", 62) + "a"} {
		if got, want := validID(s), re.MatchString(s); got != want {
			t.Errorf("validID(%q) = %v, the pattern says %v", s, got, want)
		}
	}
}

func FuzzValidID(f *testing.F) {
	re := regexp.MustCompile(idPattern)
	for _, s := range []string{"fra1", "a", "-a", "a.b_c-d", strings.Repeat("z", 64)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := validID(s), re.MatchString(s); got != want {
			t.Fatalf("validID(%q) = %v, the pattern says %v", s, got, want)
		}
	})
}
