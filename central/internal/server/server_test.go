package server_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/metalfleet/metalfleet/central/internal/server"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// TestTLS: a client trusting the CA file gets through; one that does not
// trust it, or that speaks plaintext, is refused before any RPC runs.
func TestTLS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ok(e.api.Token.Whoami(e.as(t, e.admin), &apiv1.TokenServiceWhoamiRequest{}))(t)

	systemRoots, err := x509.SystemCertPool()
	if err != nil {
		systemRoots = x509.NewCertPool()
	}
	otherCA := x509.NewCertPool() // empty: trusts nothing
	tests := []struct {
		name  string
		creds credentials.TransportCredentials
	}{
		{"system roots", credentials.NewTLS(&tls.Config{RootCAs: systemRoots})},
		{"empty pool", credentials.NewTLS(&tls.Config{RootCAs: otherCA})},
		{"wrong server name", func() credentials.TransportCredentials {
			pem, _ := os.ReadFile(e.srv.CAFile())
			p := x509.NewCertPool()
			p.AppendCertsFromPEM(pem)
			return credentials.NewTLS(&tls.Config{RootCAs: p, ServerName: "not-central.example"})
		}()},
		{"plaintext", insecure.NewCredentials()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn := dial(t, e.srv.Addr(), tt.creds)
			_, err := apiv1.NewTokenServiceClient(conn).Whoami(e.as(t, e.admin), &apiv1.TokenServiceWhoamiRequest{})
			wantCode(t, err, codes.Unavailable)
			if tt.name != "plaintext" && !strings.Contains(err.Error(), "certificate") {
				t.Errorf("error does not mention the certificate: %v", err)
			}
		})
	}
	// The admin token file is private.
	fi, err := os.Stat(e.srv.AdminTokenPath())
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("admin token mode %v, want 0600", fi.Mode().Perm())
	}
}

// apiServices lists the full names of the people API's services.
func apiServices() []string {
	var out []string
	protoregistry.GlobalFiles.RangeFilesByPackage("metalfleet.api.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := 0; i < fd.Services().Len(); i++ {
			out = append(out, string(fd.Services().Get(i).FullName()))
		}
		return true
	})
	slices.Sort(out)
	return out
}

// TestMetricsHealthReflection: /metrics counts RPCs, health and reflection
// answer without a token, everything else needs one.
func TestMetricsHealthReflection(t *testing.T) {
	t.Parallel()
	e := newEnv(t, func(c *server.Config) { c.MetricsListen = "127.0.0.1:0" })
	ctx := e.as(t, e.none)

	t.Run("health", func(t *testing.T) {
		resp := ok(e.api.Health.Check(ctx, &healthpb.HealthCheckRequest{}))(t)
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health = %v", resp.GetStatus())
		}
		resp = ok(e.api.Health.Check(ctx, &healthpb.HealthCheckRequest{Service: "metalfleet.api.v1.NetworkService"}))(t)
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health(NetworkService) = %v", resp.GetStatus())
		}
		_, err := e.api.Health.Check(ctx, &healthpb.HealthCheckRequest{Service: "no.such.Service"})
		wantCode(t, err, codes.NotFound)
		// A garbage token does not break the public health check either.
		ok(e.api.Health.Check(e.as(t, e.garbage), &healthpb.HealthCheckRequest{}))(t)
	})

	t.Run("reflection", func(t *testing.T) {
		stream, err := reflectionpb.NewServerReflectionClient(e.conn).ServerReflectionInfo(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: ""}}); err != nil {
			t.Fatal(err)
		}
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		_ = stream.CloseSend()
		var got []string
		for _, s := range resp.GetListServicesResponse().GetService() {
			got = append(got, s.GetName())
		}
		for _, want := range append(apiServices(), "grpc.health.v1.Health") {
			if !slices.Contains(got, want) {
				t.Errorf("reflection does not list %s (lists %v)", want, got)
			}
		}
		// Reflection serves descriptors too, e.g. for grpcurl.
		if err := func() error {
			s, err := reflectionpb.NewServerReflectionClient(e.conn).ServerReflectionInfo(ctx)
			if err != nil {
				return err
			}
			if err := s.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_FileContainingSymbol{FileContainingSymbol: "metalfleet.api.v1.IPService"}}); err != nil {
				return err
			}
			r, err := s.Recv()
			if err != nil {
				return err
			}
			if len(r.GetFileDescriptorResponse().GetFileDescriptorProto()) == 0 {
				t.Errorf("no descriptor for IPService: %v", r)
			}
			return s.CloseSend()
		}(); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("metrics", func(t *testing.T) {
		// One OK and one Unauthenticated call, then both show in /metrics.
		ok(e.api.Partition.List(e.as(t, e.admin), &apiv1.PartitionServiceListRequest{}))(t)
		_, err := e.api.Partition.List(ctx, &apiv1.PartitionServiceListRequest{})
		wantCode(t, err, codes.Unauthenticated)
		body := httpGet(t, "http://"+e.srv.MetricsAddr()+"/metrics")
		for _, want := range []string{
			"# TYPE metalfleet_central_grpc_requests_total counter",
			`metalfleet_central_grpc_requests_total{code="OK",method="/metalfleet.api.v1.PartitionService/List"} 1`,
			`metalfleet_central_grpc_requests_total{code="Unauthenticated",method="/metalfleet.api.v1.PartitionService/List"} 1`,
			"metalfleet_central_grpc_request_duration_seconds_bucket",
			"go_goroutines",
		} {
			if !strings.Contains(body, want) {
				t.Errorf("/metrics lacks %q", want)
			}
		}
		if got := httpGet(t, "http://"+e.srv.MetricsAddr()+"/healthz"); got != "ok\n" {
			t.Errorf("/healthz = %q", got)
		}
	})

	t.Run("everything else needs a token", func(t *testing.T) {
		for _, c := range []*caller{e.none, e.garbage, {name: "basic", token: "x"}} {
			_, err := e.api.Token.Whoami(e.as(t, c), &apiv1.TokenServiceWhoamiRequest{})
			wantCode(t, err, codes.Unauthenticated)
		}
		// Wrong scheme.
		ctx := metadataCtx(t, "authorization", "Basic "+e.admin.token)
		_, err := e.api.Token.Whoami(ctx, &apiv1.TokenServiceWhoamiRequest{})
		wantCode(t, err, codes.Unauthenticated)
	})
}

