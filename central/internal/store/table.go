package store

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Table stores objects of one kind as their proto form in a JSONB spec
// column; meta (times, generation) lives in columns and is filled on read.
// The package that declares a Table is the writer of its table.
type Table[T proto.Message] struct {
	Name string
	New  func() T
	// Key is the primary key column; "id" when empty.
	Key string
	// Spec is the SQL expression read as the object's spec; "spec" when
	// empty. A table whose column is the truth for a field (ips.machine_id)
	// overlays it here, so every read — get, list, RETURNING — agrees.
	Spec string
}

// KeyCol is the primary key column.
func (t Table[T]) KeyCol() string {
	if t.Key == "" {
		return "id"
	}
	return t.Key
}

// Col is an extra, constrained column written next to spec.
type Col struct {
	Name string
	Val  any
}

// selectCols are the columns scan reads, in its order.
func (t Table[T]) selectCols() string {
	spec := t.Spec
	if spec == "" {
		spec = "spec"
	}
	return spec + `, generation, created_at, updated_at`
}

func (t Table[T]) scan(row pgx.Row) (T, error) {
	var (
		spec             []byte
		gen              int64
		created, updated time.Time
	)
	m := t.New()
	if err := row.Scan(&spec, &gen, &created, &updated); err != nil {
		return m, err
	}
	if err := DecodeSpec(spec, m); err != nil {
		return m, fmt.Errorf("decode %s spec: %w", t.Name, err)
	}
	SetMeta(m, &apiv1.Meta{CreatedAt: timestamppb.New(created), UpdatedAt: timestamppb.New(updated), Generation: uint64(gen)})
	return m, nil
}

// Get reads one object.
func (t Table[T]) Get(ctx context.Context, db Querier, id string) (T, error) {
	return t.scan(db.QueryRow(ctx, `SELECT `+t.selectCols()+` FROM `+t.Name+` WHERE `+t.KeyCol()+` = $1`, id))
}

// GetForUpdate reads one object and locks its row for the rest of the transaction.
func (t Table[T]) GetForUpdate(ctx context.Context, db Querier, id string) (T, error) {
	return t.scan(db.QueryRow(ctx, `SELECT `+t.selectCols()+` FROM `+t.Name+` WHERE `+t.KeyCol()+` = $1 FOR UPDATE`, id))
}

// List returns rows matching where (SQL after WHERE, may be "TRUE"), ordered by key.
func (t Table[T]) List(ctx context.Context, db Querier, where string, args ...any) ([]T, error) {
	rows, err := db.Query(ctx, `SELECT `+t.selectCols()+` FROM `+t.Name+` WHERE `+where+` ORDER BY `+t.KeyCol(), args...)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", t.Name, err)
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		m, err := t.scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, m)
	}
	return out, rows.Err()
}

// Insert writes a new row.
func (t Table[T]) Insert(ctx context.Context, tx pgx.Tx, id string, m T, extra ...Col) (T, error) {
	spec, err := EncodeSpec(m)
	if err != nil {
		return m, err
	}
	names := []string{t.KeyCol(), "spec"}
	vals := []any{id, spec}
	for _, c := range extra {
		names = append(names, c.Name)
		vals = append(vals, c.Val)
	}
	ph := make([]string, len(vals))
	for i := range ph {
		ph[i] = fmt.Sprintf("$%d", i+1)
	}
	q := `INSERT INTO ` + t.Name + ` (` + strings.Join(names, ", ") + `) VALUES (` + strings.Join(ph, ", ") + `) RETURNING ` + t.selectCols()
	return t.scan(tx.QueryRow(ctx, q, vals...))
}

