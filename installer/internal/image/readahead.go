package image

import (
	"errors"
	"io"
	"sync"
)

var errClosed = errors.New("read-ahead closed")

// readAhead reads its source in a goroutine of its own into a few large
// buffers, so that the stage below (network and hashing, or
// decompression) runs while the stage above consumes.
type readAhead struct {
	filled chan *chunk
	free   chan *chunk
	stop   chan struct{}
	done   chan struct{}
	once   sync.Once
	cur    *chunk
}

type chunk struct {
	b      []byte
	n, off int
	err    error
}

func newReadAhead(r io.Reader, size, n int) *readAhead {
	ra := &readAhead{
		filled: make(chan *chunk, n),
		free:   make(chan *chunk, n),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	for range n {
		ra.free <- &chunk{b: make([]byte, size)}
	}
	go ra.fill(r)
	return ra
}

func (ra *readAhead) fill(r io.Reader) {
	defer close(ra.done)
	defer close(ra.filled)
	for {
		var c *chunk
		select {
		case c = <-ra.free:
		case <-ra.stop:
			return
		}
		// Fill the whole buffer: fewer hand-overs, and the consumer sees
		// large reads. The source's own error is passed on as it is (an
		// io.ErrUnexpectedEOF of a truncated body stays one).
		c.n, c.off, c.err = 0, 0, nil
		for c.n < len(c.b) && c.err == nil {
			var m int
			m, c.err = r.Read(c.b[c.n:])
			c.n += m
		}
		select {
		case ra.filled <- c:
		case <-ra.stop:
			return
		}
		if c.err != nil {
			return
		}
	}
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for {
		if c := ra.cur; c != nil {
			if c.off < c.n {
				n := copy(p, c.b[c.off:c.n])
				c.off += n
				return n, nil
			}
			if c.err != nil {
				return 0, c.err
			}
			ra.free <- c // never blocks: free has room for every chunk
			ra.cur = nil
		}
		c, ok := <-ra.filled
		if !ok {
			return 0, errClosed
		}
		ra.cur = c
	}
}

// WriteTo hands whole chunks to w, which saves a copy for io.Copy.
func (ra *readAhead) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		c := ra.cur
		if c == nil || c.off >= c.n {
			if c != nil && c.err != nil {
				if c.err == io.EOF {
					return total, nil
				}
				return total, c.err
			}
			if c != nil {
				ra.free <- c
				ra.cur = nil
			}
			next, ok := <-ra.filled
			if !ok {
				return total, errClosed
			}
			ra.cur = next
			continue
		}
		n, err := w.Write(c.b[c.off:c.n])
		c.off += n
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
}

// Close stops the goroutine once its current read returns; the caller
// makes that read return (cancels the request, closes the decoder below).
func (ra *readAhead) Close() {
	ra.once.Do(func() { close(ra.stop) })
	<-ra.done
}