func httpGet(t testing.TB, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	return string(b)
}

// TestRestart: a second start on the same data dir and database keeps the
// admin token (file and validity), the data and the schema without
// re-applying migrations; a revoked admin token is replaced on the next start.
func TestRestart(t *testing.T) {
	t.Parallel()
	cfg := baseConfig(t)
	srv, stop := startServer(t, cfg)
	caFile := srv.CAFile()
	tok1, err := os.ReadFile(srv.AdminTokenPath())
	if err != nil {
		t.Fatal(err)
	}
	ca1, _ := os.ReadFile(caFile)
	{
		e := attach(t, cfg, srv)
		ok(e.api.Tenant.Create(e.as(t, e.admin), &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: "survivor"}}))(t)
	}
	stop()

	srv2, stop2 := startServer(t, cfg)
	tok2, err := os.ReadFile(srv2.AdminTokenPath())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(tok1, tok2) {
		t.Fatal("admin token file changed across a restart")
	}
	if ca2, _ := os.ReadFile(srv2.CAFile()); !bytes.Equal(ca1, ca2) {
		t.Fatal("CA changed across a restart")
	}
	e := attach(t, cfg, srv2) // trusts the CA file, uses the unchanged token
	got := ok(e.api.Tenant.Get(e.as(t, e.admin), &apiv1.TenantServiceGetRequest{Id: "survivor"}))(t)
	if got.GetTenant().GetId() != "survivor" {
		t.Fatalf("tenant after restart = %v", got)
	}
	st, err := store.Open(t.Context(), cfg.DBURL, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	migrations, err := st.Migrations()
	if err != nil {
		t.Fatal(err)
	}
	if n := e.count(t, `SELECT count(*) FROM schema_migrations`); n != len(migrations) {
		t.Fatalf("schema_migrations has %d rows, want %d (one per migration)", n, len(migrations))
	}
	for _, m := range migrations {
		if n := e.count(t, `SELECT count(*) FROM schema_migrations WHERE version = $1`, m.Version); n != 1 {
			t.Fatalf("migration %d recorded %d times", m.Version, n)
		}
	}
	if n := e.count(t, `SELECT count(*) FROM tokens`); n != 1 {
		t.Fatalf("%d tokens after a restart, want the one admin token", n)
	}

	// Revoke the admin token: the next start writes a new, working one.
	ok(e.api.Token.Revoke(e.as(t, e.admin), &apiv1.TokenServiceRevokeRequest{Id: e.admin.tokenID}))(t)
	stop2()
	srv3, _ := startServer(t, cfg)
	tok3, err := os.ReadFile(srv3.AdminTokenPath())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(tok2, tok3) {
		t.Fatal("revoked admin token was kept")
	}
	e3 := attach(t, cfg, srv3)
	ok(e3.api.Tenant.Get(e3.as(t, e3.admin), &apiv1.TenantServiceGetRequest{Id: "survivor"}))(t)
}

// attach connects to a running server as its admin, without creating fixtures.
func attach(t testing.TB, cfg server.Config, srv *server.Server) *env {
	t.Helper()
	e := &env{cfg: cfg, srv: srv}
	e.db = openDB(t, cfg.DBURL)
	e.conn = dial(t, srv.Addr(), tlsCreds(t, srv.CAFile()), grpc.WithChainUnaryInterceptor(e.auditInterceptor))
	e.api = newClients(e.conn)
	e.admin = e.adminCaller(t)
	e.none = &caller{name: "none"}
	return e
}

func metadataCtx(t testing.TB, kv ...string) context.Context {
	ctx := context.WithValue(t.Context(), ctxKey{}, &callInfo{t: t, c: &caller{name: "raw"}})
	return metadata.AppendToOutgoingContext(ctx, kv...)
}
