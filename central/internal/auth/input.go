package auth

import (
	"strconv"
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/metalfleet/metalfleet/central/internal/field"
)

// The generic input rules every people API request passes before its
// handler runs (docs/auth.md, "Input rules"). Handlers validate meaning;
// these rules keep what no handler expects (NUL bytes, invalid UTF-8,
// megabyte strings, unknown enum numbers, huge lists) away from SQL, logs
// and the O(n²) checks some handlers do.
const (
	// MaxStringBytes bounds every string field; fields with a meaning
	// (ids, names, descriptions) have tighter limits in their handlers.
	MaxStringBytes = 64 << 10
	// MaxElements bounds every repeated field and map unless listCaps
	// names a tighter bound.
	MaxElements = 1000
	// MaxEcho is how many bytes of a request value a status message or a
	// log line repeats: enough to recognise it, too few to flood a log
	// or to carry a whole secret typed into the wrong field.
	MaxEcho = 64
	// maxViolations bounds one answer: a 10,000-element list of bad
	// values is reported by its first few.
	maxViolations = 20
)

// listCaps are the repeated fields and maps whose meaning allows far fewer
// elements than MaxElements (compiled-in table, keyed by proto field name).
var listCaps = map[protoreflect.FullName]int{
	// Each prefix is checked against every other one.
	"metalfleet.api.v1.Network.prefixes": 64,
	// ipv4 and ipv6.
	"metalfleet.api.v1.NetworkServiceAllocateRequest.address_families": 2,
	"metalfleet.api.v1.TokenServiceCreateRequest.project_roles":        256,
	"metalfleet.api.v1.TokenServiceCreateRequest.tenant_roles":         256,
	"metalfleet.api.v1.MachineServiceCreateRequest.networks":           64,
	"metalfleet.api.v1.MachineServiceCreateRequest.ssh_public_keys":    64,
	"metalfleet.api.v1.Partition.dns_servers":                          16,
	"metalfleet.api.v1.Partition.ntp_servers":                          16,
	"metalfleet.api.v1.Size.constraints":                               64,
}

// CheckInput applies the generic input rules to a request: every string
// is valid UTF-8 without NUL bytes and at most MaxStringBytes long, every
// enum holds a declared value, every list and map is bounded, and every
// Duration and Timestamp is well-formed. The error is InvalidArgument with
// a BadRequest naming each bad field by its path (network.prefixes[3],
// labels["k"]); nil when the request passes.
func CheckInput(m proto.Message) error {
	if m == nil {
		return nil
	}
	v := inputViolations{field.Violations{Clip: ClipEcho, Max: maxViolations}}
	v.message(m.ProtoReflect(), "")
	return v.Err("")
}

// inputViolations walks a request with field.Violations; what it records
// echoes request values, so it is clipped, and bounded.
type inputViolations struct{ field.Violations }

// ClipEcho makes a field path or description fit for a status message: the
// clip every field violation of the people API gets.
func ClipEcho(s string) string { return Clip(s, 4*MaxEcho) }

func join(path string, name protoreflect.Name) string {
	if path == "" {
		return string(name)
	}
	return path + "." + string(name)
}

func (v *inputViolations) message(m protoreflect.Message, path string) {
	switch m.Descriptor().FullName() {
	case "google.protobuf.Duration":
		v.duration(m, path)
		return
	case "google.protobuf.Timestamp":
		v.timestamp(m, path)
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, val protoreflect.Value) bool {
		f := join(path, fd.Name())
		switch {
		case fd.IsList():
			l := val.List()
			if max := listCap(fd); l.Len() > max {
				v.Add(f, "at most %d elements, got %d", max, l.Len())
				return !v.Full()
			}
			for i := 0; i < l.Len() && !v.Full(); i++ {
				v.value(fd, l.Get(i), f+"["+strconv.Itoa(i)+"]")
			}
		case fd.IsMap():
			mp := val.Map()
			if max := listCap(fd); mp.Len() > max {
				v.Add(f, "at most %d entries, got %d", max, mp.Len())
				return !v.Full()
			}
			mp.Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				kf := f + "[" + k.String() + "]"
				if fd.MapKey().Kind() == protoreflect.StringKind {
					kf = f + "[" + Quote(k.String()) + "]"
					v.str(k.String(), kf)
				}
				v.value(fd.MapValue(), mv, kf)
				return !v.Full()
			})
		default:
			v.value(fd, val, f)
		}
		return !v.Full()
	})
}

