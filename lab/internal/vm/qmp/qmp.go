// Package qmp is a small client for the QEMU Machine Protocol: JSON
// objects over a stream socket, a greeting, capability negotiation, then
// commands whose answers may be interleaved with asynchronous events.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"sync"
	"time"
)

// ErrClosed is returned for commands on a connection that has ended
// (QEMU exited, or Close was called).
var ErrClosed = errors.New("qmp: connection closed")

// Error is a command's error reply.
type Error struct {
	Class string `json:"class"`
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return "qmp: " + e.Class + ": " + e.Desc }

// Event is an asynchronous message from QEMU (SHUTDOWN, RESET, ...).
type Event struct {
	Name      string          `json:"event"`
	Data      json.RawMessage `json:"data,omitempty"`
	Timestamp struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// Greeting is what QEMU says when a client connects.
type Greeting struct {
	QMP struct {
		Version struct {
			QEMU struct {
				Major int `json:"major"`
				Minor int `json:"minor"`
				Micro int `json:"micro"`
			} `json:"qemu"`
			Package string `json:"package"`
		} `json:"version"`
		Capabilities []string `json:"capabilities"`
	} `json:"QMP"`
}

// message is any object QEMU sends after the greeting.
type message struct {
	Event  string          `json:"event"`
	Return json.RawMessage `json:"return"`
	Error  *Error          `json:"error"`
	ID     json.RawMessage `json:"id"`
}

// Client is one QMP connection. It is safe for concurrent use: a reader
// goroutine matches replies to commands by id, so a command whose
// context ends does not leave the connection out of step.
type Client struct {
	conn     net.Conn
	greeting Greeting
	onEvent  func(Event)

	writeMu sync.Mutex

	mu      sync.Mutex
	nextID  uint64
	pending map[string]chan message
	err     error // set once the reader stops
	done    chan struct{}
}

// Dial connects to QEMU's QMP unix socket at path and negotiates
// capabilities. onEvent, when not nil, is called from the reader
// goroutine for each event; it must not block.
func Dial(ctx context.Context, path string, onEvent func(Event)) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	c, err := NewClient(ctx, conn, onEvent)
	if err != nil {
		conn.Close()
		return nil, err
	}
	return c, nil
}

// NewClient speaks QMP on an established connection: it reads the
// greeting and leaves capability negotiation mode. The client owns conn.
func NewClient(ctx context.Context, conn net.Conn, onEvent func(Event)) (*Client, error) {
	c := &Client{conn: conn, onEvent: onEvent, pending: map[string]chan message{}, done: make(chan struct{})}
	dec := json.NewDecoder(conn)
	// The greeting comes unasked: the context's end must interrupt the
	// read.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetReadDeadline(time.Unix(1, 0)) })
	err := dec.Decode(&c.greeting)
	stop()
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return nil, fmt.Errorf("qmp: greeting: %w", err)
	}
	if c.greeting.QMP.Capabilities == nil {
		return nil, errors.New("qmp: greeting: not a QMP greeting")
	}
	_ = conn.SetReadDeadline(time.Time{})
	go c.read(dec)
	if err := c.Execute(ctx, "qmp_capabilities", nil, nil); err != nil {
		c.Close()
		return nil, fmt.Errorf("qmp: capabilities: %w", err)
	}
	return c, nil
}

// Greeting returns QEMU's greeting.
func (c *Client) Greeting() Greeting { return c.greeting }

// Done is closed when the connection has ended.
func (c *Client) Done() <-chan struct{} { return c.done }

// Close ends the connection; pending commands fail with ErrClosed.
func (c *Client) Close() error {
	err := c.conn.Close()
	<-c.done
	return err
}

func (c *Client) read(dec *json.Decoder) {
	var err error
	for {
		var raw json.RawMessage
		if err = dec.Decode(&raw); err != nil {
			break
		}
		var m message
		if json.Unmarshal(raw, &m) != nil {
			continue // not an object: nothing we could answer
		}
		if m.Event != "" {
			var ev Event
			if c.onEvent != nil && json.Unmarshal(raw, &ev) == nil {
				c.onEvent(ev)
			}
			continue
		}
		c.deliver(m)
	}
	c.mu.Lock()
	c.err = fmt.Errorf("%w: %v", ErrClosed, err)
	for id, ch := range c.pending {
		delete(c.pending, id)
		close(ch)
	}
	c.mu.Unlock()
	close(c.done)
}

func (c *Client) deliver(m message) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var id string
	if len(m.ID) > 0 {
		if err := json.Unmarshal(m.ID, &id); err != nil {
			return // not one of ours
		}
	} else if len(c.pending) == 1 {
		// QEMU omits the id when it could not parse the command at
		// all; with one command outstanding the reply is its.
		for k := range c.pending {
			id = k
		}
	}
	if ch, ok := c.pending[id]; ok {
		delete(c.pending, id)
		ch <- m
	}
}

// Execute runs command with args (nil or a JSON-marshalable object) and
// decodes its return value into result (nil to discard it).
func (c *Client) Execute(ctx context.Context, command string, args, result any) error {
	req := struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        string `json:"id"`
	}{Execute: command, Arguments: args}
	ch := make(chan message, 1)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.nextID++
	req.ID = strconv.FormatUint(c.nextID, 10)
	c.pending[req.ID] = ch
	c.mu.Unlock()

	b, err := json.Marshal(req)
	if err != nil {
		c.forget(req.ID)
		return fmt.Errorf("qmp: %s: %w", command, err)
	}
	c.writeMu.Lock()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.conn.SetWriteDeadline(dl)
	}
	_, err = c.conn.Write(append(b, '\n'))
	_ = c.conn.SetWriteDeadline(time.Time{})
	c.writeMu.Unlock()
	if err != nil {
		c.forget(req.ID)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return fmt.Errorf("qmp: %s: %w", command, context.DeadlineExceeded)
		}
		// Any other write error (EPIPE, ECONNRESET: QEMU is exiting)
		// means the connection is gone, whichever of the reader or the
		// writer notices first: end it so that every caller sees the
		// one ErrClosed.
		c.conn.Close()
		return fmt.Errorf("qmp: %s: %w: %v", command, ErrClosed, err)
	}

	select {
	case <-ctx.Done():
		c.forget(req.ID)
		return fmt.Errorf("qmp: %s: %w", command, ctx.Err())
	case m, ok := <-ch:
		if !ok {
			c.mu.Lock()
			err := c.err
			c.mu.Unlock()
			return fmt.Errorf("qmp: %s: %w", command, err)
		}
		if m.Error != nil {
			return m.Error
		}
		if result != nil && len(m.Return) > 0 {
			if err := json.Unmarshal(m.Return, result); err != nil {
				return fmt.Errorf("qmp: %s: reply: %w", command, err)
			}
		}
		return nil
	}
}

func (c *Client) forget(id string) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

// Status is query-status's answer.
type Status struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // running, paused, shutdown, prelaunch, guest-panicked, ...
}

// QueryStatus runs query-status.
func (c *Client) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	err := c.Execute(ctx, "query-status", nil, &s)
	return s, err
}
