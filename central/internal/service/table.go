package service

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

	"github.com/metalfleet/metalfleet/central/internal/ipam"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// table stores objects of one kind as their proto form in a JSONB spec
// column; meta (times, generation) lives in columns and is filled on read.
type table[T proto.Message] struct {
	name  string
	newFn func() T
	// key is the primary key column; "id" when empty.
	key string
	// spec is the SQL expression read as the object's spec; "spec" when
	// empty. A table whose column is the truth for a field (ips.machine_id)
	// overlays it here, so every read — get, list, RETURNING — agrees.
	spec string
}

func (t table[T]) keyCol() string {
	if t.key == "" {
		return "id"
	}
	return t.key
}

// col is an extra, constrained column written next to spec.
type col struct {
	name string
	val  any
}

// selectCols are the columns scan reads, in its order.
func (t table[T]) selectCols() string {
	spec := t.spec
	if spec == "" {
		spec = "spec"
	}
	return spec + `, generation, created_at, updated_at`
}

func (t table[T]) scan(row pgx.Row) (T, error) {
	var (
		spec             []byte
		gen              int64
		created, updated time.Time
	)
	m := t.newFn()
	if err := row.Scan(&spec, &gen, &created, &updated); err != nil {
		return m, err
	}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(spec, m); err != nil {
		return m, fmt.Errorf("decode %s spec: %w", t.name, err)
	}
	setMeta(m, &apiv1.Meta{CreatedAt: timestamppb.New(created), UpdatedAt: timestamppb.New(updated), Generation: uint64(gen)})
	return m, nil
}

func (t table[T]) get(ctx context.Context, db ipam.DB, id string) (T, error) {
	return t.scan(db.QueryRow(ctx, `SELECT `+t.selectCols()+` FROM `+t.name+` WHERE `+t.keyCol()+` = $1`, id))
}

// getForUpdate locks the row for the rest of the transaction.
func (t table[T]) getForUpdate(ctx context.Context, db ipam.DB, id string) (T, error) {
	return t.scan(db.QueryRow(ctx, `SELECT `+t.selectCols()+` FROM `+t.name+` WHERE `+t.keyCol()+` = $1 FOR UPDATE`, id))
}

// list returns rows matching where (SQL after WHERE, may be "TRUE"), ordered by id.
func (t table[T]) list(ctx context.Context, db ipam.DB, where string, args ...any) ([]T, error) {
	rows, err := db.Query(ctx, `SELECT `+t.selectCols()+` FROM `+t.name+` WHERE `+where+` ORDER BY `+t.keyCol(), args...)
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", t.name, err)
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

func (t table[T]) insert(ctx context.Context, tx pgx.Tx, id string, m T, extra ...col) (T, error) {
	spec, err := encodeSpec(m)
	if err != nil {
		return m, err
	}
	names := []string{t.keyCol(), "spec"}
	vals := []any{id, spec}
	for _, c := range extra {
		names = append(names, c.name)
		vals = append(vals, c.val)
	}
	ph := make([]string, len(vals))
	for i := range ph {
		ph[i] = fmt.Sprintf("$%d", i+1)
	}
	q := `INSERT INTO ` + t.name + ` (` + strings.Join(names, ", ") + `) VALUES (` + strings.Join(ph, ", ") + `) RETURNING ` + t.selectCols()
	return t.scan(tx.QueryRow(ctx, q, vals...))
}

func (t table[T]) update(ctx context.Context, tx pgx.Tx, id string, m T, extra ...col) (T, error) {
	spec, err := encodeSpec(m)
	if err != nil {
		return m, err
	}
	sets := []string{"spec = $2", "generation = generation + 1", "updated_at = now()"}
	vals := []any{id, spec}
	for _, c := range extra {
		vals = append(vals, c.val)
		sets = append(sets, fmt.Sprintf("%s = $%d", c.name, len(vals)))
	}
	q := `UPDATE ` + t.name + ` SET ` + strings.Join(sets, ", ") + ` WHERE ` + t.keyCol() + ` = $1 RETURNING ` + t.selectCols()
	return t.scan(tx.QueryRow(ctx, q, vals...))
}

func (t table[T]) delete(ctx context.Context, tx pgx.Tx, id string) (T, error) {
	return t.scan(tx.QueryRow(ctx, `DELETE FROM `+t.name+` WHERE `+t.keyCol()+` = $1 RETURNING `+t.selectCols(), id))
}

// encodeSpec stores m without its meta: meta is derived from columns.
func encodeSpec(m proto.Message) ([]byte, error) {
	c := proto.Clone(m)
	setMeta(c, nil)
	b, err := protojson.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("encode spec: %w", err)
	}
	return b, nil
}

