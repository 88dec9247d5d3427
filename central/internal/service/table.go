package service

import (
	"context"

	"google.golang.org/protobuf/proto"

	"github.com/metalfleet/metalfleet/central/internal/store"
)

// The store's audit-in-the-same-transaction CRUD (store.Table), with the
// service's error mapping: what a gRPC caller gets.

// create inserts m with its audit row; project is the audit's project, if any.
func create[T proto.Message](ctx context.Context, a *API, t store.Table[T], id, project string, m T, extra ...store.Col) (T, error) {
	out, err := t.Create(ctx, a.store, id, project, m, extra...)
	return out, toStatus(err, t.Kind()+" "+quote(id))
}

// replace overwrites the object's spec (and extra columns) with its audit row.
func replace[T proto.Message](ctx context.Context, a *API, t store.Table[T], id, project string, m T, extra ...store.Col) (T, error) {
	out, err := t.Replace(ctx, a.store, id, project, m, extra...)
	return out, toStatus(err, t.Kind()+" "+quote(id))
}

// modify locks the object, lets edit change it (edit returns the extra
// columns to write and the audit's project) and stores it with its audit row.
func modify[T proto.Message](ctx context.Context, a *API, t store.Table[T], id string, edit func(T) ([]store.Col, string)) (T, error) {
	out, err := t.Modify(ctx, a.store, id, edit)
	return out, toStatus(err, t.Kind()+" "+quote(id))
}

// requiredKey is the answer to an empty key: the same InvalidArgument with
// the field as every handler's own validation, not a NotFound that an empty
// row id would give.
func requiredKey[T proto.Message](t store.Table[T]) error {
	var v violations
	v.add(t.KeyCol(), "required")
	return v.err()
}

// remove deletes the object with its audit row.
func remove[T proto.Message](ctx context.Context, a *API, t store.Table[T], id, project string) (T, error) {
	if id == "" {
		var zero T
		return zero, requiredKey(t)
	}
	out, err := t.Remove(ctx, a.store, id, project)
	return out, toStatus(err, t.Kind()+" "+quote(id))
}

// fetch reads one object outside a transaction.
func fetch[T proto.Message](ctx context.Context, a *API, t store.Table[T], id string) (T, error) {
	if id == "" {
		var zero T
		return zero, requiredKey(t)
	}
	out, err := t.Get(ctx, a.store.Pool(), id)
	return out, toStatus(err, t.Kind()+" "+quote(id))
}

// named is how errors name object id of t's kind, as the CRUD above names
// it, for writes a domain package makes.
func named[T proto.Message](t store.Table[T], id string) string { return t.Kind() + " " + quote(id) }
