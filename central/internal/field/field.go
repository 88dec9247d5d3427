// Package field collects what is wrong with the fields of one message (a
// request of the people API, an agent's hello or report) and turns it into
// the one InvalidArgument status central answers with: the message names
// the first bad field, the BadRequest detail every one of them.
package field

import (
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Violations collects bad fields; the zero value keeps every one as given.
type Violations struct {
	// Clip, when set, makes field paths and descriptions fit for a status
	// message: both may echo what the sender sent (map keys, parser errors
	// quoting the input).
	Clip func(string) string
	// Quote, when set, is how Labels writes a key into a field path
	// (labels["key"]); strconv.Quote when nil.
	Quote func(string) string
	// Max, when above 0, bounds how many are kept: a list of 10,000 bad
	// values is reported by its first few.
	Max  int
	list []*errdetails.BadRequest_FieldViolation
}

// Add records a bad field; Sprintf(format, args...) says what is wrong.
func (v *Violations) Add(field, format string, args ...any) {
	if v.Full() {
		return
	}
	desc := fmt.Sprintf(format, args...)
	if v.Clip != nil {
		field, desc = v.Clip(field), v.Clip(desc)
	}
	v.list = append(v.list, &errdetails.BadRequest_FieldViolation{Field: field, Description: desc})
}

// Full reports whether Max is reached, so a walk over a large message can
// stop early.
func (v *Violations) Full() bool { return v.Max > 0 && len(v.list) >= v.Max }

// List is what was recorded, in order.
func (v *Violations) List() []*errdetails.BadRequest_FieldViolation { return v.list }

// Err is InvalidArgument naming every bad field, or nil when there is
// none; what, when not empty, starts the message ("malformed hello").
func (v *Violations) Err(what string) error { return InvalidArgument(what, v.list) }

// InvalidArgument is the status of a message with bad fields: "what: " (if
// what is not empty), the first field and its description, and how many
// more there are; the BadRequest detail holds all of them. nil for none.
func InvalidArgument(what string, list []*errdetails.BadRequest_FieldViolation) error {
	if len(list) == 0 {
		return nil
	}
	msg := list[0].GetField() + ": " + list[0].GetDescription()
	if what != "" {
		msg = what + ": " + msg
	}
	if len(list) > 1 {
		msg += fmt.Sprintf(" (and %d more)", len(list)-1)
	}
	st, err := status.New(codes.InvalidArgument, msg).WithDetails(&errdetails.BadRequest{FieldViolations: list})
	if err != nil {
		// Without the detail the message still names the first field.
		return status.Error(codes.InvalidArgument, msg)
	}
	return st.Err()
}
