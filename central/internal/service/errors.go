package service

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/field"
	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/store"
)

// toStatus maps store and IPAM errors to gRPC codes. what names the object.
// Errors that already are statuses pass through.
func toStatus(err error, what string) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	var st interface{ GRPCStatus() *status.Status }
	if errors.As(err, &st) {
		return st.GRPCStatus().Err()
	}
	switch {
	case store.IsNotFound(err):
		return status.Errorf(codes.NotFound, "%s not found", what)
	case store.IsCode(err, store.CodeUniqueViolation):
		return status.Errorf(codes.AlreadyExists, "%s already exists (%s)", what, store.Constraint(err))
	case store.IsCode(err, store.CodeForeignKeyViolation):
		return status.Errorf(codes.FailedPrecondition, "%s: a referenced object is missing or the object is still in use (%s)", what, store.Constraint(err))
	case store.IsCode(err, store.CodeCheckViolation):
		return status.Errorf(codes.InvalidArgument, "%s: violates %s", what, store.Constraint(err))
	case errors.Is(err, ipam.ErrExhausted):
		return status.Errorf(codes.ResourceExhausted, "%s: no free addresses or prefixes left", what)
	case errors.Is(err, ipam.ErrTaken):
		return status.Errorf(codes.AlreadyExists, "%s: already allocated", what)
	case errors.Is(err, ipam.ErrOutOfRange):
		return status.Errorf(codes.InvalidArgument, "%s: outside the network's prefixes", what)
	}
	return &InternalError{what: what, err: err}
}

// InternalError is an error no rule above maps: its status says only that
// something failed, because its cause may be the database's own words
// (SQL, constraint details, echoed values). The cause is for the log.
type InternalError struct {
	what string
	err  error
}

// Error is what a client may read; it is also the status message.
func (e *InternalError) Error() string { return e.what + ": internal error" }

// Unwrap keeps errors.Is working on the cause.
func (e *InternalError) Unwrap() error { return e.err }

// Detail is the cause, for the server's log only (clip it there).
func (e *InternalError) Detail() string { return e.what + ": " + e.err.Error() }

// GRPCStatus makes the error an Internal status without its cause.
func (e *InternalError) GRPCStatus() *status.Status { return status.New(codes.Internal, e.Error()) }

// violations collects field errors of one request: field.Violations with
// the people API's clipping and quoting, since field paths and descriptions
// may echo request values (map keys, parser errors quoting the input).
type violations struct{ field.Violations }

// people is v clipping and quoting as the people API does, so that the
// zero violations is ready to use.
func (v *violations) people() *field.Violations {
	v.Clip, v.Quote = auth.ClipEcho, auth.Quote
	return &v.Violations
}

// add records a bad field, both parts clipped.
func (v *violations) add(f, format string, args ...any) { v.people().Add(f, format, args...) }

// err returns InvalidArgument naming every bad field, or nil.
func (v *violations) err() error { return v.Err("") }
