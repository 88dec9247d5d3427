package run

import (
	"fmt"
	"time"
)

// progress turns the image stream's byte counts into a few "Installing"
// events: one at every quarter and otherwise at most one per interval, so
// that a slow download still shows it lives and a fast one does not flood
// the event log.
type progress struct {
	emit     func(msg string)
	now      func() time.Time
	interval time.Duration
	last     time.Time
	quarter  int64
	read     int64
}

func newProgress(interval time.Duration, now func() time.Time, emit func(string)) *progress {
	return &progress{emit: emit, now: now, interval: interval, last: now()}
}

func (p *progress) update(read, total int64) {
	p.read = read
	t := p.now()
	if total > 0 {
		q := min(read*4/total, 4)
		if q > p.quarter || t.Sub(p.last) >= p.interval {
			p.quarter = max(q, p.quarter)
			p.last = t
			p.emit(fmt.Sprintf("image %d%% (%s/%s MB)", min(read*100/total, 100), mb(read), mb(total)))
		}
		return
	}
	if t.Sub(p.last) >= p.interval {
		p.last = t
		p.emit(fmt.Sprintf("image %s MB", mb(read)))
	}
}

func mb(n int64) string { return fmt.Sprintf("%d", (n+500_000)/1_000_000) }
