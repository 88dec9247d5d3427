package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"text/template"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"sigs.k8s.io/yaml"
)

// Output formats.
const (
	formatTable    = "table"
	formatWide     = "wide"
	formatYAML     = "yaml"
	formatJSON     = "json"
	formatTemplate = "template"
)

// column is one table column; wide columns only show with -o wide.
type column[T any] struct {
	header string
	wide   bool
	value  func(T) string
}

// printer writes objects in the format chosen by -o.
type printer struct {
	format    string
	tmpl      *template.Template
	noHeaders bool
	w         io.Writer
}

func (p *printer) isTable() bool { return p.format == formatTable || p.format == formatWide }

// printer validates the output flags before any call is made, so that a
// typo in -o does not surface only after an object was created.
// defaultFormat replaces table when -o was not given (describe shows YAML).
func (a *app) printer(defaultFormat string) (*printer, error) {
	format := a.flags.output
	if !a.root.PersistentFlags().Changed("output") {
		switch {
		case a.flags.template != "":
			format = formatTemplate
		case defaultFormat != "":
			format = defaultFormat
		}
	}
	p := &printer{format: format, noHeaders: a.flags.noHeaders, w: a.root.OutOrStdout()}
	switch format {
	case formatTable, formatWide, formatYAML, formatJSON:
	case formatTemplate:
		if a.flags.template == "" {
			return nil, fmt.Errorf("-o template needs --template")
		}
		t, err := template.New("output").Option("missingkey=zero").Parse(a.flags.template)
		if err != nil {
			return nil, fmt.Errorf("--template: %w", err)
		}
		p.tmpl = t
	default:
		return nil, fmt.Errorf("unknown output format %q: want table, wide, yaml, json or template", format)
	}
	return p, nil
}

func printList[T proto.Message](p *printer, cols []column[T], items []T) error {
	return printMessages(p, cols, items, false)
}

func printOne[T proto.Message](p *printer, cols []column[T], item T) error {
	return printMessages(p, cols, []T{item}, true)
}

// printMessages prints items; single prints an object instead of a list in
// the JSON and YAML formats.
func printMessages[T proto.Message](p *printer, cols []column[T], items []T, single bool) error {
	if p.isTable() {
		var headers []string
		for _, c := range cols {
			if !c.wide || p.format == formatWide {
				headers = append(headers, c.header)
			}
		}
		rows := make([][]string, 0, len(items))
		for _, it := range items {
			row := make([]string, 0, len(headers))
			for _, c := range cols {
				if !c.wide || p.format == formatWide {
					row = append(row, c.value(it))
				}
			}
			rows = append(rows, row)
		}
		return writeTable(p.w, headers, rows, p.noHeaders)
	}
	docs := make([][]byte, 0, len(items))
	for _, it := range items {
		md := it.ProtoReflect().Descriptor()
		b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(it)
		if err != nil {
			return fmt.Errorf("encode %s: %w", md.Name(), err)
		}
		if b, err = toPeople(b, md); err != nil {
			return fmt.Errorf("encode %s: %w", md.Name(), err)
		}
		docs = append(docs, b)
	}
	return p.emit(docs, single)
}

// emit writes JSON documents as json, yaml or template output. protojson
// deliberately randomises whitespace, so its output is re-indented with
// encoding/json, which keeps the field order and makes the bytes stable.
func (p *printer) emit(docs [][]byte, single bool) error {
	if p.format == formatTemplate {
		for _, d := range docs {
			v, err := decodeJSON(d)
			if err != nil {
				return err
			}
			var buf bytes.Buffer
			if err := p.tmpl.Execute(&buf, v); err != nil {
				return fmt.Errorf("--template: %w", err)
			}
			if !bytes.HasSuffix(buf.Bytes(), []byte("\n")) {
				buf.WriteByte('\n')
			}
			if _, err := p.w.Write(buf.Bytes()); err != nil {
				return fmt.Errorf("write output: %w", err)
			}
		}
		return nil
	}
	var raw []byte
	if single && len(docs) == 1 {
		raw = docs[0]
	} else {
		raw = append([]byte("["), bytes.Join(docs, []byte(","))...)
		raw = append(raw, ']')
	}
	var out bytes.Buffer
	if err := json.Indent(&out, raw, "", "  "); err != nil {
		return fmt.Errorf("format JSON: %w", err)
	}
	out.WriteByte('\n')
	b := out.Bytes()
	if p.format == formatYAML {
		y, err := yaml.JSONToYAML(b)
		if err != nil {
			return fmt.Errorf("format YAML: %w", err)
		}
		b = y
	}
	if _, err := p.w.Write(b); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// decodeJSON gives templates the map form of an object; numbers stay
// json.Number so large integers print exactly.
func decodeJSON(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	if err := d.Decode(&v); err != nil {
		return nil, fmt.Errorf("decode JSON: %w", err)
	}
	return v, nil
}

func writeTable(w io.Writer, headers []string, rows [][]string, noHeaders bool) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 8, 2, ' ', 0)
	line := func(cells []string) {
		for i, c := range cells {
			if i > 0 {
				fmt.Fprint(tw, "\t")
			}
			fmt.Fprint(tw, cleanCell(c))
		}
		fmt.Fprint(tw, "\n")
	}
	if !noHeaders {
		line(headers)
	}
	for _, r := range rows {
		line(r)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	// tabwriter pads a cell even when only empty cells follow it.
	var out bytes.Buffer
	for l := range bytes.Lines(buf.Bytes()) {
		out.Write(bytes.TrimRight(l, " \n"))
		out.WriteByte('\n')
	}
	if _, err := w.Write(out.Bytes()); err != nil {
		return fmt.Errorf("write output: %w", err)
	}
	return nil
}

// cleanCell keeps tabs and newlines in values from breaking the columns.
func cleanCell(s string) string {
	return strings.Map(func(r rune) rune {
		if r == '\t' || r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
}

// Cell formatting helpers shared by the nouns.

func formatTime(ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	return ts.AsTime().UTC().Format(time.RFC3339)
}

// formatAge is a kubectl-like coarse duration; a timestamp in the future
// (clock skew) shows as 0s rather than negative.
func formatAge(now time.Time, ts *timestamppb.Timestamp) string {
	if ts == nil {
		return ""
	}
	d := max(now.Sub(ts.AsTime()), 0)
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 48*time.Hour:
		return strconv.Itoa(int(d/time.Hour)) + "h"
	default:
		return strconv.Itoa(int(d/(24*time.Hour))) + "d"
	}
}

func formatLabels(labels map[string]string) string {
	keys := slices.Sorted(maps.Keys(labels))
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, k+"="+labels[k])
	}
	return strings.Join(parts, ",")
}

func formatUint(n uint64) string {
	if n == 0 {
		return ""
	}
	return strconv.FormatUint(n, 10)
}

// parseLabels turns repeated --label key=value flags into a map.
func parseLabels(values []string) (map[string]string, error) {
	if len(values) == 0 {
		return nil, nil
	}
	m := make(map[string]string, len(values))
	for _, kv := range values {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("--label %q: want key=value", kv)
		}
		m[k] = v
	}
	return m, nil
}

// printCall connects, makes one call and prints the object it returns in the
// format the flags ask for.
func printCall[T proto.Message](a *app, cmd *cobra.Command, cols []column[T], call func(context.Context, grpc.ClientConnInterface) (T, error)) error {
	p, err := a.printer("")
	if err != nil {
		return err
	}
	return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		obj, err := call(ctx, cc)
		if err != nil {
			return err
		}
		return printOne(p, cols, obj)
	})
}
