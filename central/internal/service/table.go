package service

import (
	"context"

	"google.golang.org/protobuf/proto"

	"github.com/metalfleet/metalfleet/central/internal/store"
)

// Reads of the store's tables (store.Table) with the service's error
// mapping: what a gRPC caller gets. Writes go through the domain packages.

// requiredKey is the answer to an empty key: the same InvalidArgument with
// the field as every handler's own validation, not a NotFound that an empty
// row id would give.
func requiredKey[T proto.Message](t store.Table[T]) error {
	var v violations
	v.add(t.KeyCol(), "required")
	return v.err()
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
