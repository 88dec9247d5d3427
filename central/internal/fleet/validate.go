package fleet

import (
	"fmt"
	"net/netip"
	"regexp"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/metalfleet/metalfleet/central/internal/field"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Validation of what an agent sends on its stream: hello and report are
// refused as malformed (InvalidArgument naming every bad field) before
// anything of them is stored.

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

func validateHello(h *agentv1.Hello) error {
	var f field.Violations
	if !KnownKind(h.GetKind()) {
		f.Add("hello.kind", "unknown agent kind %d", h.GetKind())
	}
	if !ValidIdentity(h.GetIdentity()) {
		f.Add("hello.identity", "must be 1-128 characters of [A-Za-z0-9._:-]")
	}
	switch {
	case h.GetCredential().GetToken() != "":
	case h.GetCredential().GetBootToken() != "":
		if h.GetKind() != agentv1.Kind_KIND_INSTALLER {
			f.Add("hello.credential.boot_token", "only installers may use boot tokens")
		}
	default:
		f.Add("hello.credential", "required")
	}
	validateFacts(&f, "hello.facts", h.GetFacts())
	// An installer names its NICs (a boot token is bound to one of them);
	// the full machine facts come with its registration report.
	if n := len(h.GetFacts().GetMachine().GetNics()); n > maxHelloNICs {
		f.Add("hello.facts.machine.nics", "at most %d", maxHelloNICs)
	}
	return f.Err("malformed hello")
}

func validateFacts(f *field.Violations, path string, facts *agentv1.Facts) {
	if facts == nil {
		return
	}
	if len(facts.GetAgentVersion()) > 64 {
		f.Add(path+".agent_version", "at most 64 characters")
	}
	if len(facts.GetHostname()) > 253 {
		f.Add(path+".hostname", "at most 253 characters")
	}
	if len(facts.GetAddresses()) > maxAddresses {
		f.Add(path+".addresses", "at most %d", maxAddresses)
	}
	for i, a := range facts.GetAddresses() {
		if _, err := netip.ParseAddr(a); err != nil {
			f.Add(fmt.Sprintf("%s.addresses[%d]", path, i), "not an IP address")
		}
	}
	if len(facts.GetLabels()) > maxLabels {
		f.Add(path+".labels", "at most %d", maxLabels)
	}
	validateText(f, path, protoreflect.ValueOfMessage(facts.ProtoReflect()))
	for k, v := range facts.GetLabels() {
		if k == "" || len(k) > maxLabelKey || len(v) > maxLabelValue {
			f.Add(path+".labels", "keys 1-%d, values at most %d characters", maxLabelKey, maxLabelValue)
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
func validateText(f *field.Violations, path string, v protoreflect.Value) {
	switch x := v.Interface().(type) {
	case string:
		if strings.IndexByte(x, 0) >= 0 {
			f.Add(path, "contains a NUL byte")
		}
	case protoreflect.Message:
		x.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
			name := path + "." + string(fd.Name())
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
	var f field.Violations
	if r.GetAppliedRevision() > sent {
		f.Add("report.applied_revision", "%d is newer than the newest document sent (%d)", r.GetAppliedRevision(), sent)
	}
	if _, ok := agentv1.Health_name[int32(r.GetHealth())]; !ok {
		f.Add("report.health", "unknown health %d", r.GetHealth())
	}
	if len(r.GetMessage()) > maxMessage {
		f.Add("report.message", "at most %d characters", maxMessage)
	}
	validateFacts(&f, "report.facts", r.GetFacts())
	if len(r.GetEvents()) > maxEvents {
		f.Add("report.events", "at most %d per report", maxEvents)
	}
	if (r.GetSeq() != 0 || r.GetOutbox() != "") && !outboxRE.MatchString(r.GetOutbox()) {
		f.Add("report.outbox", "1-64 characters of [A-Za-z0-9_-], required with seq")
	}
	validateText(&f, "report.message", protoreflect.ValueOfString(r.GetMessage()))
	for i, e := range r.GetEvents() {
		validateText(&f, fmt.Sprintf("report.events[%d]", i), protoreflect.ValueOfMessage(e.ProtoReflect()))
		if e.GetType() == "" || len(e.GetType()) > maxEventType {
			f.Add(fmt.Sprintf("report.events[%d].type", i), "1-%d characters", maxEventType)
		}
		if len(e.GetMessage()) > maxEventMessage {
			f.Add(fmt.Sprintf("report.events[%d].message", i), "at most %d characters", maxEventMessage)
		}
	}
	return f.Err("malformed report")
}