// listCap is the bound of a repeated field or map: its entry in listCaps,
// else, for enum lists, the number of the enum's values (a value twice
// means nothing), else MaxElements.
func listCap(fd protoreflect.FieldDescriptor) int {
	if c, ok := listCaps[fd.FullName()]; ok {
		return c
	}
	if fd.IsList() && fd.Kind() == protoreflect.EnumKind {
		return fd.Enum().Values().Len()
	}
	return MaxElements
}

func (v *inputViolations) value(fd protoreflect.FieldDescriptor, val protoreflect.Value, path string) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		v.str(val.String(), path)
	case protoreflect.BytesKind:
		if len(val.Bytes()) > MaxStringBytes {
			v.Add(path, "longer than %d bytes", MaxStringBytes)
		}
	case protoreflect.EnumKind:
		if fd.Enum().Values().ByNumber(val.Enum()) == nil {
			v.Add(path, "unknown value %d of %s", val.Enum(), fd.Enum().Name())
		}
	case protoreflect.MessageKind, protoreflect.GroupKind:
		v.message(val.Message(), path)
	}
}

func (v *inputViolations) str(s, path string) {
	switch {
	case len(s) > MaxStringBytes:
		v.Add(path, "longer than %d bytes", MaxStringBytes)
	case strings.IndexByte(s, 0) >= 0 || !utf8.ValidString(s):
		// PostgreSQL stores neither; the wire decoder turns invalid
		// UTF-8 into NUL bytes, so both read the same.
		v.Add(path, "must be valid UTF-8 without NUL bytes")
	}
}

// Limits of google.protobuf.Duration and Timestamp (their .proto files).
const (
	maxDurationSeconds = 315576000000
	minTimestamp       = -62135596800 // 0001-01-01T00:00:00Z
	maxTimestamp       = 253402300799 // 9999-12-31T23:59:59Z
)

func secondsNanos(m protoreflect.Message) (int64, int32) {
	fs := m.Descriptor().Fields()
	return m.Get(fs.ByName("seconds")).Int(), int32(m.Get(fs.ByName("nanos")).Int())
}

func (v *inputViolations) duration(m protoreflect.Message, path string) {
	s, n := secondsNanos(m)
	switch {
	case s > maxDurationSeconds || s < -maxDurationSeconds:
		v.Add(path, "seconds out of range")
	case n <= -1e9 || n >= 1e9:
		v.Add(path, "nanos must be within ±999999999")
	case (s > 0 && n < 0) || (s < 0 && n > 0):
		v.Add(path, "seconds and nanos must have the same sign")
	}
}

func (v *inputViolations) timestamp(m protoreflect.Message, path string) {
	s, n := secondsNanos(m)
	switch {
	case s < minTimestamp || s > maxTimestamp:
		v.Add(path, "outside years 1-9999")
	case n < 0 || n >= 1e9:
		v.Add(path, "nanos must be within 0-999999999")
	}
}

// Clip cuts s to at most n bytes at a rune boundary, saying how much was
// cut, and hides anything that looks like a Metalfleet secret: the one way
// request values are made fit for status messages and log lines.
func Clip(s string, n int) string {
	s = redact(s)
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}

// Quote is how a request value appears in a status message or log line:
// quoted (NUL bytes and invalid UTF-8 made visible) and clipped to MaxEcho.
func Quote(s string) string { return strconv.Quote(Clip(s, MaxEcho)) }

// redact replaces the body of every Metalfleet secret in s (a prefix and at
// least minSecretBody base64url characters): a token pasted into the wrong
// field must not reach the log.
func redact(s string) string {
	const minSecretBody = 16
	for _, p := range []string{TokenPrefix, AgentTokenPrefix, BootTokenPrefix} {
		from := 0
		for {
			i := strings.Index(s[from:], p)
			if i < 0 {
				break
			}
			start := from + i + len(p)
			end := start
			for end < len(s) && isBase64URL(s[end]) {
				end++
			}
			if end-start >= minSecretBody {
				s = s[:start] + "[redacted]" + s[end:]
				end = start + len("[redacted]")
			}
			from = end
		}
	}
	return s
}

func isBase64URL(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}
