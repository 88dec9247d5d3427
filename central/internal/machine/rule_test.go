package machine

import (
	"context"
	"reflect"
	"testing"
)

// The dual-attach rule is built in and, until the switch fabric reports
// links, accepts every machine.
func TestBothLinksSeenIsBuiltInPlaceholder(t *testing.T) {
	var found bool
	for _, r := range New(nil, 0).rules {
		found = found || reflect.ValueOf(r).Pointer() == reflect.ValueOf(Rule(bothLinksSeen)).Pointer()
	}
	if !found {
		t.Fatal("bothLinksSeen is not among the rules every allocation honours")
	}
	if err := bothLinksSeen(context.Background(), nil, Candidate{}); err != nil {
		t.Fatalf("placeholder refused a machine: %v", err)
	}
}
