package cli

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"google.golang.org/protobuf/reflect/protoreflect"
)

// The CLI speaks one vocabulary to people in every output format: the
// table's. An enum value is a lower-case word without its type's prefix,
// dashes between words ("PROVISIONING_STATE_PHONED_HOME" → "phoned-home"),
// and 64-bit integers are JSON numbers, not the strings protojson makes of
// them. JSON and YAML input (apply, create -f) takes this form as well as
// the proto names, so what metalctl prints can be fed back to it.

// enumPrefix is the part of an enum's value names that names the type:
// the zero value's name without "UNSPECIFIED" (buf's enum rules), e.g.
// "MACHINE_STATE_".
func enumPrefix(desc protoreflect.EnumDescriptor) string {
	if z := desc.Values().ByNumber(0); z != nil {
		if p, ok := strings.CutSuffix(string(z.Name()), "UNSPECIFIED"); ok {
			return p
		}
	}
	return ""
}

// enumWordOverride gives values whose plain word would mislead. The lock
// state of a machine that is neither locked nor reserved is AVAILABLE in
// the API, which in a table next to an allocated machine reads as "free".
func enumWordOverride(name protoreflect.FullName) string {
	switch name {
	case "metalfleet.api.v1.MACHINE_STATE_AVAILABLE":
		return "unlocked"
	}
	return ""
}

// enumWord is a value's word for people; the unspecified value is empty.
func enumWord(v protoreflect.EnumValueDescriptor) string {
	if v.Number() == 0 {
		return ""
	}
	if w := enumWordOverride(v.FullName()); w != "" {
		return w
	}
	desc := v.Parent().(protoreflect.EnumDescriptor)
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(string(v.Name()), enumPrefix(desc))), "_", "-")
}

// enumShort shows an enum value as its word ("MACHINE_STATE_LOCKED" →
// "locked"); the unspecified value is empty.
func enumShort(e protoreflect.Enum) string {
	if e.Number() == 0 {
		return ""
	}
	v := e.Descriptor().Values().ByNumber(e.Number())
	if v == nil {
		return strconv.Itoa(int(e.Number()))
	}
	return enumWord(v)
}

// enumByWord finds a value by its word or its proto name (case and
// dashes or underscores do not matter); not the unspecified value.
func enumByWord(desc protoreflect.EnumDescriptor, s string) (protoreflect.EnumValueDescriptor, bool) {
	s = strings.TrimSpace(s)
	if v := desc.Values().ByName(protoreflect.Name(s)); v != nil && v.Number() != 0 {
		return v, true
	}
	norm := func(w string) string { return strings.ReplaceAll(strings.ToLower(w), "_", "-") }
	s = norm(s)
	vals := desc.Values()
	for i := range vals.Len() {
		v := vals.Get(i)
		if v.Number() != 0 && (enumWord(v) == s || norm(string(v.Name())) == s) {
			return v, true
		}
	}
	return nil, false
}

// parseEnum accepts a value's word (or its proto name) and rejects the
// unspecified value.
func parseEnum(flag, value string, desc protoreflect.EnumDescriptor) (protoreflect.EnumNumber, error) {
	if v, ok := enumByWord(desc, value); ok {
		return v.Number(), nil
	}
	return 0, fmt.Errorf("%s %q: want one of %s", flag, value, strings.Join(enumChoices(desc), ", "))
}

func enumChoices(desc protoreflect.EnumDescriptor) []string {
	var out []string
	vals := desc.Values()
	for i := range vals.Len() {
		if v := vals.Get(i); v.Number() != 0 {
			out = append(out, enumWord(v))
		}
	}
	return out
}

// toPeople rewrites a message's protojson form (proto field names) into
// the people's vocabulary, keeping the field order.
func toPeople(b []byte, md protoreflect.MessageDescriptor) ([]byte, error) {
	return rewriteJSON(b, md, true)
}

// fromPeople rewrites the people's vocabulary back to what protojson
// reads: enum words become proto names (numbers it reads as they are).
func fromPeople(b []byte, md protoreflect.MessageDescriptor) ([]byte, error) {
	return rewriteJSON(b, md, false)
}

