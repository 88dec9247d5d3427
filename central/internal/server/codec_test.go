package server

import (
	"bytes"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// FuzzNulInvalidUTF8 feeds arbitrary bytes (untrusted: a request's wire
// form) to the walker the codec runs before its input check: it never
// panics, never changes the length, changes only bytes of invalid UTF-8
// (to NUL), and what it leaves decodes wherever the original would have
// but for its UTF-8.
func FuzzNulInvalidUTF8(f *testing.F) {
	good, _ := proto.Marshal(&apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{Id: "n1", Prefixes: []string{"10.0.0.0/8"},
		Labels: map[string]string{"k": "v"}}})
	f.Add(good)
	bad := bytes.Replace(good, []byte("n1"), []byte{'n', 0xff}, 1)
	f.Add(bad)
	f.Add([]byte{0x0a, 0x80})
	md := (&apiv1.NetworkServiceCreateRequest{}).ProtoReflect().Descriptor()
	f.Fuzz(func(t *testing.T, in []byte) {
		b := bytes.Clone(in)
		changed := nulInvalidUTF8(b, md)
		if len(b) != len(in) {
			t.Fatalf("length changed: %d → %d", len(in), len(b))
		}
		for i := range b {
			if b[i] != in[i] && (b[i] != 0 || utf8.RuneStart(in[i]) && utf8.Valid(in[i:i+1])) {
				t.Fatalf("byte %d changed from %#x to %#x", i, in[i], b[i])
			}
		}
		if changed == bytes.Equal(b, in) {
			t.Fatalf("reported changed=%v but bytes equal=%v", changed, bytes.Equal(b, in))
		}
	})
}

func TestNulInvalidUTF8(t *testing.T) {
	req := &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{Id: "ok", Labels: map[string]string{"key": "val"}}}
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.Replace(b, []byte("val"), []byte{'v', 0xc3, 'l'}, 1)
	md := req.ProtoReflect().Descriptor()
	if !nulInvalidUTF8(b, md) {
		t.Fatal("invalid UTF-8 in a map value not found")
	}
	got := &apiv1.NetworkServiceCreateRequest{}
	if err := proto.Unmarshal(b, got); err != nil {
		t.Fatalf("after the walk: %v", err)
	}
	if v := got.GetNetwork().GetLabels()["key"]; v != "v\x00l" {
		t.Fatalf("label value %q, want the bad byte as NUL", v)
	}
}
