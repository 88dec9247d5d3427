package cli

import (
	"errors"
	"fmt"
	"math/big"
	"path"
	"strconv"
	"strings"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// byteUnit is a unit suffix for byte sizes.
type byteUnit struct {
	name string
	size uint64
}

// byteUnits lists decimal and binary units; a function rather than a
// package variable so nothing global is mutable.
func byteUnits() []byteUnit {
	return []byteUnit{
		{"B", 1},
		{"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"PB", 1e15},
		{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"PiB", 1 << 50},
	}
}

// parseBytes parses "1GiB", "1.5TB", "512" (bytes). Units are matched
// case-insensitively; KB and KiB stay distinct.
func parseBytes(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return (r < '0' || r > '9') && r != '.' })
	num, unit := s, ""
	if i >= 0 {
		num, unit = s[:i], strings.TrimSpace(s[i:])
	}
	if num == "" {
		return 0, fmt.Errorf("%q: want a number with an optional unit, e.g. 64GiB", s)
	}
	mult := uint64(0)
	if unit == "" {
		mult = 1
	}
	for _, u := range byteUnits() {
		if strings.EqualFold(unit, u.name) {
			mult = u.size
		}
	}
	if mult == 0 {
		return 0, fmt.Errorf("%q: unknown unit %q, want B, KB, MB, GB, TB, PB, KiB, MiB, GiB, TiB or PiB", s, unit)
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("%q: %q is not a number", s, num)
	}
	r.Mul(r, new(big.Rat).SetUint64(mult))
	if !r.IsInt() {
		return 0, fmt.Errorf("%q is not a whole number of bytes", s)
	}
	if !r.Num().IsUint64() {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return r.Num().Uint64(), nil
}

// formatBytes picks the largest unit that represents n exactly, so what is
// printed parses back to the same value.
func formatBytes(n uint64) string {
	best, q := "B", n
	for _, u := range byteUnits() {
		if u.size > 1 && n%u.size == 0 && n/u.size < q {
			best, q = u.name, n/u.size
		}
	}
	return strconv.FormatUint(q, 10) + best
}

func parseCount(s string) (uint64, error) {
	s = strings.TrimSpace(s)
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a whole number", s)
	}
	return n, nil
}

// parseRange parses "MIN-MAX" or a single value N meaning MIN = MAX = N.
func parseRange(s string, parse func(string) (uint64, error)) (lo, hi uint64, err error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return 0, 0, errors.New("empty value, want MIN-MAX or N")
	}
	a, b, isRange := strings.Cut(s, "-")
	if !isRange {
		b = a
	}
	if lo, err = parse(a); err != nil {
		return 0, 0, err
	}
	if hi, err = parse(b); err != nil {
		return 0, 0, err
	}
	if lo > hi {
		return 0, 0, fmt.Errorf("%q: minimum is greater than maximum", s)
	}
	return lo, hi, nil
}

func formatRange(lo, hi uint64, format func(uint64) string) string {
	if lo == hi {
		return format(lo)
	}
	return format(lo) + "-" + format(hi)
}

// parseGPU parses COUNT[:MODEL], COUNT being a range like the others and
// MODEL a path.Match glob as the server matches it.
func parseGPU(s string) (*apiv1.SizeConstraint, error) {
	count, model, _ := strings.Cut(s, ":")
	lo, hi, err := parseRange(count, parseCount)
	if err != nil {
		return nil, err
	}
	if _, err := path.Match(model, ""); err != nil {
		return nil, fmt.Errorf("model %q: %w", model, err)
	}
	return &apiv1.SizeConstraint{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU, Min: lo, Max: hi, Identifier: model}, nil
}

// sizeConstraints builds the constraints of size create from its flags;
// empty flags add no constraint.
func sizeConstraints(cores, memory, storage string, gpus []string) ([]*apiv1.SizeConstraint, error) {
	var out []*apiv1.SizeConstraint
	for _, f := range []struct {
		flag, value string
		typ         apiv1.SizeConstraintType
		parse       func(string) (uint64, error)
	}{
		{"--cores", cores, apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, parseCount},
		{"--memory", memory, apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY, parseBytes},
		{"--storage", storage, apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_STORAGE, parseBytes},
	} {
		if f.value == "" {
			continue
		}
		lo, hi, err := parseRange(f.value, f.parse)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.flag, err)
		}
		out = append(out, &apiv1.SizeConstraint{Type: f.typ, Min: lo, Max: hi})
	}
	for _, g := range gpus {
		c, err := parseGPU(g)
		if err != nil {
			return nil, fmt.Errorf("--gpus %q: %w", g, err)
		}
		out = append(out, c)
	}
	return out, nil
}

// formatConstraint renders the constraints of one type for a table cell.
func formatConstraint(cs []*apiv1.SizeConstraint, typ apiv1.SizeConstraintType) string {
	var parts []string
	for _, c := range cs {
		if c.GetType() != typ {
			continue
		}
		switch typ {
		case apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY, apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_STORAGE:
			parts = append(parts, formatRange(c.GetMin(), c.GetMax(), formatBytes))
		case apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU:
			s := formatRange(c.GetMin(), c.GetMax(), func(n uint64) string { return strconv.FormatUint(n, 10) })
			if c.GetIdentifier() != "" {
				s += ":" + c.GetIdentifier()
			}
			parts = append(parts, s)
		default:
			parts = append(parts, formatRange(c.GetMin(), c.GetMax(), func(n uint64) string { return strconv.FormatUint(n, 10) }))
		}
	}
	return strings.Join(parts, ",")
}
