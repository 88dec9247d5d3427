package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/metalfleet/metalfleet/central/internal/field"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// ErrNotFound is what a Resolver returns for an unknown object.
var ErrNotFound = errors.New("not found")

// ErrUnauthenticated is what a TokenLookup returns for an unknown, expired or revoked token.
var ErrUnauthenticated = errors.New("invalid token")

// Owner says to whom an object belongs.
type Owner struct {
	ProjectID string
	TenantID  string
	// Shared objects without an owner (super and external networks) are
	// readable by every authenticated caller; changing them needs admin.
	Shared bool
}

// Resolver maps an object named in a request to its owner.
type Resolver interface {
	Resolve(ctx context.Context, resource, id string) (Owner, error)
}

// TokenLookup finds the principal of a bearer secret.
type TokenLookup interface {
	Principal(ctx context.Context, secret string) (*Principal, error)
}

// Authorizer is the one place where access rules are enforced.
type Authorizer struct {
	rules    map[string]*apiv1.Access
	tokens   TokenLookup
	resolver Resolver
	log      *slog.Logger
	// public methods need no token (health checks, reflection).
	public []string
}

// New builds the rule table from every registered method's access option.
func New(tokens TokenLookup, resolver Resolver, log *slog.Logger) *Authorizer {
	a := &Authorizer{
		rules:    map[string]*apiv1.Access{},
		tokens:   tokens,
		resolver: resolver,
		log:      log,
		public: []string{"/grpc.health.v1.Health/", "/grpc.reflection.v1.ServerReflection/", "/grpc.reflection.v1alpha.ServerReflection/",
			// Agents authenticate in their Hello message, with agent
			// credentials that the people API does not know (central/internal/fleet).
			"/metalfleet.agent.v1.AgentService/"},
	}
	protoregistry.GlobalFiles.RangeFilesByPackage("metalfleet.api.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				md := sd.Methods().Get(j)
				if acc, ok := proto.GetExtension(md.Options(), apiv1.E_Access).(*apiv1.Access); ok && acc != nil && acc.GetScope() != apiv1.Scope_SCOPE_UNSPECIFIED {
					a.rules[fmt.Sprintf("/%s/%s", sd.FullName(), md.Name())] = acc
				}
			}
		}
		return true
	})
	return a
}

// Rule returns the access rule of a full method name.
func (a *Authorizer) Rule(fullMethod string) (*apiv1.Access, bool) {
	r, ok := a.rules[fullMethod]
	return r, ok
}

// Unary is the unary server interceptor.
func (a *Authorizer) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if a.isPublic(info.FullMethod) {
			return handler(ctx, req)
		}
		msg, _ := req.(proto.Message)
		ctx, err := a.Authorize(ctx, info.FullMethod, msg)
		if err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// Stream is the stream server interceptor; streams are authorised on open,
// or on their first request when their rule names a request field.
func (a *Authorizer) Stream() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if a.isPublic(info.FullMethod) {
			return handler(srv, ss)
		}
		if info.IsServerStream && !info.IsClientStream || a.rules[info.FullMethod].GetField() != "" {
			// A server stream's one request names what it is about (a
			// project, a machine): authorise against it when it arrives.
			// So does the first request of a bidirectional stream whose
			// rule names a field (the console: its machine).
			return handler(srv, &requestStream{ServerStream: ss, a: a, method: info.FullMethod, ctx: ss.Context()})
		}
		ctx, err := a.Authorize(ss.Context(), info.FullMethod, nil)
		if err != nil {
			return err
		}
		return handler(srv, &wrappedStream{ServerStream: ss, ctx: ctx})
	}
}

type wrappedStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (w *wrappedStream) Context() context.Context { return w.ctx }

// requestStream authorises a server stream on its request message. The
// generated handler receives the request before it calls the method, so
// the method sees the authorised context.
type requestStream struct {
	grpc.ServerStream
	a          *Authorizer
	method     string
	ctx        context.Context
	authorized bool
}

func (r *requestStream) Context() context.Context { return r.ctx }

func (r *requestStream) RecvMsg(m any) error {
	if err := r.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	if r.authorized {
		return nil
	}
	msg, ok := m.(proto.Message)
	if !ok {
		return status.Error(codes.Internal, "request is not a protobuf message")
	}
	ctx, err := r.a.Authorize(r.ServerStream.Context(), r.method, msg)
	if err != nil {
		return err
	}
	r.ctx, r.authorized = ctx, true
	return nil
}

func (a *Authorizer) isPublic(method string) bool {
	for _, p := range a.public {
		if strings.HasPrefix(method, p) {
			return true
		}
	}
	return false
}

// Authorize authenticates the caller and checks the method's rule against req.
func (a *Authorizer) Authorize(ctx context.Context, method string, req proto.Message) (context.Context, error) {
	rule, ok := a.rules[method]
	if !ok {
		// Fail closed: a method someone forgot to annotate is unreachable.
		return nil, status.Errorf(codes.PermissionDenied, "method %s has no access rule", method)
	}
	secret, err := bearer(ctx)
	if err != nil {
		return nil, err
	}
	p, err := a.tokens.Principal(ctx, secret)
	if errors.Is(err, ErrUnauthenticated) {
		return nil, status.Error(codes.Unauthenticated, "invalid, expired or revoked token")
	}
	if err != nil {
		a.log.Error("token lookup", "err", err)
		return nil, status.Error(codes.Unavailable, "cannot check token now")
	}
	call := &Call{Principal: p, Method: method, RequestID: RequestID(ctx)}
	ctx = WithCall(ctx, call)
	if t, _ := ctx.Value(requestIDKey{}).(*callTag); t != nil {
		t.subject = p.TokenID
	}
	// Before the rule's resolver reads the database with a request field,
	// and before any handler does.
	if err := CheckInput(req); err != nil {
		return nil, err
	}
	if err := a.check(ctx, p, rule, req); err != nil {
		return nil, err
	}
	return ctx, nil
}