// Update overwrites the row's spec and extra columns and bumps its generation.
func (t Table[T]) Update(ctx context.Context, tx pgx.Tx, id string, m T, extra ...Col) (T, error) {
	spec, err := EncodeSpec(m)
	if err != nil {
		return m, err
	}
	sets := []string{"spec = $2", "generation = generation + 1", "updated_at = now()"}
	vals := []any{id, spec}
	for _, c := range extra {
		vals = append(vals, c.Val)
		sets = append(sets, fmt.Sprintf("%s = $%d", c.Name, len(vals)))
	}
	q := `UPDATE ` + t.Name + ` SET ` + strings.Join(sets, ", ") + ` WHERE ` + t.KeyCol() + ` = $1 RETURNING ` + t.selectCols()
	return t.scan(tx.QueryRow(ctx, q, vals...))
}

// Delete removes the row and returns what it held.
func (t Table[T]) Delete(ctx context.Context, tx pgx.Tx, id string) (T, error) {
	return t.scan(tx.QueryRow(ctx, `DELETE FROM `+t.Name+` WHERE `+t.KeyCol()+` = $1 RETURNING `+t.selectCols(), id))
}

// Kind is how the table's objects are named in errors and audit targets.
func (t Table[T]) Kind() string {
	return strings.ReplaceAll(strings.TrimSuffix(t.Name, "s"), "_", "-")
}

// Create inserts m with its audit row in one transaction; project is the
// audit's project, if any.
func (t Table[T]) Create(ctx context.Context, s *Store, id, project string, m T, extra ...Col) (T, error) {
	var out T
	err := s.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		if out, err = t.Insert(ctx, tx, id, m, extra...); err != nil {
			return err
		}
		return Audit(ctx, tx, t.Kind()+"/"+id, project)
	})
	return out, err
}

// Replace overwrites the object's spec (and extra columns) with its audit row.
func (t Table[T]) Replace(ctx context.Context, s *Store, id, project string, m T, extra ...Col) (T, error) {
	var out T
	err := s.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		if out, err = t.Update(ctx, tx, id, m, extra...); err != nil {
			return err
		}
		return Audit(ctx, tx, t.Kind()+"/"+id, project)
	})
	return out, err
}

// Modify locks the object, lets edit change it (edit returns the extra
// columns to write and the audit's project) and stores it with its audit row.
func (t Table[T]) Modify(ctx context.Context, s *Store, id string, edit func(T) ([]Col, string)) (T, error) {
	var out T
	err := s.Tx(ctx, func(tx pgx.Tx) error {
		m, err := t.GetForUpdate(ctx, tx, id)
		if err != nil {
			return err
		}
		extra, project := edit(m)
		if out, err = t.Update(ctx, tx, id, m, extra...); err != nil {
			return err
		}
		return Audit(ctx, tx, t.Kind()+"/"+id, project)
	})
	return out, err
}

// Remove deletes the object with its audit row.
func (t Table[T]) Remove(ctx context.Context, s *Store, id, project string) (T, error) {
	var out T
	err := s.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		if out, err = t.Delete(ctx, tx, id); err != nil {
			return err
		}
		return Audit(ctx, tx, t.Kind()+"/"+id, project)
	})
	return out, err
}

// EncodeSpec is m as stored in a spec column: without its meta, which is
// derived from columns.
func EncodeSpec(m proto.Message) ([]byte, error) {
	c := proto.Clone(m)
	SetMeta(c, nil)
	b, err := protojson.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode spec: %w", err)
	}
	return b, nil
}

// DecodeSpec reads a spec column into m, ignoring fields it does not know.
func DecodeSpec(spec []byte, m proto.Message) error {
	return protojson.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(spec, m)
}

// SetMeta sets the message's "meta" field; every stored kind has one.
func SetMeta(m proto.Message, meta *apiv1.Meta) {
	r := m.ProtoReflect()
	fd := r.Descriptor().Fields().ByName("meta")
	if fd == nil {
		return
	}
	if meta == nil {
		r.Clear(fd)
		return
	}
	r.Set(fd, protoreflect.ValueOfMessage(meta.ProtoReflect()))
}
