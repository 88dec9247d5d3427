package service

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// TestToStatusHidesUnmappedErrors: an error no rule maps becomes Internal
// without its text (the database's own words), which stays reachable for
// the log and for errors.Is.
func TestToStatusHidesUnmappedErrors(t *testing.T) {
	pgErr := &pgconn.PgError{Code: "22021", Message: `invalid byte sequence for encoding "UTF8": 0x00`}
	for _, tt := range []struct {
		name string
		err  error
	}{
		{"sql", fmt.Errorf("list partitions: %w", pgErr)},
		{"plain", errors.New("SELECT secret FROM somewhere failed")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := toStatus(tt.err, "partition "+quote("p1"))
			st := status.Convert(err)
			if st.Code() != codes.Internal {
				t.Fatalf("code %v, want Internal", st.Code())
			}
			if strings.Contains(st.Message(), tt.err.Error()) || strings.Contains(st.Message(), "0x00") || strings.Contains(st.Message(), "SELECT") {
				t.Fatalf("status message %q repeats the cause", st.Message())
			}
			if !errors.Is(err, tt.err) {
				t.Fatalf("cause lost for errors.Is")
			}
			var ie *InternalError
			if !errors.As(err, &ie) || !strings.Contains(ie.Detail(), tt.err.Error()) {
				t.Fatalf("detail for the log lost: %v", err)
			}
		})
	}
}