func rewriteJSON(b []byte, md protoreflect.MessageDescriptor, out bool) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	v, err := readJSON(dec)
	if err != nil {
		return nil, fmt.Errorf("decode JSON: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("decode JSON: more than one value")
	}
	v = rewriteMessage(v, md, out)
	var buf bytes.Buffer
	if err := writeJSON(&buf, v); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// jsonObject keeps its members in order: protojson writes fields in
// declaration order, and people read them so.
type jsonObject []jsonMember

type jsonMember struct {
	key string
	val any
}

// readJSON reads one value: jsonObject, []any, json.Number, string, bool
// or nil.
func readJSON(dec *json.Decoder) (any, error) {
	t, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t {
	case json.Delim('{'):
		obj := jsonObject{}
		for dec.More() {
			k, err := dec.Token()
			if err != nil {
				return nil, err
			}
			key, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("object key %v", k)
			}
			v, err := readJSON(dec)
			if err != nil {
				return nil, err
			}
			obj = append(obj, jsonMember{key, v})
		}
		_, err := dec.Token()
		return obj, err
	case json.Delim('['):
		list := []any{}
		for dec.More() {
			v, err := readJSON(dec)
			if err != nil {
				return nil, err
			}
			list = append(list, v)
		}
		_, err := dec.Token()
		return list, err
	}
	return t, nil
}

func writeJSON(buf *bytes.Buffer, v any) error {
	switch v := v.(type) {
	case jsonObject:
		buf.WriteByte('{')
		for i, m := range v {
			if i > 0 {
				buf.WriteByte(',')
			}
			k, _ := json.Marshal(m.key)
			buf.Write(k)
			buf.WriteByte(':')
			if err := writeJSON(buf, m.val); err != nil {
				return err
			}
		}
		buf.WriteByte('}')
	case []any:
		buf.WriteByte('[')
		for i, e := range v {
			if i > 0 {
				buf.WriteByte(',')
			}
			if err := writeJSON(buf, e); err != nil {
				return err
			}
		}
		buf.WriteByte(']')
	default:
		b, err := json.Marshal(v)
		if err != nil {
			return fmt.Errorf("encode JSON: %w", err)
		}
		buf.Write(b)
	}
	return nil
}

func rewriteMessage(v any, md protoreflect.MessageDescriptor, out bool) any {
	obj, ok := v.(jsonObject)
	// Well-known types (timestamps, durations, structs) have JSON forms
	// of their own; they stay as they are.
	if !ok || strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return v
	}
	fields := md.Fields()
	for i, m := range obj {
		fd := fields.ByName(protoreflect.Name(m.key))
		if fd == nil {
			fd = fields.ByJSONName(m.key)
		}
		if fd == nil {
			continue // protojson reports it on input
		}
		obj[i].val = rewriteField(m.val, fd, out)
	}
	return obj
}

func rewriteField(v any, fd protoreflect.FieldDescriptor, out bool) any {
	switch {
	case fd.IsList():
		if list, ok := v.([]any); ok {
			for i, e := range list {
				list[i] = rewriteSingle(e, fd, out)
			}
		}
		return v
	case fd.IsMap():
		if obj, ok := v.(jsonObject); ok {
			for i, m := range obj {
				obj[i].val = rewriteSingle(m.val, fd.MapValue(), out)
			}
		}
		return v
	}
	return rewriteSingle(v, fd, out)
}

func rewriteSingle(v any, fd protoreflect.FieldDescriptor, out bool) any {
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		return rewriteMessage(v, fd.Message(), out)
	case protoreflect.EnumKind:
		s, ok := v.(string)
		if !ok {
			return v
		}
		if out {
			if ev := fd.Enum().Values().ByName(protoreflect.Name(s)); ev != nil && ev.Number() != 0 {
				return enumWord(ev)
			}
			return v
		}
		if ev, ok := enumByWord(fd.Enum(), s); ok {
			return string(ev.Name())
		}
		return v
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind,
		protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		// protojson quotes 64-bit integers for JavaScript's sake; people
		// and their jq expect numbers. The digits stay exact.
		if s, ok := v.(string); ok && out {
			if _, err := strconv.ParseInt(s, 10, 64); err == nil {
				return json.Number(s)
			}
			if _, err := strconv.ParseUint(s, 10, 64); err == nil {
				return json.Number(s)
			}
		}
	}
	return v
}
