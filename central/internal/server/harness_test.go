package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/metalfleet/metalfleet/central/internal/server"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// caller is one identity the tests call the API as.
type caller struct {
	name    string
	token   string // bearer secret; "" sends no authorization header
	tokenID string // id of a valid token; "" for no-token and garbage callers
}

// clients are the typed stubs of every service on one TLS connection.
type clients struct {
	Partition        apiv1.PartitionServiceClient
	Size             apiv1.SizeServiceClient
	SizeReservation  apiv1.SizeReservationServiceClient
	Image            apiv1.ImageServiceClient
	FilesystemLayout apiv1.FilesystemLayoutServiceClient
	Tenant           apiv1.TenantServiceClient
	Project          apiv1.ProjectServiceClient
	Network          apiv1.NetworkServiceClient
	IP               apiv1.IPServiceClient
	Token            apiv1.TokenServiceClient
	Machine          apiv1.MachineServiceClient
	Switch           apiv1.SwitchServiceClient
	BMC              apiv1.BMCServiceClient
	Audit            apiv1.AuditServiceClient
	Agent            apiv1.AgentServiceClient
	BootToken        apiv1.BootTokenServiceClient
	Health           healthpb.HealthClient
}

func newClients(cc grpc.ClientConnInterface) *clients {
	return &clients{
		Partition:        apiv1.NewPartitionServiceClient(cc),
		Size:             apiv1.NewSizeServiceClient(cc),
		SizeReservation:  apiv1.NewSizeReservationServiceClient(cc),
		Image:            apiv1.NewImageServiceClient(cc),
		FilesystemLayout: apiv1.NewFilesystemLayoutServiceClient(cc),
		Tenant:           apiv1.NewTenantServiceClient(cc),
		Project:          apiv1.NewProjectServiceClient(cc),
		Network:          apiv1.NewNetworkServiceClient(cc),
		IP:               apiv1.NewIPServiceClient(cc),
		Token:            apiv1.NewTokenServiceClient(cc),
		Machine:          apiv1.NewMachineServiceClient(cc),
		Switch:           apiv1.NewSwitchServiceClient(cc),
		BMC:              apiv1.NewBMCServiceClient(cc),
		Audit:            apiv1.NewAuditServiceClient(cc),
		Agent:            apiv1.NewAgentServiceClient(cc),
		BootToken:        apiv1.NewBootTokenServiceClient(cc),
		Health:           healthpb.NewHealthClient(cc),
	}
}

// env is one running metal-central with a client connection, direct access
// to its database, and the standard tenants, projects and callers:
//
//	t1 ⊃ p1, t2 ⊃ p2; p1Owner, p1Viewer (project roles on p1),
//	p2Editor (editor of the other project), t1Viewer (tenant viewer of t1),
//	admin (the admin.token), none (no token), garbage (an invalid token).
type env struct {
	cfg  server.Config
	srv  *server.Server
	db   *pgxpool.Pool
	conn *grpc.ClientConn
	api  *clients

	admin, p1Owner, p1Viewer, p2Editor, t1Viewer, none, garbage *caller
	t1, t2, p1, p2                                              string

	seq atomic.Int64
	// audited counts, per method, successful mutating calls whose audit row was checked.
	audited sync.Map // string → *atomic.Int64
}

