package server

import (
	"strings"
	"unicode/utf8"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// peopleAPIPrefix names the messages whose invalid UTF-8 is an input error
// to report, not a broken peer.
const peopleAPIPrefix = "metalfleet.api.v1."

// lenientCodec is gRPC's proto codec, except for invalid UTF-8 in a string
// field of a people API request. The proto decoder refuses such a request
// as a whole, and gRPC turns every decode error into Internal with no field
// named; this codec instead replaces each invalid byte with NUL, so that
// the interceptor's input check (auth.CheckInput) answers InvalidArgument
// naming the field. Other messages (the agent protocol) decode as before.
type lenientCodec struct {
	encoding.CodecV2
}

func newLenientCodec() lenientCodec {
	return lenientCodec{CodecV2: encoding.GetCodecV2(grpcproto.Name)}
}

func (c lenientCodec) Unmarshal(data mem.BufferSlice, v any) error {
	err := c.CodecV2.Unmarshal(data, v)
	if err == nil {
		return nil
	}
	m, ok := v.(proto.Message)
	if !ok {
		return err
	}
	md := m.ProtoReflect().Descriptor()
	if !strings.HasPrefix(string(md.FullName()), peopleAPIPrefix) {
		return err
	}
	b := data.Materialize() // a copy: changed in place below
	if !nulInvalidUTF8(b, md) {
		return err // not a UTF-8 problem
	}
	proto.Reset(m)
	if err2 := proto.Unmarshal(b, m); err2 != nil {
		return err
	}
	return nil
}

// nulInvalidUTF8 walks the wire form b of a message of type md and
// overwrites each byte of invalid UTF-8 in a string field (nested messages
// and map entries included) with NUL. Lengths stay the same, so the
// enclosing length prefixes stay valid. It reports whether it changed b.
func nulInvalidUTF8(b []byte, md protoreflect.MessageDescriptor) bool {
	changed := false
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return changed
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return changed
			}
			b = b[n:]
			continue
		}
		val, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return changed
		}
		if fd := md.Fields().ByNumber(num); fd != nil {
			switch fd.Kind() {
			case protoreflect.StringKind:
				changed = nulBadBytes(val) || changed
			case protoreflect.MessageKind:
				// Map entries are messages too (key 1, value 2).
				changed = nulInvalidUTF8(val, fd.Message()) || changed
			}
		}
		b = b[n:]
	}
	return changed
}

func nulBadBytes(s []byte) bool {
	changed := false
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRune(s[i:])
		if r == utf8.RuneError && size == 1 {
			s[i] = 0
			changed = true
		}
		i += size
	}
	return changed
}
