package fleet

import (
	"testing"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// TestParseRef: an agent is named by its id or by kind and identity;
// anything else names none, so that no lookup runs on it.
func TestParseRef(t *testing.T) {
	const id = "0b5a8f4e-3c1d-4f7a-9a2e-6d8c1b2e3f40"
	tests := []struct {
		in   string
		want Ref
		ok   bool
	}{
		{id, Ref{ID: id}, true},
		{"switch/leaf01", Ref{Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf01"}, true},
		{"pixie/p1:pxe-a", Ref{Kind: agentv1.Kind_KIND_PIXIE, Identity: "p1:pxe-a"}, true},
		{"", Ref{}, false},
		{"leaf01", Ref{}, false},
		{"router/leaf01", Ref{}, false},
		{"unspecified/leaf01", Ref{}, false},
		{"switch/", Ref{}, false},
		{"switch/leaf 01", Ref{}, false},
		{"switch/a/b", Ref{}, false},
	}
	for _, tt := range tests {
		got, ok := ParseRef(tt.in)
		if got != tt.want || ok != tt.ok {
			t.Errorf("ParseRef(%q) = %+v, %v; want %+v, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}
