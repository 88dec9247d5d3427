package service

import (
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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
	case errors.Is(err, pgx.ErrNoRows):
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
	return status.Errorf(codes.Internal, "%s: %v", what, err)
}

// violations collects field errors of one request.
type violations struct {
	list []*errdetails.BadRequest_FieldViolation
}

func (v *violations) add(field, format string, args ...any) {
	v.list = append(v.list, &errdetails.BadRequest_FieldViolation{Field: field, Description: fmt.Sprintf(format, args...)})
}

// err returns InvalidArgument naming every bad field, or nil.
func (v *violations) err() error {
	if len(v.list) == 0 {
		return nil
	}
	msg := v.list[0].Field + ": " + v.list[0].Description
	if len(v.list) > 1 {
		msg += fmt.Sprintf(" (and %d more)", len(v.list)-1)
	}
	st, derr := status.New(codes.InvalidArgument, msg).WithDetails(&errdetails.BadRequest{FieldViolations: v.list})
	if derr != nil {
		return status.Error(codes.InvalidArgument, msg)
	}
	return st.Err()
}
