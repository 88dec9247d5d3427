package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/prototext"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

type result struct {
	stdout, stderr string
	code           int
}

// runCLI runs metalctl in-process with exactly the given environment.
func runCLI(t *testing.T, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	streams := Streams{
		In:  strings.NewReader(stdin),
		Out: &out,
		Err: &errOut,
		LookupEnv: func(k string) (string, bool) {
			v, ok := env[k]
			return v, ok
		},
		Now: func() time.Time { return testNow },
	}
	code := Run(context.Background(), streams, args)
	return result{stdout: out.String(), stderr: errOut.String(), code: code}
}

// runAt runs metalctl against the fake at addr with a test token.
func runAt(t *testing.T, addr string, args ...string) result {
	t.Helper()
	return runStdin(t, addr, "", args...)
}

func runStdin(t *testing.T, addr, stdin string, args ...string) result {
	t.Helper()
	env := map[string]string{envConfig: filepath.Join(t.TempDir(), "config.yaml")}
	full := append([]string{"--api-url", addr, "--insecure-plaintext", "--api-token", "test-token"}, args...)
	return runCLI(t, env, stdin, full...)
}

func mustSucceed(t *testing.T, r result) {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
}

func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll("testdata", 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it)\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// onlyCall returns the request of the single call to method.
func onlyCall(t *testing.T, f *fake, method string) proto.Message {
	t.Helper()
	var found []proto.Message
	for _, c := range f.recorded() {
		if c.method == method {
			found = append(found, c.req)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want 1 call to %s, got %d (calls: %v)", method, len(found), methods(f))
	}
	return found[0]
}

func methods(f *fake) []string {
	var out []string
	for _, c := range f.recorded() {
		out = append(out, c.method)
	}
	return out
}

func checkRequest(t *testing.T, got, want proto.Message) {
	t.Helper()
	if !proto.Equal(got, want) {
		t.Errorf("request differs\n--- got\n%s\n--- want\n%s", prototext.Format(got), prototext.Format(want))
	}
}

func TestGoldenOutput(t *testing.T) {
	t.Parallel()
	_, addr := startFake(t)
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"partition_list_table", []string{"partition", "list"}},
		{"partition_list_wide", []string{"partition", "list", "-o", "wide"}},
		{"partition_list_yaml", []string{"partition", "list", "-o", "yaml"}},
		{"partition_list_json", []string{"partition", "list", "-o", "json"}},
		{"partition_describe", []string{"partition", "describe", "lab"}},
		{"partition_list_template", []string{"partition", "list", "--template", "{{.id}} in {{.region}}{{range .dns_servers}} dns={{.}}{{end}}"}},
		{"size_list_table", []string{"size", "list"}},
		{"size_list_wide", []string{"size", "list", "-o", "wide"}},
		{"size_list_yaml", []string{"size", "list", "-o", "yaml"}},
		{"size_list_json", []string{"size", "list", "-o", "json"}},
		{"size_list_noheaders", []string{"size", "list", "--no-headers"}},
		{"size_describe_json", []string{"size", "describe", "s1", "-o", "json"}},
		{"sizereservation_list_table", []string{"sizereservation", "list"}},
		{"image_list_table", []string{"image", "list"}},
		{"image_list_wide", []string{"image", "list", "-o", "wide"}},
		{"fsl_list_table", []string{"fsl", "list"}},
		{"fsl_list_yaml", []string{"fsl", "list", "-o", "yaml"}},
		{"tenant_list_table", []string{"tenant", "list"}},
		{"project_list_table", []string{"project", "list"}},
		{"network_list_table", []string{"network", "list"}},
		{"network_list_wide", []string{"network", "list", "-o", "wide"}},
		{"network_list_json", []string{"network", "list", "-o", "json"}},
		{"network_list_yaml", []string{"network", "list", "-o", "yaml"}},
		{"ip_list_table", []string{"ip", "list"}},
		{"ip_list_wide", []string{"ip", "list", "-o", "wide"}},
		{"token_list_table", []string{"token", "list"}},
		{"token_list_wide", []string{"token", "list", "-o", "wide"}},
		{"token_whoami", []string{"token", "whoami"}},
		{"machine_list_table", []string{"machine", "list"}},
		{"machine_list_wide", []string{"machine", "list", "-o", "wide"}},
		{"machine_describe", []string{"machine", "describe", "m2"}},
		{"switch_list_table", []string{"switch", "list"}},
		{"switch_list_wide", []string{"switch", "list", "-o", "wide"}},
		{"switch_describe", []string{"switch", "describe", "leaf01"}},
		{"switch_describe_wide", []string{"switch", "describe", "leaf01", "-o", "wide"}},
		{"switch_connected_machines", []string{"switch", "connected-machines", "leaf01"}},
		{"agent_list_table", []string{"agent", "list"}},
		{"agent_list_wide", []string{"agent", "list", "-o", "wide"}},
		{"agent_list_yaml", []string{"agent", "list", "-o", "yaml"}},
		{"agent_list_json", []string{"agent", "list", "-o", "json"}},
		{"agent_describe", []string{"agent", "describe", "switch/leaf01"}},
		{"agent_describe_table", []string{"agent", "describe", leafAgentID, "-o", "table"}},
		{"agent_describe_wide", []string{"agent", "describe", "bmc/bmc-lab", "-o", "wide"}},
		{"agent_describe_json", []string{"agent", "describe", "switch/leaf01", "-o", "json"}},
		{"audit_list_table", []string{"audit", "list"}},
		{"audit_list_json", []string{"audit", "list", "-o", "json"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			t.Parallel()
			r := runAt(t, addr, tc.args...)
			mustSucceed(t, r)
			checkGolden(t, tc.golden, r.stdout)
		})
	}
}

