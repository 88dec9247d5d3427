package catalog

import (
	"strconv"
	"strings"
)

// semver is major.minor.patch with an optional pre-release, which sorts first.
type semver struct {
	major, minor, patch uint64
	pre                 string
}

func parseSemver(s string) (semver, bool) {
	s = strings.TrimPrefix(s, "v")
	// Build metadata goes first: it may contain '-' and is not a pre-release.
	s, _, _ = strings.Cut(s, "+")
	core, pre, _ := strings.Cut(s, "-")
	parts := strings.Split(core, ".")
	if len(parts) < 1 || len(parts) > 3 {
		return semver{}, false
	}
	var n [3]uint64
	for i, p := range parts {
		v, err := strconv.ParseUint(p, 10, 64)
		if err != nil || (len(p) > 1 && p[0] == '0') {
			return semver{}, false
		}
		n[i] = v
	}
	return semver{n[0], n[1], n[2], pre}, true
}

func (a semver) less(b semver) bool {
	if a.major != b.major {
		return a.major < b.major
	}
	if a.minor != b.minor {
		return a.minor < b.minor
	}
	if a.patch != b.patch {
		return a.patch < b.patch
	}
	switch {
	case a.pre == b.pre:
		return false
	case a.pre == "":
		return false
	case b.pre == "":
		return true
	}
	return preLess(a.pre, b.pre)
}

// preLess orders pre-releases as semver does: identifier by identifier,
// numeric ones as numbers and below alphanumeric ones, a prefix first.
func preLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] == bs[i] {
			continue
		}
		an, aErr := strconv.ParseUint(as[i], 10, 64)
		bn, bErr := strconv.ParseUint(bs[i], 10, 64)
		switch {
		case aErr == nil && bErr == nil:
			return an < bn
		case aErr == nil || bErr == nil:
			return aErr == nil
		}
		return as[i] < bs[i]
	}
	return len(as) < len(bs)
}

// VersionAccepts evaluates a constraint such as ">= 12.0", "< 13", "12.1.0"
// or "*" against a semantic version.
func VersionAccepts(constraint, version string) bool {
	c := strings.TrimSpace(constraint)
	if c == "" || c == "*" {
		return true
	}
	op := "="
	for _, o := range []string{">=", "<=", "!=", ">", "<", "="} {
		if rest, ok := strings.CutPrefix(c, o); ok {
			op, c = o, strings.TrimSpace(rest)
			break
		}
	}
	want, ok1 := parseSemver(c)
	have, ok2 := parseSemver(version)
	if !ok1 || !ok2 {
		return false
	}
	switch op {
	case ">=":
		return !have.less(want)
	case "<=":
		return !want.less(have)
	case ">":
		return want.less(have)
	case "<":
		return have.less(want)
	case "!=":
		return have.less(want) || want.less(have)
	}
	return !have.less(want) && !want.less(have)
}