// setMeta sets the message's "meta" field; every stored kind has one.
func setMeta(m proto.Message, meta *apiv1.Meta) {
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

// kindName is how a table's objects are named in errors and audit targets.
func (t table[T]) kindName() string {
	return strings.ReplaceAll(strings.TrimSuffix(t.name, "s"), "_", "-")
}

// create inserts m with its audit row; project is the audit's project, if any.
func create[T proto.Message](ctx context.Context, a *API, t table[T], id, project string, m T, extra ...col) (T, error) {
	var out T
	err := a.store.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		if out, err = t.insert(ctx, tx, id, m, extra...); err != nil {
			return err
		}
		return a.audit(ctx, tx, t.kindName()+"/"+id, project)
	})
	return out, toStatus(err, t.kindName()+" "+quote(id))
}

// replace overwrites the object's spec (and extra columns) with its audit row.
func replace[T proto.Message](ctx context.Context, a *API, t table[T], id, project string, m T, extra ...col) (T, error) {
	var out T
	err := a.store.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		if out, err = t.update(ctx, tx, id, m, extra...); err != nil {
			return err
		}
		return a.audit(ctx, tx, t.kindName()+"/"+id, project)
	})
	return out, toStatus(err, t.kindName()+" "+quote(id))
}

// modify locks the object, lets edit change it (edit returns the extra
// columns to write and the audit's project) and stores it with its audit row.
func modify[T proto.Message](ctx context.Context, a *API, t table[T], id string, edit func(T) ([]col, string)) (T, error) {
	var out T
	err := a.store.Tx(ctx, func(tx pgx.Tx) error {
		m, err := t.getForUpdate(ctx, tx, id)
		if err != nil {
			return err
		}
		extra, project := edit(m)
		if out, err = t.update(ctx, tx, id, m, extra...); err != nil {
			return err
		}
		return a.audit(ctx, tx, t.kindName()+"/"+id, project)
	})
	return out, toStatus(err, t.kindName()+" "+quote(id))
}

// requiredKey is the answer to an empty key: the same InvalidArgument with
// the field as every handler's own validation, not a NotFound that an empty
// row id would give.
func (t table[T]) requiredKey() error {
	var v violations
	v.add(t.keyCol(), "required")
	return v.err()
}

// remove deletes the object with its audit row.
func remove[T proto.Message](ctx context.Context, a *API, t table[T], id, project string) (T, error) {
	var out T
	if id == "" {
		return out, t.requiredKey()
	}
	err := a.store.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		if out, err = t.delete(ctx, tx, id); err != nil {
			return err
		}
		return a.audit(ctx, tx, t.kindName()+"/"+id, project)
	})
	return out, toStatus(err, t.kindName()+" "+quote(id))
}

// fetch reads one object outside a transaction.
func fetch[T proto.Message](ctx context.Context, a *API, t table[T], id string) (T, error) {
	if id == "" {
		var zero T
		return zero, t.requiredKey()
	}
	out, err := t.get(ctx, a.store.Pool(), id)
	return out, toStatus(err, t.kindName()+" "+quote(id))
}