// TestOutputIsStable guards against protojson's deliberately unstable
// whitespace leaking into the output.
func TestOutputIsStable(t *testing.T) {
	t.Parallel()
	_, addr := startFake(t)
	for _, format := range []string{"json", "yaml"} {
		first := runAt(t, addr, "network", "list", "-o", format)
		for range 5 {
			if again := runAt(t, addr, "network", "list", "-o", format); again.stdout != first.stdout {
				t.Fatalf("-o %s output changed between runs", format)
			}
		}
	}
}

func TestEmptyListFormats(t *testing.T) {
	t.Parallel()
	_, addr := startFake(t)
	// The fake filters projects by tenant, so an unknown tenant lists nothing.
	for format, want := range map[string]string{"json": "[]\n", "yaml": "[]\n"} {
		r := runAt(t, addr, "project", "list", "--tenant", "nobody", "-o", format)
		mustSucceed(t, r)
		if r.stdout != want {
			t.Errorf("-o %s of empty list = %q, want %q", format, r.stdout, want)
		}
	}
}

func TestCreateCommands(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		args   []string
		method string
		want   proto.Message
		golden string
	}{
		{
			name:   "partition",
			args:   []string{"partition", "create", "--id", "lab", "--description", "lab partition"},
			method: "PartitionService/Create",
			want:   &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "lab", Description: "lab partition"}},
			golden: "partition_create",
		},
		{
			name:   "size",
			args:   []string{"size", "create", "--id", "s1", "--cores", "1-64", "--memory", "1GiB-1TiB", "--storage", "1GiB-100TiB"},
			method: "SizeService/Create",
			want: &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: "s1", Constraints: []*apiv1.SizeConstraint{
				{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, Min: 1, Max: 64},
				{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY, Min: 1 << 30, Max: 1 << 40},
				{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_STORAGE, Min: 1 << 30, Max: 100 << 40},
			}}},
			golden: "size_create",
		},
		{
			name:   "size with gpus and decimal units",
			args:   []string{"size", "create", "--id", "g", "--cores", "32", "--memory", "512GB", "--gpus", "2:H100*", "--gpus", "1-4", "--label", "gpu=true", "-o", "wide"},
			method: "SizeService/Create",
			want: &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: "g", Labels: map[string]string{"gpu": "true"}, Constraints: []*apiv1.SizeConstraint{
				{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, Min: 32, Max: 32},
				{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY, Min: 512e9, Max: 512e9},
				{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU, Min: 2, Max: 2, Identifier: "H100*"},
				{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU, Min: 1, Max: 4},
			}}},
			golden: "size_create_gpu_wide",
		},
		{
			name:   "image",
			args:   []string{"image", "create", "--id", "debian-12", "--os", "debian", "--version", "12.0.0", "--url", "https://images.example/debian-12.tar.zst", "--sha256", "abc123", "--classification", "supported", "--feature", "machine", "--expires", "2026-01-02"},
			method: "ImageService/Create",
			want: &apiv1.ImageServiceCreateRequest{Image: &apiv1.Image{
				Id: "debian-12", Os: "debian", Version: "12.0.0", Url: "https://images.example/debian-12.tar.zst", Sha256: "abc123",
				Classification: apiv1.ImageClassification_IMAGE_CLASSIFICATION_SUPPORTED,
				Features:       []apiv1.ImageFeature{apiv1.ImageFeature_IMAGE_FEATURE_MACHINE},
				ExpiresAt:      tsAt(time.Date(2026, 1, 2, 0, 0, 0, 0, time.UTC)),
			}},
			golden: "image_create",
		},
		{
			name:   "tenant",
			args:   []string{"tenant", "create", "--id", "t1"},
			method: "TenantService/Create",
			want:   &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: "t1"}},
			golden: "tenant_create",
		},
		{
			name:   "project prints only the id",
			args:   []string{"project", "create", "--tenant", "t1", "--name", "p1"},
			method: "ProjectService/Create",
			want:   &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: "t1", Name: "p1"}},
			golden: "project_create",
		},
		{
			name:   "project yaml",
			args:   []string{"project", "create", "--tenant", "t1", "--name", "p1", "--description", "shop", "-o", "yaml"},
			method: "ProjectService/Create",
			want:   &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: "t1", Name: "p1", Description: "shop"}},
			golden: "project_create_yaml",
		},
		{
			name: "super network maps child prefix lengths to families",
			args: []string{"network", "create", "--id", "super-lab", "--partition", "lab", "--type", "super",
				"--prefix", "10.128.0.0/14", "--prefix", "fd00:10::/48", "--child-prefix-length", "22", "--child-prefix-length", "64"},
			method: "NetworkService/Create",
			want: &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
				Id: "super-lab", PartitionId: "lab", Type: apiv1.NetworkType_NETWORK_TYPE_SUPER,
				Prefixes: []string{"10.128.0.0/14", "fd00:10::/48"}, ChildPrefixLengthIpv4: 22, ChildPrefixLengthIpv6: 64,
			}},
			golden: "network_create",
		},
		{
			name: "IPv6 first super network",
			args: []string{"network", "create", "--id", "s6", "--partition", "lab", "--type", "super",
				"--prefix", "fd00:10::/48", "--prefix", "10.128.0.0/14", "--child-prefix-length", "64", "--child-prefix-length", "ipv4=24"},
			method: "NetworkService/Create",
			want: &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
				Id: "s6", PartitionId: "lab", Type: apiv1.NetworkType_NETWORK_TYPE_SUPER,
				Prefixes: []string{"fd00:10::/48", "10.128.0.0/14"}, ChildPrefixLengthIpv4: 24, ChildPrefixLengthIpv6: 64,
			}},
		},
		{
			name: "external network with vrf",
			args: []string{"network", "create", "--id", "internet", "--partition", "lab", "--type", "external",
				"--prefix", "203.0.113.0/24", "--vrf", "104009"},
			method: "NetworkService/Create",
			want: &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
				Id: "internet", PartitionId: "lab", Type: apiv1.NetworkType_NETWORK_TYPE_EXTERNAL,
				Prefixes: []string{"203.0.113.0/24"}, Vrf: 104009,
			}},
		},
		{
			name:   "network allocate",
			args:   []string{"network", "allocate", "--project", testProjectID, "--partition", "lab", "--name", "n1"},
			method: "NetworkService/Allocate",
			want:   &apiv1.NetworkServiceAllocateRequest{ProjectId: testProjectID, PartitionId: "lab", Name: "n1"},
			golden: "network_allocate",
		},
		{
			name:   "network allocate one family",
			args:   []string{"network", "allocate", "--project", "P", "--partition", "lab", "--name", "n2", "--parent", "super-lab", "--address-family", "IPv6"},
			method: "NetworkService/Allocate",
			want:   &apiv1.NetworkServiceAllocateRequest{ProjectId: "P", PartitionId: "lab", Name: "n2", ParentId: "super-lab", AddressFamilies: []string{"ipv6"}},
		},
		{
			name:   "ephemeral ip",
			args:   []string{"ip", "allocate", "--project", testProjectID, "--network", "n1"},
			method: "IPService/Allocate",
			want:   &apiv1.IPServiceAllocateRequest{ProjectId: testProjectID, NetworkId: "n1", Type: apiv1.IPType_IP_TYPE_EPHEMERAL},
			golden: "ip_allocate",
		},
		{
			name:   "static ip",
			args:   []string{"ip", "allocate", "--project", testProjectID, "--network", "internet", "--ip", "203.0.113.10", "--static", "--name", "lb"},
			method: "IPService/Allocate",
			want:   &apiv1.IPServiceAllocateRequest{ProjectId: testProjectID, NetworkId: "internet", Ip: "203.0.113.10", Type: apiv1.IPType_IP_TYPE_STATIC, Name: "lb"},
			golden: "ip_allocate_static",
		},
		{
			name:   "token prints only the secret",
			args:   []string{"token", "create", "--project", testProjectID, "--role", "viewer"},
			method: "TokenService/Create",
			want:   &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{testProjectID: apiv1.Level_LEVEL_VIEWER}},
			golden: "token_create",
		},
		{
			name: "token with all role kinds as json",
			args: []string{"token", "create", "--project", "P1", "--role", "viewer", "--project", "P2", "--role", "owner",
				"--project-role", "P3=editor", "--tenant-role", "t1=viewer", "--admin-role", "viewer",
				"--description", "ci", "--expires", "720h", "-o", "json"},
			method: "TokenService/Create",
			want: &apiv1.TokenServiceCreateRequest{
				Description:  "ci",
				AdminRole:    apiv1.Level_LEVEL_VIEWER,
				ProjectRoles: map[string]apiv1.Level{"P1": apiv1.Level_LEVEL_VIEWER, "P2": apiv1.Level_LEVEL_OWNER, "P3": apiv1.Level_LEVEL_EDITOR},
				TenantRoles:  map[string]apiv1.Level{"t1": apiv1.Level_LEVEL_VIEWER},
				ExpiresIn:    durationpb.New(720 * time.Hour),
			},
			golden: "token_create_json",
		},
		{
			name:   "token revoke",
			args:   []string{"token", "revoke", "tok-ci"},
			method: "TokenService/Revoke",
			want:   &apiv1.TokenServiceRevokeRequest{Id: "tok-ci"},
			golden: "token_revoke",
		},
		{
			name:   "agent enroll prints the agent and the labelled secret",
			args:   []string{"agent", "enroll", "--kind", "switch", "--identity", "leaf02", "--partition", "lab"},
			method: "AgentService/Enroll",
			want:   &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf02", PartitionId: "lab"},
			golden: "agent_enroll",
		},
		{
			name:   "agent enroll json has the secret as a field",
			args:   []string{"agent", "enroll", "--kind", "PIXIE", "--identity", "pixie-lab", "--partition", "lab", "-o", "json"},
			method: "AgentService/Enroll",
			want:   &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_PIXIE, Identity: "pixie-lab", PartitionId: "lab"},
			golden: "agent_enroll_json",
		},
		{
			name:   "agent enroll yaml",
			args:   []string{"agent", "enroll", "--kind", "bmc", "--identity", "bmc-lab", "--partition", "lab", "-o", "yaml"},
			method: "AgentService/Enroll",
			want:   &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc-lab", PartitionId: "lab"},
			golden: "agent_enroll_yaml",
		},
		{
			name:   "agent enroll template prints just the secret",
			args:   []string{"agent", "enroll", "--kind", "switch", "--identity", "leaf02", "--partition", "lab", "--template", "{{.secret}}"},
			method: "AgentService/Enroll",
			want:   &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf02", PartitionId: "lab"},
			golden: "agent_enroll_template",
		},
		{
			name:   "agent list filters",
			args:   []string{"agent", "list", "--kind", "switch", "--partition", "lab"},
			method: "AgentService/List",
			want:   &apiv1.AgentServiceListRequest{Kind: agentv1.Kind_KIND_SWITCH, PartitionId: "lab"},
		},
		{
			name:   "switch port down",
			args:   []string{"switch", "port", "down", "leaf01", "Ethernet4"},
			method: "SwitchService/SetPort",
			want:   &apiv1.SwitchServiceSetPortRequest{Id: "leaf01", Port: "Ethernet4"},
		},
		{
			name:   "switch port up",
			args:   []string{"switch", "port", "up", "leaf01", "Ethernet4"},
			method: "SwitchService/SetPort",
			want:   &apiv1.SwitchServiceSetPortRequest{Id: "leaf01", Port: "Ethernet4", Up: true},
		},
		{
			name:   "switch replace enrols the switch again in its partition",
			args:   []string{"switch", "replace", "leaf01"},
			method: "AgentService/Enroll",
			want:   &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_SWITCH, Identity: "leaf01", PartitionId: "lab"},
			golden: "switch_replace",
		},
		{
			name:   "agent describe events",
			args:   []string{"agent", "describe", "switch/leaf01", "--events", "2"},
			method: "AgentService/Get",
			want:   &apiv1.AgentServiceGetRequest{Id: "switch/leaf01", Events: 2},
		},
		{
			name:   "agent configure log level only",
			args:   []string{"agent", "configure", "switch/leaf01", "--log-level", "debug"},
			method: "AgentService/Configure",
			want:   &apiv1.AgentServiceConfigureRequest{Id: "switch/leaf01", LogLevel: proto.String("debug")},
			golden: "agent_configure",
		},
		{
			name:   "agent configure empty log level is sent",
			args:   []string{"agent", "configure", leafAgentID, "--log-level", ""},
			method: "AgentService/Configure",
			want:   &apiv1.AgentServiceConfigureRequest{Id: leafAgentID, LogLevel: proto.String("")},
		},
		{
			name:   "agent configure labels replace",
			args:   []string{"agent", "configure", "switch/leaf01", "--label", "rack=r01", "--label", "role=leaf", "--replace-labels"},
			method: "AgentService/Configure",
			want:   &apiv1.AgentServiceConfigureRequest{Id: "switch/leaf01", ReplaceLabels: true, Labels: map[string]string{"rack": "r01", "role": "leaf"}},
		},
		{
			name:   "agent configure clear labels and report facts",
			args:   []string{"agent", "configure", "switch/leaf01", "--clear-labels", "--report-facts"},
			method: "AgentService/Configure",
			want:   &apiv1.AgentServiceConfigureRequest{Id: "switch/leaf01", ReplaceLabels: true, ReportFacts: true},
		},
		{
			name:   "agent delete",
			args:   []string{"agent", "delete", "bmc/bmc-lab"},
			method: "AgentService/Delete",
			want:   &apiv1.AgentServiceDeleteRequest{Id: "bmc/bmc-lab"},
			golden: "agent_delete",
		},
		{
			name:   "boot token",
			args:   []string{"boot-token", "create", "--partition", "lab"},
			method: "BootTokenService/Create",
			want:   &apiv1.BootTokenServiceCreateRequest{PartitionId: "lab"},
			golden: "boot_token_create",
		},
		{
			name:   "boot token json",
			args:   []string{"boot-token", "create", "--partition", "lab", "--expires-in", "2h", "-o", "json"},
			method: "BootTokenService/Create",
			want:   &apiv1.BootTokenServiceCreateRequest{PartitionId: "lab", ExpiresIn: durationpb.New(2 * time.Hour)},
			golden: "boot_token_create_json",
		},
		{
			name:   "ip release",
			args:   []string{"ip", "release", "203.0.113.10"},
			method: "IPService/Release",
			want:   &apiv1.IPServiceReleaseRequest{Ip: "203.0.113.10"},
			golden: "ip_release",
		},
		{
			name:   "ip delete is release",
			args:   []string{"ip", "delete", "203.0.113.10"},
			method: "IPService/Release",
			want:   &apiv1.IPServiceReleaseRequest{Ip: "203.0.113.10"},
		},
		{
			name:   "network delete",
			args:   []string{"network", "delete", "n1"},
			method: "NetworkService/Delete",
			want:   &apiv1.NetworkServiceDeleteRequest{Id: "n1"},
		},
		{
			name:   "size reservation",
			args:   []string{"size-reservation", "create", "--size", "s1", "--partition", "lab", "--project", testProjectID, "--amount", "2"},
			method: "SizeReservationService/Create",
			want:   &apiv1.SizeReservationServiceCreateRequest{SizeReservation: &apiv1.SizeReservation{SizeId: "s1", PartitionId: "lab", ProjectId: testProjectID, Amount: 2}},
		},
		{
			name:   "fsl with constraints",
			args:   []string{"fsl", "create", "--id", "l1", "--size", "s1", "--image", "debian=>= 12.0"},
			method: "FilesystemLayoutService/Create",
			want: &apiv1.FilesystemLayoutServiceCreateRequest{FilesystemLayout: &apiv1.FilesystemLayout{Id: "l1",
				Constraints: &apiv1.FilesystemLayoutConstraints{Sizes: []string{"s1"}, Images: map[string]string{"debian": ">= 12.0"}}}},
		},
		{
			name:   "audit filters",
			args:   []string{"audit", "list", "--subject", "tok-ci", "--limit", "5"},
			method: "AuditService/List",
			want:   &apiv1.AuditServiceListRequest{Subject: "tok-ci", Limit: 5},
		},
		{
			name:   "network list filters",
			args:   []string{"network", "list", "--partition", "lab", "--type", "child"},
			method: "NetworkService/List",
			want:   &apiv1.NetworkServiceListRequest{PartitionId: "lab", Type: apiv1.NetworkType_NETWORK_TYPE_CHILD},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, addr := startFake(t)
			r := runAt(t, addr, tc.args...)
			mustSucceed(t, r)
			checkRequest(t, onlyCall(t, f, tc.method), tc.want)
			if tc.golden != "" {
				checkGolden(t, tc.golden, r.stdout)
			}
		})
	}
}

