package lab

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// ConsoleResult is what reading a machine's serial console through
// `metalctl machine console` saw.
type ConsoleResult struct {
	// Sessions is how many consoles were opened: while the machine is
	// off its BMC has no serial port to attach, and the console ends at
	// once with that reason; the reader opens it again.
	Sessions int
	// FirstByte is the start of reading until the machine's first byte
	// arrived through the console.
	FirstByte time.Duration
	// Bytes of the machine's output read.
	Bytes int
	// Line is the console line holding the first string looked for.
	Line string
}

// readConsole reads a machine's serial console as a person does, with
// `metalctl machine console ID` — through central, the partition's
// metal-bmc and the BMC's SSH serial console — until every string of
// want has appeared in the machine's output, then ends it with the escape
// `~.`. Its stdin stays open meanwhile: at end of input metalctl ends the
// session. A console that ends before (the machine is off: no serial port
// to attach yet) is opened again until timeout.
func (l *Lab) readConsole(ctx context.Context, uuid string, want []string, timeout time.Duration) (ConsoleResult, error) {
	var res ConsoleResult
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	var last string
	for {
		res.Sessions++
		out, first, done, err := l.consoleSession(ctx, uuid, want)
		if !first.IsZero() && res.FirstByte == 0 {
			res.FirstByte = first.Sub(start)
		}
		res.Bytes += len(out.machine)
		if done {
			res.Line = lineWith(out.machine, want[0])
			return res, nil
		}
		last = strings.TrimSpace(out.metalctl)
		if err != nil && ctx.Err() == nil {
			last += " (" + err.Error() + ")"
		}
		select {
		case <-ctx.Done():
			return res, fmt.Errorf("%q on machine %s's console (metalctl machine console, %d sessions): not within %s; the last ended with: %s; its output:\n%s",
				want, uuid, res.Sessions, timeout, last, tailString(out.machine, 4<<10))
		case <-time.After(time.Second):
		}
	}
}

// consoleOutput is one session's output: the machine's bytes (metalctl's
// stdout) and metalctl's own lines (stderr: "[console of …]", "[console
// ended: …]").
type consoleOutput struct{ machine, metalctl string }

// consoleSession runs one `metalctl machine console`: done when every
// string of want arrived; first is when the machine's first byte did.
func (l *Lab) consoleSession(ctx context.Context, uuid string, want []string) (out consoleOutput, first time.Time, done bool, err error) {
	cmd, err := l.metalctlCmd(ctx, "machine", "console", uuid)
	if err != nil {
		return out, first, false, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return out, first, false, err
	}
	machine := &lockedBuffer{}
	var stderr lockedBuffer
	cmd.Stdout, cmd.Stderr = machine, &stderr
	if err := cmd.Start(); err != nil {
		return out, first, false, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	result := func() consoleOutput { return consoleOutput{machine: machine.String(), metalctl: stderr.String()} }
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case err := <-exited:
			out = result()
			return out, machine.firstWrite(), containsAll(out.machine, want), err
		case <-tick.C:
			if !containsAll(machine.String(), want) {
				continue
			}
			// metalctl's escape ends the console; nothing was typed, so
			// it stands at the start of a line as the escape must.
			_, _ = io.WriteString(stdin, "~.")
			select {
			case <-exited:
			case <-time.After(10 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
			return result(), machine.firstWrite(), true, nil
		}
	}
}

func containsAll(s string, want []string) bool {
	for _, w := range want {
		if !strings.Contains(s, w) {
			return false
		}
	}
	return true
}

// lineWith returns the line of s holding sub, without its line end.
func lineWith(s, sub string) string {
	for _, line := range strings.Split(s, "\n") {
		if strings.Contains(line, sub) {
			return strings.TrimRight(line, "\r")
		}
	}
	return ""
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// lockedBuffer is written by exec's copying goroutine and read by the
// reader's loop; it remembers when the first byte came.
type lockedBuffer struct {
	mu    sync.Mutex
	b     bytes.Buffer
	first time.Time
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.first.IsZero() && len(p) > 0 {
		b.first = time.Now()
	}
	return b.b.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

func (b *lockedBuffer) firstWrite() time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.first
}
