package fleet

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// KindName is the short name of a kind as stored and shown: "switch".
func KindName(k agentv1.Kind) string {
	return strings.ToLower(strings.TrimPrefix(k.String(), "KIND_"))
}

// ParseKind reads a short kind name; false for unknown or unspecified.
func ParseKind(s string) (agentv1.Kind, bool) {
	v, ok := agentv1.Kind_value["KIND_"+strings.ToUpper(s)]
	if !ok || v == 0 {
		return 0, false
	}
	return agentv1.Kind(v), true
}

// KnownKind reports whether k is a kind this central serves.
func KnownKind(k agentv1.Kind) bool {
	_, ok := agentv1.Kind_name[int32(k)]
	return ok && k != agentv1.Kind_KIND_UNSPECIFIED
}

var identityRE = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// ValidIdentity reports whether s may name an agent.
func ValidIdentity(s string) bool { return identityRE.MatchString(s) }

// Limits on what an agent may send; larger is refused as malformed.
const (
	maxLabels       = 64
	maxHelloNICs    = 256
	maxLabelKey     = 63
	maxLabelValue   = 256
	maxAddresses    = 64
	maxEvents       = 64
	maxEventType    = 64
	maxEventMessage = 4096
	maxMessage      = 4096
)

// fieldErrors collects what is wrong with an agent's message.
type fieldErrors []*errdetails.BadRequest_FieldViolation

func (f *fieldErrors) add(field, format string, args ...any) {
	*f = append(*f, &errdetails.BadRequest_FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

func (f fieldErrors) err(what string) error {
	if len(f) == 0 {
		return nil
	}
	st := status.Newf(codes.InvalidArgument, "malformed %s: %s: %s", what, f[0].GetField(), f[0].GetDescription())
	if d, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: f}); err == nil {
		st = d
	}
	return st.Err()
}

func validateHello(h *agentv1.Hello) error {
	var f fieldErrors
	if !KnownKind(h.GetKind()) {
		f.add("hello.kind", "unknown agent kind %d", h.GetKind())
	}
	if !ValidIdentity(h.GetIdentity()) {
		f.add("hello.identity", "must be 1-128 characters of [A-Za-z0-9._:-]")
	}
	switch {
	case h.GetCredential().GetToken() != "":
	case h.GetCredential().GetBootToken() != "":
		if h.GetKind() != agentv1.Kind_KIND_INSTALLER {
			f.add("hello.credential.boot_token", "only installers may use boot tokens")
		}
	default:
		f.add("hello.credential", "required")
	}
	validateFacts(&f, "hello.facts", h.GetFacts())
	// An installer names its NICs (a boot token is bound to one of them);
	// the full machine facts come with its registration report.
	if n := len(h.GetFacts().GetMachine().GetNics()); n > maxHelloNICs {
		f.add("hello.facts.machine.nics", "at most %d", maxHelloNICs)
	}
	return f.err("hello")
}

func validateFacts(f *fieldErrors, field string, facts *agentv1.Facts) {
	if facts == nil {
		return
	}
	if len(facts.GetAgentVersion()) > 64 {
		f.add(field+".agent_version", "at most 64 characters")
	}
	if len(facts.GetHostname()) > 253 {
		f.add(field+".hostname", "at most 253 characters")
	}
	if len(facts.GetAddresses()) > maxAddresses {
		f.add(field+".addresses", "at most %d", maxAddresses)
	}
	for i, a := range facts.GetAddresses() {
		if _, err := netip.ParseAddr(a); err != nil {
			f.add(fmt.Sprintf("%s.addresses[%d]", field, i), "not an IP address")
		}
	}
	if len(facts.GetLabels()) > maxLabels {
		f.add(field+".labels", "at most %d", maxLabels)
	}
	validateText(f, field, protoreflect.ValueOfMessage(facts.ProtoReflect()))
	for k, v := range facts.GetLabels() {
		if k == "" || len(k) > maxLabelKey || len(v) > maxLabelValue {
			f.add(field+".labels", "keys 1-%d, values at most %d characters", maxLabelKey, maxLabelValue)
			break
		}
	}
}

var outboxRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// validateText refuses a NUL in any string an agent sends (v is a string
// or a message, walked with its nested messages, lists and maps). A NUL is
// valid UTF-8 and valid protobuf, but PostgreSQL can store it neither in
// TEXT nor in JSONB, so it is refused here with its field path instead of
// failing in SQL: there it would look like an outage, be retried forever,
// and in the batched observed state hold back every other agent's
// contact. It is refused rather than removed: a fact central silently
// rewrote would no longer be what the agent saw. Invalid UTF-8 needs no
// check: protobuf refuses it in string fields when decoding.
func validateText(f *fieldErrors, field string, v protoreflect.Value) {
	switch x := v.Interface().(type) {
	case string:
		if strings.IndexByte(x, 0) >= 0 {
			f.add(field, "contains a NUL byte")
		}
	case protoreflect.Message:
		x.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			name := field + "." + string(fd.Name())
			switch {
			case fd.IsList():
				for i := range v.List().Len() {
					validateText(f, fmt.Sprintf("%s[%d]", name, i), v.List().Get(i))
				}
			case fd.IsMap():
				v.Map().Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
					key := fmt.Sprintf("%s[%q]", name, k.String())
					validateText(f, key, k.Value())
					validateText(f, key, v)
					return true
				})
			default:
				validateText(f, name, v)
			}
			return true
		})
	}
}

// validateReport checks a report against the newest revision sent.
func validateReport(r *agentv1.Report, sent uint64) error {
	var f fieldErrors
	if r.GetAppliedRevision() > sent {
		f.add("report.applied_revision", "%d is newer than the newest document sent (%d)", r.GetAppliedRevision(), sent)
	}
	if _, ok := agentv1.Health_name[int32(r.GetHealth())]; !ok {
		f.add("report.health", "unknown health %d", r.GetHealth())
	}
	if len(r.GetMessage()) > maxMessage {
		f.add("report.message", "at most %d characters", maxMessage)
	}
	validateFacts(&f, "report.facts", r.GetFacts())
	if len(r.GetEvents()) > maxEvents {
		f.add("report.events", "at most %d per report", maxEvents)
	}
	if (r.GetSeq() != 0 || r.GetOutbox() != "") && !outboxRE.MatchString(r.GetOutbox()) {
		f.add("report.outbox", "1-64 characters of [A-Za-z0-9_-], required with seq")
	}
	validateText(&f, "report.message", protoreflect.ValueOfString(r.GetMessage()))
	for i, e := range r.GetEvents() {
		validateText(&f, fmt.Sprintf("report.events[%d]", i), protoreflect.ValueOfMessage(e.ProtoReflect()))
		if e.GetType() == "" || len(e.GetType()) > maxEventType {
			f.add(fmt.Sprintf("report.events[%d].type", i), "1-%d characters", maxEventType)
		}
		if len(e.GetMessage()) > maxEventMessage {
			f.add(fmt.Sprintf("report.events[%d].message", i), "at most %d characters", maxEventMessage)
		}
	}
	return f.err("report")
}