func TestApplyCreatesThenUpdatesExisting(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	f.markExisting("partition/lab")
	doc := `# partitions of the lab
---
id: lab
name: Lab
description: lab partition
region: eu-central
dns_servers: [1.1.1.1]
---
---
id: lab2
description: second
labels:
  env: lab
`
	dir := t.TempDir()
	path := filepath.Join(dir, "partitions.yaml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, stdin string
		file        string
	}{{"file", "", path}, {"stdin", doc, "-"}} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(f.recorded())
			r := runStdin(t, addr, tc.stdin, "partition", "apply", "-f", tc.file)
			mustSucceed(t, r)
			calls := f.recorded()[before:]
			var got []string
			for _, c := range calls {
				got = append(got, c.method+" "+c.req.(interface{ GetPartition() *apiv1.Partition }).GetPartition().GetId())
			}
			want := []string{"PartitionService/Create lab", "PartitionService/Update lab", "PartitionService/Create lab2"}
			if strings.Join(got, "; ") != strings.Join(want, "; ") {
				t.Errorf("calls = %q, want %q", got, want)
			}
			checkRequest(t, calls[1].req, &apiv1.PartitionServiceUpdateRequest{Partition: &apiv1.Partition{
				Id: "lab", Name: "Lab", Description: "lab partition", Region: "eu-central", DnsServers: []string{"1.1.1.1"},
			}})
			checkGolden(t, "partition_apply", r.stdout)
		})
	}
}