func testLogger() *slog.Logger {
	if os.Getenv("METALFLEET_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// startServer starts metal-central; the returned stop is idempotent and also
// runs at cleanup.
func startServer(t testing.TB, cfg server.Config) (*server.Server, func()) {
	t.Helper()
	return startServerLog(t, cfg, testLogger())
}

// startServerLog is startServer with the server's logger.
func startServerLog(t testing.TB, cfg server.Config, log *slog.Logger) (*server.Server, func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := server.Start(ctx, cfg, log)
	if err != nil {
		t.Fatalf("server.Start: %v", err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			sctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			srv.Stop(sctx)
		})
	}
	t.Cleanup(stop)
	return srv, stop
}

// tlsCreds trusts only caFile.
func tlsCreds(t testing.TB, caFile string) credentials.TransportCredentials {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatalf("no certificate in %s", caFile)
	}
	return credentials.NewTLS(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
}

func dial(t testing.TB, addr string, creds credentials.TransportCredentials, opts ...grpc.DialOption) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr, append([]grpc.DialOption{grpc.WithTransportCredentials(creds)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func baseConfig(t testing.TB) server.Config {
	return server.Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), DBURL: pg.NewDatabase(t)}
}

// newEnv starts a server on a fresh database and creates the standard
// tenants, projects and tokens.
func newEnv(t testing.TB, opts ...func(*server.Config)) *env {
	t.Helper()
	return newEnvLog(t, testLogger(), opts...)
}

// newEnvLog is newEnv with the server's logger.
func newEnvLog(t testing.TB, log *slog.Logger, opts ...func(*server.Config)) *env {
	t.Helper()
	cfg := baseConfig(t)
	for _, o := range opts {
		o(&cfg)
	}
	e := &env{cfg: cfg}
	e.srv, _ = startServerLog(t, cfg, log)
	e.db = openDB(t, cfg.DBURL)
	e.conn = dial(t, e.srv.Addr(), tlsCreds(t, e.srv.CAFile()), grpc.WithChainUnaryInterceptor(e.auditInterceptor))
	e.api = newClients(e.conn)
	e.admin = e.adminCaller(t)
	e.none = &caller{name: "none"}
	e.garbage = &caller{name: "garbage", token: "mft_" + strings.Repeat("A", 43)}

	e.t1, e.t2 = "t1", "t2"
	e.createTenant(t, e.t1)
	e.createTenant(t, e.t2)
	e.p1 = e.createProject(t, e.t1, "p1")
	e.p2 = e.createProject(t, e.t2, "p2")
	e.p1Owner = e.mint(t, "p1-owner", e.admin, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p1: apiv1.Level_LEVEL_OWNER}})
	e.p1Viewer = e.mint(t, "p1-viewer", e.admin, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p1: apiv1.Level_LEVEL_VIEWER}})
	e.p2Editor = e.mint(t, "p2-editor", e.admin, &apiv1.TokenServiceCreateRequest{ProjectRoles: map[string]apiv1.Level{e.p2: apiv1.Level_LEVEL_EDITOR}})
	e.t1Viewer = e.mint(t, "t1-viewer", e.admin, &apiv1.TokenServiceCreateRequest{TenantRoles: map[string]apiv1.Level{e.t1: apiv1.Level_LEVEL_VIEWER}})
	return e
}

func openDB(t testing.TB, url string) *pgxpool.Pool {
	t.Helper()
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	pcfg.MaxConns = 8
	db, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	return db
}

// adminCaller reads the admin token the server wrote.
func (e *env) adminCaller(t testing.TB) *caller {
	t.Helper()
	b, err := os.ReadFile(e.srv.AdminTokenPath())
	if err != nil {
		t.Fatalf("admin token: %v", err)
	}
	c := &caller{name: "admin", token: strings.TrimSpace(string(b))}
	who := ok(e.api.Token.Whoami(e.as(t, c), &apiv1.TokenServiceWhoamiRequest{}))(t)
	c.tokenID = who.GetToken().GetId()
	return c
}

// mint creates a token as by and returns a caller for it.
func (e *env) mint(t testing.TB, name string, by *caller, req *apiv1.TokenServiceCreateRequest) *caller {
	t.Helper()
	if req.Description == "" {
		req.Description = name
	}
	resp := ok(e.api.Token.Create(e.as(t, by), req))(t)
	return &caller{name: name, token: resp.GetSecret(), tokenID: resp.GetToken().GetId()}
}

func (e *env) createTenant(t testing.TB, id string) {
	t.Helper()
	ok(e.api.Tenant.Create(e.as(t, e.admin), &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: id, Name: strings.ToUpper(id)}}))(t)
}

func (e *env) createProject(t testing.TB, tenant, name string) string {
	t.Helper()
	resp := ok(e.api.Project.Create(e.as(t, e.admin), &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: tenant, Name: name}}))(t)
	if _, err := uuid.Parse(resp.GetProject().GetId()); err != nil {
		t.Fatalf("project id %q is not a UUID", resp.GetProject().GetId())
	}
	return resp.GetProject().GetId()
}

// next returns a number unique within the env, for fresh ids.
func (e *env) next() int64 { return e.seq.Add(1) }

