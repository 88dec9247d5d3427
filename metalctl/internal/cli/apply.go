package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"sigs.k8s.io/yaml"
)

// resource binds one API entity to the generic describe, delete, apply and
// create -f commands. Nil funcs mean the entity does not support the verb.
type resource[T proto.Message] struct {
	kind   string
	cols   []column[T]
	newObj func() T
	id     func(T) string
	get    func(ctx context.Context, cc grpc.ClientConnInterface, id string) (T, error)
	create func(ctx context.Context, cc grpc.ClientConnInterface, obj T) (T, error)
	update func(ctx context.Context, cc grpc.ClientConnInterface, obj T) (T, error)
	remove func(ctx context.Context, cc grpc.ClientConnInterface, id string) (T, error)
	// upsert replaces create-then-update-on-AlreadyExists for entities whose
	// identity is not part of the object (projects, IPs).
	upsert func(ctx context.Context, cc grpc.ClientConnInterface, obj T) (T, error)
}

func (r resource[T]) apply(ctx context.Context, cc grpc.ClientConnInterface, obj T) (T, error) {
	if r.upsert != nil {
		return r.upsert(ctx, cc, obj)
	}
	res, err := r.create(ctx, cc, obj)
	if status.Code(err) != codes.AlreadyExists {
		return res, err
	}
	return r.update(ctx, cc, obj)
}

// listCommand makes "list"; the caller adds filter flags that fetch reads.
func listCommand[T proto.Message](a *app, r resource[T], fetch func(ctx context.Context, cc grpc.ClientConnInterface) ([]T, error)) *cobra.Command {
	return &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List " + r.kind + "s",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := a.printer("")
			if err != nil {
				return err
			}
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				items, err := fetch(ctx, cc)
				if err != nil {
					return err
				}
				return printList(p, r.cols, items)
			})
		},
	}
}

func describeCommand[T proto.Message](a *app, r resource[T]) *cobra.Command {
	return &cobra.Command{
		Use:     "describe ID",
		Aliases: []string{"get"},
		Short:   "Show one " + r.kind + " (YAML unless -o is given)",
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.printer(formatYAML)
			if err != nil {
				return err
			}
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				obj, err := r.get(ctx, cc, args[0])
				if err != nil {
					return err
				}
				return printOne(p, r.cols, obj)
			})
		},
	}
}

func deleteCommand[T proto.Message](a *app, r resource[T], use string, aliases ...string) *cobra.Command {
	return &cobra.Command{
		Use:     use + " ID",
		Aliases: aliases,
		Short:   strings.ToUpper(use[:1]) + use[1:] + " a " + r.kind,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := a.printer("")
			if err != nil {
				return err
			}
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				obj, err := r.remove(ctx, cc, args[0])
				if err != nil {
					return err
				}
				return printOne(p, r.cols, obj)
			})
		},
	}
}

func applyCommand[T proto.Message](a *app, r resource[T]) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "apply -f FILE",
		Short: "Create or update " + r.kind + "s from a multi-document YAML file (- for stdin)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runFromFile(a, cmd, r, file, r.apply)
		},
	}
	cmd.Flags().StringVarP(&file, "file", "f", "", "YAML file with "+r.kind+" objects in their API form, - for stdin")
	_ = cmd.MarkFlagRequired("file")
	return cmd
}

// createFromFile lets create commands take -f for entities whose full form
// is unwieldy as flags; unlike apply it never updates.
func createFromFile[T proto.Message](a *app, cmd *cobra.Command, r resource[T], file string) error {
	return runFromFile(a, cmd, r, file, r.create)
}

func runFromFile[T proto.Message](a *app, cmd *cobra.Command, r resource[T], file string, op func(context.Context, grpc.ClientConnInterface, T) (T, error)) error {
	p, err := a.printer("")
	if err != nil {
		return err
	}
	data, err := a.readInput(file)
	if err != nil {
		return err
	}
	objs, err := decodeObjects(data, r.newObj)
	if err != nil {
		return fmt.Errorf("%s: %w", file, err)
	}
	return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		done := make([]T, 0, len(objs))
		for i, obj := range objs {
			res, err := op(ctx, cc, obj)
			if err != nil {
				// Show what did get through before reporting the failure.
				if len(done) > 0 {
					_ = printList(p, r.cols, done)
				}
				return fmt.Errorf("document %d (%s %q): %w", i+1, r.kind, r.id(obj), err)
			}
			done = append(done, res)
		}
		return printList(p, r.cols, done)
	})
}

func (a *app) readInput(file string) ([]byte, error) {
	if file == "-" {
		in := a.root.InOrStdin()
		b, err := io.ReadAll(in)
		if err != nil {
			return nil, fmt.Errorf("read stdin: %w", err)
		}
		return b, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read input: %w", err)
	}
	return b, nil
}

// decodeObjects parses multi-document YAML (or JSON) in the protojson form
// of T or the people's form metalctl prints (enum words, see vocab.go). A document may also be a list of objects. Unknown fields are errors
// so typos do not silently drop settings.
func decodeObjects[T proto.Message](data []byte, newObj func() T) ([]T, error) {
	var out []T
	for _, doc := range splitYAMLDocuments(data) {
		j, err := yaml.YAMLToJSON(doc)
		if err != nil {
			return nil, fmt.Errorf("document %d: %w", len(out)+1, err)
		}
		j = bytes.TrimSpace(j)
		if bytes.Equal(j, []byte("null")) {
			continue // empty or comment-only document
		}
		items := []json.RawMessage{j}
		if j[0] == '[' {
			if err := json.Unmarshal(j, &items); err != nil {
				return nil, fmt.Errorf("document %d: %w", len(out)+1, err)
			}
		}
		for _, it := range items {
			obj := newObj()
			it, err := fromPeople(it, obj.ProtoReflect().Descriptor())
			if err != nil {
				return nil, fmt.Errorf("document %d: %w", len(out)+1, err)
			}
			if err := protojson.Unmarshal(it, obj); err != nil {
				return nil, fmt.Errorf("document %d: %w", len(out)+1, err)
			}
			out = append(out, obj)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no objects found")
	}
	return out, nil
}

// splitYAMLDocuments splits at "---" separator lines.
func splitYAMLDocuments(data []byte) [][]byte {
	var docs [][]byte
	var cur bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), len(data)+1)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if line == "---" || strings.HasPrefix(line, "--- ") || strings.HasPrefix(line, "---\t") {
			docs = append(docs, bytes.Clone(cur.Bytes()))
			cur.Reset()
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
	}
	return append(docs, cur.Bytes())
}

// createOne creates obj and prints the result as the server returned it.
func createOne[T proto.Message](a *app, cmd *cobra.Command, r resource[T], obj T) error {
	p, err := a.printer("")
	if err != nil {
		return err
	}
	return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
		res, err := r.create(ctx, cc, obj)
		if err != nil {
			return err
		}
		return printOne(p, r.cols, res)
	})
}