func TestApplyProjectMatchesByName(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	f.markExisting("project/t1/p1")
	r := runStdin(t, addr, "tenant_id: t1\nname: p1\ndescription: updated\n", "project", "apply", "-f", "-")
	mustSucceed(t, r)
	checkRequest(t, onlyCall(t, f, "ProjectService/List"), &apiv1.ProjectServiceListRequest{TenantId: "t1", Name: "p1"})
	checkRequest(t, onlyCall(t, f, "ProjectService/Update"), &apiv1.ProjectServiceUpdateRequest{Project: &apiv1.Project{
		Id: testProjectID, TenantId: "t1", Name: "p1", Description: "updated",
	}})
}

func TestApplyNetworkUpdatesMutableFields(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	f.markExisting("network/n1")
	r := runStdin(t, addr, "[{id: n1, name: renamed, type: NETWORK_TYPE_CHILD, labels: {a: b}}]", "network", "apply", "-f", "-")
	mustSucceed(t, r)
	checkRequest(t, onlyCall(t, f, "NetworkService/Update"), &apiv1.NetworkServiceUpdateRequest{Id: "n1", Name: "renamed", Labels: map[string]string{"a": "b"}})
}

func TestApplyRejectsBadDocuments(t *testing.T) {
	t.Parallel()
	_, addr := startFake(t)
	for _, tc := range []struct{ name, doc, want string }{
		{"unknown field", "id: x\nregoin: eu\n", "document 1"},
		{"empty", "# nothing\n---\n", "no objects found"},
		{"not yaml", "id: [unclosed\n", "document 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runStdin(t, addr, tc.doc, "partition", "apply", "-f", "-")
			if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 mentioning %q", r.code, r.stderr, tc.want)
			}
		})
	}
}

