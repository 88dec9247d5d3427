package fleet

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protopath"
	"google.golang.org/protobuf/reflect/protorange"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// FuzzAgentMessage feeds arbitrary bytes, as an agent could send them, through
// decoding and the checks that run before anything is stored: they must
// never panic, and what they accept must be within the documented limits.
func FuzzAgentMessage(f *testing.F) {
	seeds := []*agentv1.SyncRequest{
		{Msg: &agentv1.SyncRequest_Hello{Hello: &agentv1.Hello{Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf01",
			Credential: &agentv1.Credential{Secret: &agentv1.Credential_Token{Token: "mfa_x"}},
			Facts:      &agentv1.Facts{Hostname: "h", Addresses: []string{"10.0.0.1", "fd00::1"}, Labels: map[string]string{"a": "b"}}}}},
		{Msg: &agentv1.SyncRequest_Report{Report: &agentv1.Report{AppliedRevision: 3, Health: agentv1.Health_HEALTH_OK,
			Events: []*agentv1.Event{{Type: "Applied", Message: "ok"}}}}},
		{Msg: &agentv1.SyncRequest_Heartbeat{Heartbeat: &agentv1.Heartbeat{AppliedRevision: 1}}},
	}
	for _, s := range seeds {
		b, err := proto.Marshal(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint64(3))
	}
	f.Fuzz(func(t *testing.T, b []byte, sent uint64) {
		m := &agentv1.SyncRequest{}
		if proto.Unmarshal(b, m) != nil {
			return
		}
		if h := m.GetHello(); h != nil && validateHello(h) == nil {
			if !KnownKind(h.GetKind()) || !ValidIdentity(h.GetIdentity()) || len(h.GetFacts().GetLabels()) > maxLabels {
				t.Fatalf("accepted hello outside the limits: %v", h)
			}
			_ = encodeFacts(h.GetFacts())
		}
		if r := m.GetReport(); r != nil && validateReport(r, sent) == nil {
			if r.GetAppliedRevision() > sent || len(r.GetEvents()) > maxEvents || len(r.GetMessage()) > maxMessage {
				t.Fatalf("accepted report outside the limits: %v", r)
			}
			// PostgreSQL stores no NUL: one accepted would fail in SQL.
			if holdsNUL(r) {
				t.Fatalf("accepted report with a NUL: %v", r)
			}
		}
	})
}

// holdsNUL reports whether any string or map key in m holds a NUL.
func holdsNUL(m proto.Message) bool {
	found := false
	_ = protorange.Range(m.ProtoReflect(), func(v protopath.Values) error {
		last := v.Index(-1)
		if s, ok := last.Value.Interface().(string); ok && strings.IndexByte(s, 0) >= 0 {
			found = true
		}
		if last.Step.Kind() == protopath.MapIndexStep {
			if k, ok := last.Step.MapIndex().Interface().(string); ok && strings.IndexByte(k, 0) >= 0 {
				found = true
			}
		}
		return nil
	})
	return found
}
