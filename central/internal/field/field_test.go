package field

import (
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestViolations(t *testing.T) {
	type add struct{ field, format, arg string }
	for _, tc := range []struct {
		name      string
		v         Violations
		what      string
		adds      []add
		wantMsg   string // "" for a nil error
		wantCount int
	}{
		{name: "none is nil"},
		{
			name: "one", adds: []add{{"hello.identity", "must be %s", "short"}},
			wantMsg: "hello.identity: must be short", wantCount: 1,
		},
		{
			name: "several, with what", what: "malformed report",
			adds:    []add{{"report.health", "unknown health %s", "7"}, {"report.outbox", "required%s", ""}, {"report.message", "too long%s", ""}},
			wantMsg: "malformed report: report.health: unknown health 7 (and 2 more)", wantCount: 3,
		},
		{
			name: "clipped", v: Violations{Clip: func(s string) string { return strings.ToUpper(s) }},
			adds:    []add{{"labels[\"k\"]", "bad %s", "value"}},
			wantMsg: "LABELS[\"K\"]: BAD VALUE", wantCount: 1,
		},
		{
			name: "bounded", v: Violations{Max: 2},
			adds:    []add{{"a", "x%s", ""}, {"b", "y%s", ""}, {"c", "z%s", ""}},
			wantMsg: "a: x (and 1 more)", wantCount: 2,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := tc.v
			for _, a := range tc.adds {
				v.Add(a.field, a.format, a.arg)
			}
			err := v.Err(tc.what)
			if tc.wantMsg == "" {
				if err != nil {
					t.Fatalf("err = %v, want nil", err)
				}
				return
			}
			st, ok := status.FromError(err)
			if !ok || st.Code() != codes.InvalidArgument || st.Message() != tc.wantMsg {
				t.Fatalf("err = %v, want InvalidArgument %q", err, tc.wantMsg)
			}
			var got int
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					got += len(br.GetFieldViolations())
				}
			}
			if got != tc.wantCount || len(v.List()) != tc.wantCount {
				t.Errorf("detail holds %d violations, List %d, want %d", got, len(v.List()), tc.wantCount)
			}
		})
	}
}