func TestApplyIPNeedsAddress(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	r := runStdin(t, addr, "network_id: n1\nproject_id: p\n", "ip", "apply", "-f", "-")
	if r.code != 1 || !strings.Contains(r.stderr, "apply needs the ip field") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if n := len(f.recorded()); n != 0 {
		t.Errorf("%d calls made, want none", n)
	}
}

func TestGRPCErrors(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	st, err := status.New(codes.InvalidArgument, "size is invalid").WithDetails(&errdetails.BadRequest{
		FieldViolations: []*errdetails.BadRequest_FieldViolation{
			{Field: "size.id", Description: "must be a DNS label"},
			{Field: "size.constraints[0]", Description: "overlaps size s1"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	f.failWith("SizeService/Create", st.Err())

	r := runAt(t, addr, "size", "create", "--id", "Bad_ID", "--cores", "4")
	if r.code != 1 {
		t.Fatalf("exit %d, want 1", r.code)
	}
	if r.stdout != "" {
		t.Errorf("stdout = %q, want nothing", r.stdout)
	}
	checkGolden(t, "error_bad_request", r.stderr)

	r = runAt(t, addr, "partition", "describe", "nope")
	if want := "Error: NotFound: partition \"nope\" not found\n"; r.code != 1 || r.stderr != want {
		t.Errorf("exit %d, stderr %q; want 1, %q", r.code, r.stderr, want)
	}

	f.markExisting("image/debian-12")
	r = runStdin(t, addr, "id: debian-12\nos: debian\n", "image", "create", "-f", "-")
	if want := "Error: document 1 (image \"debian-12\"): AlreadyExists: image \"debian-12\" already exists\n"; r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
}

func TestDescribeError(t *testing.T) {
	t.Parallel()
	withViolations := func(msg string, fields ...string) error {
		br := &errdetails.BadRequest{}
		for _, f := range fields {
			br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{Field: f, Description: "bad"})
		}
		st, err := status.New(codes.InvalidArgument, msg).WithDetails(br)
		if err != nil {
			t.Fatal(err)
		}
		return st.Err()
	}
	for _, tc := range []struct {
		name string
		err  error
		want string
	}{
		{"plain error", errors.New("boom"), "boom"},
		{"status", status.Error(codes.NotFound, "gone"), "NotFound: gone"},
		{"wrapped status keeps context", fmt.Errorf("document 2: %w", status.Error(codes.PermissionDenied, "no")), "document 2: PermissionDenied: no"},
		{"violations", withViolations("invalid", "a", "b"), "InvalidArgument: invalid\n  a: bad\n  b: bad"},
		{"violation repeated in message", withViolations("a: bad", "a"), "InvalidArgument: a: bad"},
	} {
		if got := describeError(tc.err); got != tc.want {
			t.Errorf("%s: describeError = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	_, addr := startFake(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"bad cores", []string{"size", "create", "--id", "s", "--cores", "64-1"}, "--cores: \"64-1\": minimum is greater than maximum"},
		{"bad memory unit", []string{"size", "create", "--id", "s", "--memory", "1GiB-1XB"}, "--memory: \"1XB\": unknown unit"},
		{"bad gpu", []string{"size", "create", "--id", "s", "--gpus", "two:H100"}, "--gpus \"two:H100\""},
		{"unpaired role", []string{"token", "create", "--project", "P1", "--project", "P2", "--role", "viewer"}, "--project and --role come in pairs"},
		{"bad role", []string{"token", "create", "--project-role", "P1=boss"}, "--project-role \"boss\": want one of viewer, editor, owner"},
		{"owner admin", []string{"token", "create", "--admin-role", "owner"}, "--admin-role \"owner\": want viewer or editor"},
		{"no role", []string{"token", "create"}, "a token needs a role"},
		{"child network via create", []string{"network", "create", "--id", "x", "--type", "child", "--prefix", "10.0.0.0/8"}, "network allocate"},
		{"vrf on super", []string{"network", "create", "--id", "x", "--type", "super", "--prefix", "10.0.0.0/8", "--vrf", "3"}, "--vrf only applies"},
		{"child length on external", []string{"network", "create", "--id", "x", "--type", "external", "--prefix", "10.0.0.0/8", "--child-prefix-length", "24"}, "only applies to super"},
		{"bad ip", []string{"ip", "allocate", "--project", "p", "--network", "n", "--ip", "10.0.0.300"}, "--ip:"},
		{"bad output", []string{"partition", "list", "-o", "xml"}, "unknown output format \"xml\""},
		{"template without text", []string{"partition", "list", "-o", "template"}, "-o template needs --template"},
		{"project without tenant", []string{"project", "create", "--name", "p"}, "--tenant and --name are required"},
		{"bad label", []string{"tenant", "create", "--id", "t", "--label", "novalue"}, "--label \"novalue\": want key=value"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runAt(t, addr, tc.args...)
			if r.code != 1 || !strings.HasPrefix(r.stderr, "Error: ") || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, tc.want)
			}
		})
	}
}

// TestAgentUsageErrors checks that bad agent and boot-token flags fail
// before any call reaches central.
func TestAgentUsageErrors(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unknown kind", []string{"agent", "list", "--kind", "router"}, "--kind \"router\": want one of installer, switch, bmc, pixie, phonehome"},
		{"unspecified kind", []string{"agent", "list", "--kind", "unspecified"}, "--kind \"unspecified\": want one of"},
		{"enroll unknown kind", []string{"agent", "enroll", "--kind", "router", "--identity", "r1", "--partition", "lab"}, "--kind \"router\": want one of"},
		{"enroll installer", []string{"agent", "enroll", "--kind", "installer", "--identity", "m1", "--partition", "lab"}, "boot-token create"},
		{"enroll without identity", []string{"agent", "enroll", "--kind", "switch", "--partition", "lab"}, "--kind, --identity and --partition are required"},
		{"describe too many events", []string{"agent", "describe", "switch/leaf01", "--events", "1001"}, "--events 1001: at most 1000"},
		{"describe without id", []string{"agent", "describe"}, "accepts 1 arg(s)"},
		{"configure nothing", []string{"agent", "configure", "switch/leaf01"}, "nothing to configure"},
		{"configure bad log level", []string{"agent", "configure", "switch/leaf01", "--log-level", "loud"}, "--log-level \"loud\": want debug, info, warn, error or \"\""},
		{"configure clear and set labels", []string{"agent", "configure", "switch/leaf01", "--clear-labels", "--label", "a=b"}, "exclude each other"},
		{"configure replace without labels", []string{"agent", "configure", "switch/leaf01", "--replace-labels"}, "--clear-labels"},
		{"configure bad label", []string{"agent", "configure", "switch/leaf01", "--label", "novalue"}, "--label \"novalue\": want key=value"},
		{"boot token without partition", []string{"boot-token", "create"}, "--partition is required"},
		{"boot token negative lifetime", []string{"boot-token", "create", "--partition", "lab", "--expires-in", "-5m"}, "must be positive"},
		{"bad output", []string{"agent", "enroll", "--kind", "switch", "--identity", "x", "--partition", "lab", "-o", "xml"}, "unknown output format"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runAt(t, addr, tc.args...)
			if r.code != 1 || !strings.HasPrefix(r.stderr, "Error: ") || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, tc.want)
			}
		})
	}
	if calls := methods(f); len(calls) != 0 {
		t.Errorf("calls made despite bad flags: %v", calls)
	}
}

func TestTokenIsSentAsBearer(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	mustSucceed(t, runAt(t, addr, "partition", "list"))
	calls := f.recorded()
	if len(calls) != 1 || calls[0].auth != "Bearer test-token" {
		t.Fatalf("calls = %+v, want one with authorization Bearer test-token", calls)
	}
}

func TestCompletion(t *testing.T) {
	t.Parallel()
	for _, shell := range []string{"bash", "zsh", "fish"} {
		r := runCLI(t, nil, "", "completion", shell)
		mustSucceed(t, r)
		if !strings.Contains(r.stdout, "metalctl") {
			t.Errorf("completion %s does not mention metalctl", shell)
		}
	}
}