// count runs a counting query against the server's database.
func (e *env) count(t testing.TB, query string, args ...any) int {
	t.Helper()
	var n int
	if err := e.db.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func (e *env) exec(t testing.TB, query string, args ...any) {
	t.Helper()
	if _, err := e.db.Exec(context.Background(), query, args...); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
}

// --- calls, request ids and the audit check ------------------------------

type ctxKey struct{}

// callInfo travels with each call in its context for the audit check.
type callInfo struct {
	t       testing.TB
	c       *caller
	noCheck bool
}

// as is a context calling as c, reporting audit mismatches to t.
func (e *env) as(t testing.TB, c *caller) context.Context {
	ctx := context.WithValue(t.Context(), ctxKey{}, &callInfo{t: t, c: c})
	if c.token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.token)
	}
	return ctx
}

// withRequestID sends id as x-request-id.
func withRequestID(ctx context.Context, id string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "x-request-id", id)
}

var mutatingVerbs = []string{"Create", "Update", "Delete", "Allocate", "Release", "Revoke", "Enroll", "Configure", "Reinstall", "SetState", "ResolveMac", "SetPort", "SetSettings", "Power", "Boot", "Identify", "UpdateFirmware"}

func isMutating(fullMethod string) bool {
	return slices.Contains(mutatingVerbs, fullMethod[strings.LastIndex(fullMethod, "/")+1:])
}

// auditInterceptor gives every call a request id and then checks the audit
// log: a successful mutating call wrote exactly one row with the caller's
// token id, the method, the request id, the target named by the response and
// the project it belongs to; every other call (reads, rejected writes) wrote none.
func (e *env) auditInterceptor(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	md, _ := metadata.FromOutgoingContext(ctx)
	var rid string
	if v := md.Get("x-request-id"); len(v) > 0 {
		rid = v[len(v)-1]
	} else {
		rid = uuid.NewString()
		ctx = metadata.AppendToOutgoingContext(ctx, "x-request-id", rid)
	}
	err := invoker(ctx, method, req, reply, cc, opts...)
	info, _ := ctx.Value(ctxKey{}).(*callInfo)
	if info == nil || info.noCheck || !strings.HasPrefix(method, "/metalfleet.api.v1.") {
		return err
	}
	e.checkAudit(info, method, rid, reply, err)
	return err
}

type auditRow struct{ subject, method, target, project string }

func (e *env) checkAudit(info *callInfo, method, rid string, reply any, callErr error) {
	t := info.t
	qctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rows, err := e.db.Query(qctx, `SELECT subject, method, target, COALESCE(project_id, '') FROM audit WHERE request_id = $1`, rid)
	if err != nil {
		t.Errorf("read audit: %v", err)
		return
	}
	var got []auditRow
	for rows.Next() {
		var r auditRow
		if err := rows.Scan(&r.subject, &r.method, &r.target, &r.project); err != nil {
			t.Errorf("read audit: %v", err)
		}
		got = append(got, r)
	}
	rows.Close()
	want := 0
	if callErr == nil && isMutating(method) {
		want = 1
	}
	if len(got) != want {
		t.Errorf("%s as %s (%v): %d audit rows with request id %s, want %d: %v", method, info.c.name, status.Code(callErr), len(got), rid, want, got)
		return
	}
	if want == 0 {
		return
	}
	r := got[0]
	target, project := auditTarget(reply.(proto.Message))
	if strings.HasSuffix(method, "MachineService/Delete") && project == "" && r.project != "" {
		// A freed machine has no allocation left to name its project; the
		// audit row keeps the project that owned it.
		project = r.project
	}
	wantRow := auditRow{subject: info.c.tokenID, method: method, target: target, project: project}
	if r != wantRow {
		t.Errorf("%s as %s: audit row %+v, want %+v", method, info.c.name, r, wantRow)
		return
	}
	n, _ := e.audited.LoadOrStore(method, new(atomic.Int64))
	n.(*atomic.Int64).Add(1)
}

// auditTarget derives "kind/id" and the owning project from a response's object.
func auditTarget(reply proto.Message) (target, project string) {
	m := reply.ProtoReflect()
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Kind() != protoreflect.MessageKind || fd.IsList() || fd.IsMap() {
			continue
		}
		obj := m.Get(fd).Message()
		od := obj.Descriptor()
		idField := od.Fields().ByName("id")
		if idField == nil {
			idField = od.Fields().ByName("ip")
		}
		if idField == nil {
			// A partition's settings (PartitionBMC) are named by their partition.
			idField = od.Fields().ByName("partition_id")
		}
		id := obj.Get(idField).String()
		if od.Name() == "Project" {
			project = id
		} else if od.Name() == "Machine" {
			project = obj.Get(od.Fields().ByName("allocation")).Message().Get(od.Fields().ByName("allocation").Message().Fields().ByName("project_id")).String()
		} else if pf := od.Fields().ByName("project_id"); pf != nil {
			project = obj.Get(pf).String()
		}
		return kebab(string(od.Name())) + "/" + id, project
	}
	return "", ""
}

