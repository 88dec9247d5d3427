package auth

import (
	"strings"
	"testing"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// TestQuoteClipsAndRedacts: the one helper for echoed values.
func TestQuoteClipsAndRedacts(t *testing.T) {
	for _, tt := range []struct{ name, in, want string }{
		{"short", "p1", `"p1"`},
		{"nul", "a\x00b", `"a\x00b"`},
		{"secret", "x mft_" + strings.Repeat("A", 43), `"x mft_[redacted]"`},
		{"long", strings.Repeat("y", 1<<20), `"` + strings.Repeat("y", MaxEcho) + `…(1048576 bytes)"`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := Quote(tt.in); got != tt.want {
				t.Fatalf("Quote = %s, want %s", got, tt.want)
			}
		})
	}
}

// TestCheckInput: each generic rule, with the field path it reports.
func TestCheckInput(t *testing.T) {
	many := make([]string, 65)
	for i := range many {
		many[i] = "10.0.0.0/8"
	}
	for _, tt := range []struct {
		name  string
		req   proto.Message
		field string
	}{
		{"ok", &apiv1.PartitionServiceGetRequest{Id: "p1"}, ""},
		{"nul in id", &apiv1.PartitionServiceGetRequest{Id: "a\x00b"}, "id"},
		{"invalid utf-8", &apiv1.PartitionServiceGetRequest{Id: "a\xffb"}, "id"},
		{"long", &apiv1.PartitionServiceGetRequest{Id: strings.Repeat("x", MaxStringBytes+1)}, "id"},
		{"label value", &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Labels: map[string]string{"k": "\x00"}}}, `tenant.labels["k"]`},
		{"list element", &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{Prefixes: []string{"a", "b", "c", "\x00"}}}, "network.prefixes[3]"},
		{"list cap", &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{Prefixes: many}}, "network.prefixes"},
		{"enum", &apiv1.TokenServiceCreateRequest{AdminRole: 99}, "admin_role"},
		{"enum map value", &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{"p": 99}}, `project_roles["p"]`},
		{"enum list cap", &apiv1.Image{Features: make([]apiv1.ImageFeature, 100)}, "features"},
		{"duration", &apiv1.TokenServiceCreateRequest{ExpiresIn: &durationpb.Duration{Seconds: 3600, Nanos: -5}}, "expires_in"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := CheckInput(tt.req)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("unexpected %v", err)
				}
				return
			}
			var fields []string
			for _, d := range status.Convert(err).Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, v := range br.GetFieldViolations() {
						fields = append(fields, v.GetField())
					}
				}
			}
			if len(fields) == 0 || fields[0] != tt.field {
				t.Fatalf("violations %v (%v), want %s", fields, err, tt.field)
			}
		})
	}
}
