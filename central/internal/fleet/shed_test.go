package fleet

import (
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestShedCarriesRetryDelay(t *testing.T) {
	for range 100 {
		st := status.Convert(shed())
		if st.Code() != codes.Unavailable {
			t.Fatalf("code %v, want Unavailable", st.Code())
		}
		var delay time.Duration
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				delay = ri.GetRetryDelay().AsDuration()
			}
		}
		if delay < 500*time.Millisecond || delay > 3*time.Second {
			t.Fatalf("retry delay %v, want 0.5s-3s", delay)
		}
	}
}