// kebab turns a message name into the audit kind: SizeReservation → size-reservation, IP → ip.
func kebab(s string) string {
	var b strings.Builder
	for i, r := range s {
		if unicode.IsUpper(r) && i > 0 && unicode.IsLower(rune(s[i-1])) {
			b.WriteByte('-')
		}
		b.WriteRune(unicode.ToLower(r))
	}
	return b.String()
}

// --- assertions ------------------------------------------------------------

// ok fails the test on err and returns the response: ok(client.Call(ctx, req))(t).
func ok[T any](v T, err error) func(testing.TB) T {
	return func(t testing.TB) T {
		t.Helper()
		if err != nil {
			t.Fatalf("unexpected error: %v", err)
		}
		return v
	}
}

// wantCode checks err's gRPC code.
func wantCode(t testing.TB, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("code %v (%v), want %v", got, err, want)
	}
}

// wantField checks err is InvalidArgument naming field in a google.rpc.BadRequest
// field violation, or at least in its message.
func wantField(t testing.TB, err error, field string) {
	t.Helper()
	wantCode(t, err, codes.InvalidArgument)
	st := status.Convert(err)
	var fields []string
	for _, d := range st.Details() {
		if br, isBR := d.(*errdetails.BadRequest); isBR {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	if len(fields) > 0 {
		if !slices.Contains(fields, field) {
			t.Fatalf("field violations %v do not name %q (%v)", fields, field, err)
		}
		return
	}
	if !strings.Contains(st.Message(), field) {
		t.Fatalf("InvalidArgument %q does not name %q", st.Message(), field)
	}
}

func fresh(prefix string, n int64) string { return fmt.Sprintf("%s-%d", prefix, n) }

// call adapts a client method and request to func(ctx) error.
func call[Q, R any](f func(context.Context, Q, ...grpc.CallOption) (R, error), req Q) func(context.Context) error {
	return func(ctx context.Context) error {
		_, err := f(ctx, req)
		return err
	}
}

// dataTables are every table the API writes.
var dataTables = []string{"partitions", "sizes", "images", "filesystem_layouts", "tenants", "projects", "size_reservations",
	"pools", "pool_free", "networks", "prefixes", "ips", "tokens", "audit", "machines", "switches"}

// fingerprint summarises the whole content of the database.
func (e *env) fingerprint(t testing.TB) string {
	t.Helper()
	var b strings.Builder
	for _, table := range dataTables {
		var h string
		q := `SELECT COALESCE(md5(string_agg(r::TEXT, ',' ORDER BY r::TEXT)), '') FROM ` + table + ` r`
		if err := e.db.QueryRow(context.Background(), q).Scan(&h); err != nil {
			t.Fatalf("fingerprint %s: %v", table, err)
		}
		b.WriteString(table + "=" + h + ";")
	}
	return b.String()
}

// reject is a call that must fail with code (InvalidArgument naming field
// when field is set) and leave the database exactly as it was.
type reject struct {
	name  string
	code  codes.Code
	field string
	call  func(context.Context) error
}

func (e *env) rejectAll(t *testing.T, as *caller, cases []reject) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.fingerprint(t)
			err := c.call(e.as(t, as))
			if c.field != "" {
				wantField(t, err, c.field)
			} else {
				wantCode(t, err, c.code)
			}
			if after := e.fingerprint(t); after != before {
				t.Fatalf("rejected call (%v) changed the database", err)
			}
		})
	}
}

// unchecked turns the audit check off for calls whose audit row cannot be
// found by request id (the server replaces over-long ones).
func unchecked(ctx context.Context) context.Context {
	info, _ := ctx.Value(ctxKey{}).(*callInfo)
	if info == nil {
		return ctx
	}
	cp := *info
	cp.noCheck = true
	return context.WithValue(ctx, ctxKey{}, &cp)
}
