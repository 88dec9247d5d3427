package server_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// logCapture records what the server logs: the longest line and the text.
type logCapture struct {
	mu      sync.Mutex
	longest int
	buf     bytes.Buffer
}

func (c *logCapture) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for line := range bytes.SplitSeq(p, []byte("\n")) {
		c.longest = max(c.longest, len(line))
	}
	c.buf.Write(p)
	return len(p), nil
}

func (c *logCapture) stats() (longest int, text string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.longest, c.buf.String()
}

// rawRequest is a request already in wire form: the Go encoder refuses
// invalid UTF-8, which a hostile client sends anyway.
type rawRequest []byte

// rawCodec sends rawRequests as they are and everything else as protobuf.
type rawCodec struct{ encoding.CodecV2 }

func (c rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	if r, isRaw := v.(*rawRequest); isRaw {
		return mem.BufferSlice{mem.SliceBuffer(*r)}, nil
	}
	return c.CodecV2.Marshal(v)
}

// utf8Placeholder is swapped for utf8Invalid (same length) in the wire form.
const (
	utf8Placeholder = "\x01HOSTILE-UTF8\x01"
	utf8Invalid     = "\xffHOSTILE-UTF8\xfe"
)

// hostileString is one kind of bad string.
type hostileString struct {
	name string
	val  string
}

var hostileStrings = []hostileString{
	{"NUL", "a\x00b"},
	{"invalid UTF-8", utf8Placeholder},
	{"1 MB", strings.Repeat("x", 1<<20)},
}

// variant is one hostile request: base with one field made bad.
type variant struct {
	name string
	// generic variants break an input rule every request obeys: they must
	// be InvalidArgument naming path (or, for hostile map keys, a field
	// starting with keyOf).
	generic bool
	path    string
	keyOf   string
	set     func(root protoreflect.Message)
}

// hostileVariants builds, for every field of md reachable within depth
// message levels, the variants that make it bad. at finds the field's
// message in the request (creating what is missing).
func hostileVariants(md protoreflect.MessageDescriptor, path string, at func(protoreflect.Message) protoreflect.Message, depth int) []variant {
	var out []variant
	fields := md.Fields()
	for i := 0; i < fields.Len(); i++ {
		fd := fields.Get(i)
		if fd.Name() == "meta" {
			continue // server-owned; the server ignores it in requests
		}
		f := string(fd.Name())
		if path != "" {
			f = path + "." + f
		}
		switch {
		case fd.IsMap():
			out = append(out, mapVariants(fd, f, at)...)
		case fd.IsList():
			out = append(out, listVariants(fd, f, at, depth)...)
		default:
			out = append(out, singularVariants(fd, f, at, depth)...)
		}
	}
	return out
}

func singularVariants(fd protoreflect.FieldDescriptor, f string, at func(protoreflect.Message) protoreflect.Message, depth int) []variant {
	var out []variant
	switch fd.Kind() {
	case protoreflect.StringKind:
		for _, h := range hostileStrings {
			out = append(out, variant{name: f + " " + h.name, generic: true, path: f, set: func(r protoreflect.Message) {
				at(r).Set(fd, protoreflect.ValueOfString(h.val))
			}})
		}
	case protoreflect.EnumKind:
		out = append(out, variant{name: f + " 99", generic: true, path: f, set: func(r protoreflect.Message) {
			at(r).Set(fd, protoreflect.ValueOfEnum(99))
		}})
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		out = append(out, intVariant(fd, f, at, protoreflect.ValueOfUint32(math.MaxUint32)))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		out = append(out, intVariant(fd, f, at, protoreflect.ValueOfUint64(math.MaxUint64)))
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		out = append(out, intVariant(fd, f, at, protoreflect.ValueOfInt32(math.MaxInt32)))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		out = append(out, intVariant(fd, f, at, protoreflect.ValueOfInt64(math.MaxInt64)))
	case protoreflect.MessageKind:
		switch fd.Message().FullName() {
		case "google.protobuf.Duration", "google.protobuf.Timestamp":
			out = append(out, variant{name: f + " negative nanos", generic: true, path: f, set: func(r protoreflect.Message) {
				m := at(r).Mutable(fd).Message()
				m.Set(m.Descriptor().Fields().ByName("seconds"), protoreflect.ValueOfInt64(3600))
				m.Set(m.Descriptor().Fields().ByName("nanos"), protoreflect.ValueOfInt32(-5))
			}})
			return out
		}
		if depth > 0 {
			out = append(out, hostileVariants(fd.Message(), f, func(r protoreflect.Message) protoreflect.Message {
				return at(r).Mutable(fd).Message()
			}, depth-1)...)
		}
	}
	return out
}

