package fleet

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff is exponential with full jitter. It and sleep are twins of the
// agent runtime's on purpose: central may not import agents/agent, and
// helpers this small do not justify a package shared through proto/
// (docs/layout.md).
type backoff struct {
	min, max time.Duration
	n        int
}

func (b *backoff) next() time.Duration {
	ceil := b.min << min(b.n, 30)
	if ceil <= 0 || ceil > b.max {
		ceil = b.max
	}
	b.n++
	return rand.N(ceil) + 1
}

func (b *backoff) reset() { b.n = 0 }

// sleep waits d or until ctx ends; false means ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
