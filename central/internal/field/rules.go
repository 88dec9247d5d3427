package field

import (
	"strconv"
	"strings"
)

// The rules every object of the people API shares: client-chosen ids, free
// text, labels and UUIDs. They live here, next to the violations they
// record, because both the service's request validation and the domain
// packages that define what a valid object is (catalog) check them, and an
// id must mean the same in both.

// ID records field as bad unless val is a client-chosen id: 1-63
// lower-case letters, digits, '.', '_' or '-', starting and ending with a
// letter or digit. DNS-label-ish, so ids are safe in URLs, hostnames and
// shell commands.
func (v *Violations) ID(field, val string) {
	switch {
	case val == "":
		v.Add(field, "required")
	case !validID(val):
		v.Add(field, "must be 1-63 lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit")
	}
}

// OptionalID is ID for a field that may be empty.
func (v *Violations) OptionalID(field, val string) {
	if val != "" {
		v.ID(field, val)
	}
}

// Text records field as bad when val is longer than maxLen bytes or holds
// a NUL byte.
func (v *Violations) Text(field, val string, maxLen int) {
	if len(val) > maxLen {
		v.Add(field, "longer than %d bytes", maxLen)
	}
	if strings.ContainsAny(val, "\x00") {
		v.Add(field, "contains NUL")
	}
}

// Labels records field as bad when it holds more than 64 labels, and
// field["key"] for each key that is empty or longer than 63 bytes and each
// value longer than 255 bytes.
func (v *Violations) Labels(field string, m map[string]string) {
	if len(m) > 64 {
		v.Add(field, "more than 64 labels")
	}
	for k, val := range m {
		f := field + "[" + v.quote(k) + "]"
		if k == "" || len(k) > 63 {
			v.Add(f, "label keys must be 1-63 bytes")
		}
		if len(val) > 255 {
			v.Add(f, "label values must be at most 255 bytes")
		}
	}
}

// UUID records field as bad unless val has the shape of a UUID.
func (v *Violations) UUID(field, val string) {
	if len(val) != 36 || strings.Count(val, "-") != 4 {
		v.Add(field, "must be a UUID")
	}
}

// Index is the path of element i of the list field: field[i].
func Index(field string, i int) string { return field + "[" + strconv.Itoa(i) + "]" }

func (v *Violations) quote(s string) string {
	if v.Quote != nil {
		return v.Quote(s)
	}
	return strconv.Quote(s)
}

// validID is the id rule of ID, written out rather than as a regular
// expression so that it needs no package state.
func validID(s string) bool {
	if len(s) == 0 || len(s) > 63 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'a' && c <= 'z', c >= '0' && c <= '9':
		case (c == '.' || c == '_' || c == '-') && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}