// intVariant sets the type's largest value. Where that is meaningful the
// call may succeed (a read), but never with Internal, and never as a write.
func intVariant(fd protoreflect.FieldDescriptor, f string, at func(protoreflect.Message) protoreflect.Message, v protoreflect.Value) variant {
	return variant{name: f + " max", path: f, set: func(r protoreflect.Message) { at(r).Set(fd, v) }}
}

// element is a harmless list element of fd's kind.
func element(l protoreflect.List, fd protoreflect.FieldDescriptor) {
	switch fd.Kind() {
	case protoreflect.StringKind:
		l.Append(protoreflect.ValueOfString("x"))
	case protoreflect.EnumKind:
		l.Append(protoreflect.ValueOfEnum(1))
	case protoreflect.MessageKind:
		l.AppendMutable()
	default:
		l.Append(fd.Default())
	}
}

func listVariants(fd protoreflect.FieldDescriptor, f string, at func(protoreflect.Message) protoreflect.Message, depth int) []variant {
	out := []variant{{name: f + " 10000 elements", generic: true, path: f, set: func(r protoreflect.Message) {
		m := at(r)
		m.Clear(fd)
		l := m.Mutable(fd).List()
		for range 10000 {
			element(l, fd)
		}
	}}}
	switch fd.Kind() {
	case protoreflect.StringKind:
		for _, h := range hostileStrings {
			// Index 1: the tightest list cap (address families) is 2.
			out = append(out, variant{name: f + "[1] " + h.name, generic: true, path: f + "[1]", set: func(r protoreflect.Message) {
				m := at(r)
				m.Clear(fd)
				l := m.Mutable(fd).List()
				l.Append(protoreflect.ValueOfString("x"))
				l.Append(protoreflect.ValueOfString(h.val))
			}})
		}
	case protoreflect.EnumKind:
		out = append(out, variant{name: f + "[0] 99", generic: true, path: f + "[0]", set: func(r protoreflect.Message) {
			m := at(r)
			m.Clear(fd)
			m.Mutable(fd).List().Append(protoreflect.ValueOfEnum(99))
		}})
	case protoreflect.MessageKind:
		if depth > 0 {
			out = append(out, hostileVariants(fd.Message(), f+"[0]", func(r protoreflect.Message) protoreflect.Message {
				l := at(r).Mutable(fd).List()
				if l.Len() == 0 {
					l.AppendMutable()
				}
				return l.Get(0).Message()
			}, depth-1)...)
		}
	}
	return out
}

func mapValue(m protoreflect.Map, fd protoreflect.FieldDescriptor) protoreflect.Value {
	switch fd.MapValue().Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString("v")
	case protoreflect.EnumKind:
		return protoreflect.ValueOfEnum(1)
	case protoreflect.MessageKind:
		return m.NewValue()
	}
	return fd.MapValue().Default()
}

