package ipmi

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// serialBridge is the BMC's end of the machine's serial line, for
// ipmi_sim's SOL ("sol tcp:…"): ipmi_sim connects once at start and keeps
// the connection, while the machine's serial socket exists only while
// QEMU runs. The bridge holds ipmi_sim's connection across power cycles
// and connects to the serial socket whenever it is there, as a BMC's UART
// stays wired to a server that is switched off and on. Bytes typed while
// the machine is off are dropped.
type serialBridge struct {
	ln     net.Listener
	socket string
	log    *slog.Logger
}

func newSerialBridge(socket string, log *slog.Logger) (*serialBridge, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("ipmi: SOL bridge: %w", err)
	}
	return &serialBridge{ln: ln, socket: socket, log: log.With("part", "sol")}, nil
}

func (b *serialBridge) Addr() string { return b.ln.Addr().String() }
func (b *serialBridge) Close() error { return b.ln.Close() }

// Serve takes ipmi_sim's connections until ctx ends.
func (b *serialBridge) Serve(ctx context.Context) {
	stop := context.AfterFunc(ctx, func() { b.ln.Close() })
	defer stop()
	for {
		c, err := b.ln.Accept()
		if err != nil {
			return
		}
		go b.bridge(ctx, c)
	}
}

func (b *serialBridge) bridge(ctx context.Context, c net.Conn) {
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	var (
		mu     sync.Mutex
		serial net.Conn
	)
	gone := make(chan struct{})
	// SOL → machine: to the serial socket while there is one.
	go func() {
		defer close(gone)
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				mu.Lock()
				if serial != nil {
					serial.Close()
				}
				mu.Unlock()
				return
			}
			mu.Lock()
			s := serial
			mu.Unlock()
			if s != nil {
				_, _ = s.Write(buf[:n])
			}
		}
	}()
	// Machine → SOL: one serial connection per QEMU.
	for {
		s, err := net.Dial("unix", b.socket)
		if err != nil {
			select {
			case <-gone:
				return
			case <-ctx.Done():
				return
			case <-time.After(250 * time.Millisecond):
			}
			continue
		}
		b.log.Debug("SOL attached to the machine's serial port")
		mu.Lock()
		serial = s
		mu.Unlock()
		_, _ = io.Copy(c, s)
		mu.Lock()
		serial = nil
		mu.Unlock()
		s.Close()
		select {
		case <-gone:
			return
		case <-ctx.Done():
			return
		default:
		}
	}
}