func (a *Authorizer) check(ctx context.Context, p *Principal, rule *apiv1.Access, req proto.Message) error {
	need := rule.GetLevel()
	switch rule.GetScope() {
	case apiv1.Scope_SCOPE_AUTHENTICATED:
		return nil
	case apiv1.Scope_SCOPE_ADMIN:
		if p.AdminLevel() >= need {
			return nil
		}
		return status.Errorf(codes.PermissionDenied, "needs admin %s", levelName(need))
	}
	id, err := fieldValue(req, rule.GetField())
	if err != nil {
		return err
	}
	owner, err := a.resolver.Resolve(ctx, rule.GetResource(), id)
	if errors.Is(err, ErrNotFound) {
		return status.Errorf(codes.NotFound, "%s %s not found", rule.GetResource(), Quote(id))
	}
	if err != nil {
		// The database's words stay in the log.
		a.log.Error("resolve", "resource", rule.GetResource(), "id", Quote(id), "request_id", CallFrom(ctx).RequestID, "err", Clip(err.Error(), 1024))
		return status.Errorf(codes.Internal, "internal error (request id %s)", CallFrom(ctx).RequestID)
	}
	// sees is the caller's role on the object itself and decides whether it
	// exists for the caller; have is the role in the rule's scope.
	var have, sees apiv1.Level
	switch {
	case owner.ProjectID == "" && owner.TenantID == "":
		have = p.AdminLevel()
		if owner.Shared {
			have = max(have, apiv1.Level_LEVEL_VIEWER)
		}
		sees = have
	case rule.GetScope() == apiv1.Scope_SCOPE_TENANT:
		have = p.TenantLevel(owner.TenantID)
		// A project's own members see it even where its tenant's role is needed.
		sees = p.ProjectLevel(owner.ProjectID, owner.TenantID)
	default:
		have = p.ProjectLevel(owner.ProjectID, owner.TenantID)
		sees = have
	}
	if sees < apiv1.Level_LEVEL_VIEWER {
		// Indistinguishable from a missing object: no probing of other projects.
		return status.Errorf(codes.NotFound, "%s %s not found", rule.GetResource(), Quote(id))
	}
	if p.AdminLevel() >= apiv1.Level_LEVEL_EDITOR {
		// Admin editors may do everything, owner-level changes included.
		return nil
	}
	if have < need {
		return status.Errorf(codes.PermissionDenied, "needs %s on %s %s", levelName(need), rule.GetResource(), Quote(id))
	}
	return nil
}

// fieldValue reads a string field by dotted path, e.g. "project.tenant_id".
func fieldValue(req proto.Message, path string) (string, error) {
	if req == nil || path == "" {
		return "", status.Error(codes.Internal, "access rule names no request field")
	}
	m := req.ProtoReflect()
	parts := strings.Split(path, ".")
	for i, name := range parts {
		fd := m.Descriptor().Fields().ByName(protoreflect.Name(name))
		if fd == nil {
			return "", status.Errorf(codes.Internal, "access rule field %q missing in %s", path, m.Descriptor().FullName())
		}
		if i < len(parts)-1 {
			if !m.Has(fd) {
				return "", required(path)
			}
			m = m.Get(fd).Message()
			continue
		}
		v := strings.TrimSpace(m.Get(fd).String())
		if v == "" {
			return "", required(path)
		}
		return v, nil
	}
	return "", status.Errorf(codes.Internal, "bad access field %q", path)
}

// required is the answer to a missing field the rule needs, the same as a
// handler's own validation gives: InvalidArgument with the field.
func required(path string) error {
	return field.InvalidArgument("", []*errdetails.BadRequest_FieldViolation{{Field: path, Description: "required"}})
}

func bearer(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) == 0 {
		return "", status.Error(codes.Unauthenticated, "missing authorization: Bearer token")
	}
	scheme, tok, ok := strings.Cut(vals[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(tok) == "" {
		return "", status.Error(codes.Unauthenticated, "authorization must be: Bearer <token>")
	}
	return strings.TrimSpace(tok), nil
}

type requestIDKey struct{}

// callTag is what the call's log line needs to know from inside the
// chain: its request id and, once authenticated, its subject.
type callTag struct {
	id, subject string
}

// WithRequestID fixes the request id of a call before it is authorised, so
// that the log line of the call and its audit row carry the same id; the
// interceptor records the caller's token id there for Subject.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, &callTag{id: id})
}

// Subject is the token id of the caller authenticated in a call whose
// context came from WithRequestID ("" before or without authentication).
func Subject(ctx context.Context) string {
	if t, _ := ctx.Value(requestIDKey{}).(*callTag); t != nil {
		return t.subject
	}
	return ""
}

// RequestID is the call's id: the one fixed by WithRequestID, else the
// client's x-request-id (when short and plain enough to store and log),
// else a new one.
func RequestID(ctx context.Context) string {
	if t, _ := ctx.Value(requestIDKey{}).(*callTag); t != nil && t.id != "" {
		return t.id
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get("x-request-id"); len(v) > 0 && v[0] != "" && len(v[0]) <= 128 && printable(v[0]) {
		return v[0]
	}
	return uuid.NewString()
}

// printable reports whether s is printable ASCII: a NUL byte would fail the
// audit row's insert.
func printable(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return false
		}
	}
	return true
}

func levelName(l apiv1.Level) string {
	return strings.ToLower(strings.TrimPrefix(l.String(), "LEVEL_"))
}