func mapVariants(fd protoreflect.FieldDescriptor, f string, at func(protoreflect.Message) protoreflect.Message) []variant {
	key := func(k string) protoreflect.MapKey { return protoreflect.ValueOfString(k).MapKey() }
	out := []variant{{name: f + " 10000 entries", generic: true, path: f, set: func(r protoreflect.Message) {
		mp := at(r).Mutable(fd).Map()
		for i := range 10000 {
			mp.Set(key("k"+strconv.Itoa(i)), mapValue(mp, fd))
		}
	}}}
	for _, h := range hostileStrings {
		out = append(out, variant{name: f + " key " + h.name, generic: true, keyOf: f + "[", set: func(r protoreflect.Message) {
			mp := at(r).Mutable(fd).Map()
			mp.Set(key(h.val), mapValue(mp, fd))
		}})
	}
	switch fd.MapValue().Kind() {
	case protoreflect.StringKind:
		for _, h := range hostileStrings {
			out = append(out, variant{name: f + " value " + h.name, generic: true, path: f + `["k"]`, set: func(r protoreflect.Message) {
				at(r).Mutable(fd).Map().Set(key("k"), protoreflect.ValueOfString(h.val))
			}})
		}
	case protoreflect.EnumKind:
		out = append(out, variant{name: f + " value 99", generic: true, path: f + `["k"]`, set: func(r protoreflect.Message) {
			at(r).Mutable(fd).Map().Set(key("k"), protoreflect.ValueOfEnum(99))
		}})
	}
	return out
}

// peopleMethods are every RPC of the people API, from the registry, so that
// a new one is covered without touching this test.
func peopleMethods(t *testing.T) []protoreflect.MethodDescriptor {
	var out []protoreflect.MethodDescriptor
	protoregistry.GlobalFiles.RangeFilesByPackage("metalfleet.api.v1", func(fd protoreflect.FileDescriptor) bool {
		for i := 0; i < fd.Services().Len(); i++ {
			sd := fd.Services().Get(i)
			for j := 0; j < sd.Methods().Len(); j++ {
				out = append(out, sd.Methods().Get(j))
			}
		}
		return true
	})
	if len(out) < 40 {
		t.Fatalf("only %d people API methods found", len(out))
	}
	return out
}

func fullMethod(md protoreflect.MethodDescriptor) string {
	return "/" + string(md.Parent().FullName()) + "/" + string(md.Name())
}

// invoke calls md with req (a proto message or *rawRequest) and returns the error.
func (e *env) invoke(ctx context.Context, md protoreflect.MethodDescriptor, req any) error {
	rt, err := protoregistry.GlobalTypes.FindMessageByName(md.Output().FullName())
	if err != nil {
		return err
	}
	resp := rt.New().Interface()
	opt := grpc.ForceCodecV2(rawCodec{encoding.GetCodecV2(grpcproto.Name)})
	if !md.IsStreamingServer() {
		return e.conn.Invoke(ctx, fullMethod(md), req, resp, opt)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := e.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, fullMethod(md), opt)
	if err != nil {
		return err
	}
	if err := st.SendMsg(req); err != nil {
		return err
	}
	if err := st.CloseSend(); err != nil {
		return err
	}
	for {
		if err := st.RecvMsg(resp); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// encode turns req into what is sent: invalid UTF-8 is swapped in after
// encoding, where the placeholder is.
func encode(t *testing.T, req proto.Message) any {
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(req)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	if !bytes.Contains(b, []byte(utf8Placeholder)) {
		return req
	}
	raw := rawRequest(bytes.ReplaceAll(b, []byte(utf8Placeholder), []byte(utf8Invalid)))
	return &raw
}

func violationFields(err error) []string {
	var fields []string
	for _, d := range status.Convert(err).Details() {
		if br, isBR := d.(*errdetails.BadRequest); isBR {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

// TestHostileInput drives every RPC of the people API with NUL bytes,
// invalid UTF-8, 1 MB strings, unknown enum values, malformed durations,
// 10,000-element lists and maps, and the largest integers, as admin: every
// answer is an error naming the field (never Internal), nothing is written,
// and no log line grows with the input.
func TestHostileInput(t *testing.T) {
	logs := &logCapture{}
	e := newMatrixEnvOn(t, newEnvLog(t, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	// Valid requests for the methods whose integers only their handler
	// checks, so that the integer, not a missing field, is what fails.
	bases := map[string]proto.Message{
		"/metalfleet.api.v1.SizeReservationService/Create": &apiv1.SizeReservationServiceCreateRequest{SizeReservation: &apiv1.SizeReservation{
			Id: "hostile-sr", SizeId: "fix", PartitionId: "fra1", ProjectId: e.p1, Amount: 1}},
		"/metalfleet.api.v1.SizeReservationService/Update": &apiv1.SizeReservationServiceUpdateRequest{SizeReservation: &apiv1.SizeReservation{
			Id: e.srP1, SizeId: "fix", PartitionId: "fra1", ProjectId: e.p1, Amount: 1}},
		"/metalfleet.api.v1.NetworkService/Create": &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
			Id: "hostile-ext", Type: typeExternal, Prefixes: []string{"198.51.100.0/24"}}},
		"/metalfleet.api.v1.NetworkService/Allocate": &apiv1.NetworkServiceAllocateRequest{ProjectId: e.p1, PartitionId: "fra1", Name: "hostile"},
		"/metalfleet.api.v1.TokenService/Create":     &apiv1.TokenServiceCreateRequest{Description: "hostile", ProjectRoles: map[string]apiv1.Level{e.p1: apiv1.Level_LEVEL_VIEWER}},
	}
	auditBefore := e.count(t, `SELECT count(*) FROM audit`)
	before := e.fingerprint(t)

	calls := 0
	for _, md := range peopleMethods(t) {
		method := fullMethod(md)
		mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
		if err != nil {
			t.Fatal(err)
		}
		base := mt.New().Interface()
		if b, found := bases[method]; found {
			base = b
		}
		for _, v := range hostileVariants(md.Input(), "", func(r protoreflect.Message) protoreflect.Message { return r }, 3) {
			calls++
			req := proto.Clone(base)
			v.set(req.ProtoReflect())
			err := e.invoke(e.as(t, e.admin), md, encode(t, req))
			name := method + " " + v.name
			code := status.Code(err)
			switch {
			case code == codes.Internal || code == codes.Unknown || code == codes.DataLoss || code == codes.DeadlineExceeded:
				t.Errorf("%s: %v", name, err)
				continue
			case err == nil && (v.generic || isMutating(method)):
				t.Errorf("%s: accepted", name)
				continue
			case len(status.Convert(err).Message()) > 2048:
				t.Errorf("%s: status message of %d bytes", name, len(status.Convert(err).Message()))
			}
			fields := violationFields(err)
			if code == codes.InvalidArgument && len(fields) == 0 {
				t.Errorf("%s: InvalidArgument without a field violation: %v", name, err)
			}
			if !v.generic {
				continue
			}
			switch {
			case code != codes.InvalidArgument:
				t.Errorf("%s: %v, want InvalidArgument", name, err)
			case v.keyOf != "" && !slices.ContainsFunc(fields, func(f string) bool { return strings.HasPrefix(f, v.keyOf) }):
				t.Errorf("%s: violations %v name no key of %s", name, fields, v.keyOf)
			case v.keyOf == "" && !slices.Contains(fields, v.path):
				t.Errorf("%s: violations %v do not name %s", name, fields, v.path)
			}
		}
	}

	// A secret typed into an id field reaches neither the answer nor the log.
	secret := e.p1Owner.token
	err := e.invoke(e.as(t, e.admin), apiv1.File_metalfleet_api_v1_partition_proto.Services().ByName("PartitionService").Methods().ByName("Get"),
		&apiv1.PartitionServiceGetRequest{Id: secret})
	if code := status.Code(err); code != codes.NotFound && code != codes.InvalidArgument {
		t.Errorf("Get with a secret as id: %v", err)
	}
	if strings.Contains(status.Convert(err).Message(), secret) {
		t.Errorf("status message repeats the secret: %v", err)
	}

	t.Logf("%d hostile calls", calls)
	if after := e.count(t, `SELECT count(*) FROM audit`); after != auditBefore {
		t.Errorf("audit rows %d → %d: hostile calls wrote", auditBefore, after)
	}
	if after := e.fingerprint(t); after != before {
		t.Errorf("hostile calls changed the database")
	}
	longest, text := logs.stats()
	if longest >= 4096 {
		t.Errorf("longest log line %d bytes, want < 4 KiB", longest)
	}
	if strings.Contains(text, secret) {
		t.Errorf("the log contains a secret sent as an id")
	}
	if strings.Contains(text, "SQLSTATE") || strings.Contains(text, "invalid byte sequence") {
		t.Logf("note: the log holds database errors (server side only)")
	}
}

// TestEmptyIDIsInvalidArgument: a call that names its object by id and
// sends none is InvalidArgument with the field, whether the interceptor or
// the handler notices (never NotFound).
func TestEmptyIDIsInvalidArgument(t *testing.T) {
	e := newEnv(t)
	verbs := []string{"Get", "Delete", "Revoke", "Release", "Reinstall", "SetState", "Configure", "Events", "Update"}
	for _, md := range peopleMethods(t) {
		if !slices.Contains(verbs, string(md.Name())) {
			continue
		}
		t.Run(string(md.Parent().Name())+"/"+string(md.Name()), func(t *testing.T) {
			mt, err := protoregistry.GlobalTypes.FindMessageByName(md.Input().FullName())
			if err != nil {
				t.Fatal(err)
			}
			err = e.invoke(e.as(t, e.admin), md, mt.New().Interface())
			if status.Code(err) != codes.InvalidArgument || len(violationFields(err)) == 0 {
				t.Fatalf("%v, want InvalidArgument with a field violation", err)
			}
		})
	}
}

// TestTokenRolesOnMissingObjects: a role on a project or tenant that does
// not exist is refused, naming it.
func TestTokenRolesOnMissingObjects(t *testing.T) {
	e := newEnv(t)
	missing := "00000000-0000-4000-8000-000000000000"
	e.rejectAll(t, e.admin, []reject{
		{name: "project", field: `project_roles["` + missing + `"]`, call: call(e.api.Token.Create, &apiv1.TokenServiceCreateRequest{
			ProjectRoles: map[string]apiv1.Level{missing: apiv1.Level_LEVEL_VIEWER, e.p1: apiv1.Level_LEVEL_VIEWER}})},
		{name: "tenant", field: `tenant_roles["nope"]`, call: call(e.api.Token.Create, &apiv1.TokenServiceCreateRequest{
			TenantRoles: map[string]apiv1.Level{"nope": apiv1.Level_LEVEL_VIEWER}})},
	})
}

// TestRPCLogNamesSubject: the log line of a call names who made it (the
// token id, as the audit row does) and its request id, never the token.
func TestRPCLogNamesSubject(t *testing.T) {
	logs := &logCapture{}
	e := newEnvLog(t, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ctx := metadata.AppendToOutgoingContext(e.as(t, e.admin), "x-request-id", "subject-check-1")
	_, err := e.api.Partition.Get(ctx, &apiv1.PartitionServiceGetRequest{Id: "nope"})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("get: %v", err)
	}
	_, text := logs.stats()
	var line string
	for l := range strings.SplitSeq(text, "\n") {
		if strings.Contains(l, "request_id=subject-check-1") {
			line = l
		}
	}
	if !strings.Contains(line, "subject="+e.admin.tokenID) || strings.Contains(line, e.admin.token) {
		t.Fatalf("rpc log line %q: want subject=%s and no secret", line, e.admin.tokenID)
	}
}
