package redfish

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/ssh"
)

// SerialConfig is a BMC's SSH serial console: what real BMCs offer next
// to Redfish (an SSH login whose shell is the machine's serial port).
type SerialConfig struct {
	// User and Password are the BMC's (the Redfish ones).
	User, Password string
	// Socket is the machine's serial port as a unix socket (QEMU's
	// serial.sock in the machine's directory).
	Socket string
	// HostKey is the server's key; nil makes an ed25519 key per process.
	HostKey ssh.Signer
	Log     *slog.Logger
}

// SerialConsole serves SSH sessions attached to the machine's serial
// socket. Each session's shell is one connection to the socket.
type SerialConsole struct {
	cfg    SerialConfig
	ssh    *ssh.ServerConfig
	log    *slog.Logger
	wg     sync.WaitGroup
	window atomic.Uint64 // rows<<32 | cols of the newest window request
	active atomic.Int64
}

// NewSerialConsole builds the SSH server.
func NewSerialConsole(cfg SerialConfig) (*SerialConsole, error) {
	if cfg.User == "" || cfg.Socket == "" {
		return nil, errors.New("serial console: user and socket required")
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.HostKey == nil {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, fmt.Errorf("serial console host key: %w", err)
		}
		if cfg.HostKey, err = ssh.NewSignerFromKey(key); err != nil {
			return nil, fmt.Errorf("serial console host key: %w", err)
		}
	}
	sc := &SerialConsole{cfg: cfg, log: cfg.Log.With("part", "serial-console")}
	sc.ssh = &ssh.ServerConfig{
		PasswordCallback: func(c ssh.ConnMetadata, pw []byte) (*ssh.Permissions, error) {
			okUser := subtle.ConstantTimeCompare([]byte(c.User()), []byte(cfg.User)) == 1
			okPass := subtle.ConstantTimeCompare(pw, []byte(cfg.Password)) == 1
			if okUser && okPass {
				return nil, nil
			}
			return nil, errors.New("wrong user or password")
		},
	}
	sc.ssh.AddHostKey(cfg.HostKey)
	return sc, nil
}

// Window is the newest window size a client asked for (0, 0 before any).
func (sc *SerialConsole) Window() (rows, cols uint32) {
	w := sc.window.Load()
	return uint32(w >> 32), uint32(w)
}

// Active is the number of shells attached to the serial socket now.
func (sc *SerialConsole) Active() int { return int(sc.active.Load()) }

// Serve accepts SSH connections on ln until ctx ends.
func (sc *SerialConsole) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() { _ = ln.Close() })
	defer stop()
	defer sc.wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("serial console: %w", err)
		}
		sc.wg.Go(func() { sc.serveConn(ctx, c) })
	}
}

func (sc *SerialConsole) serveConn(ctx context.Context, raw net.Conn) {
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(30 * time.Second))
	conn, chans, reqs, err := ssh.NewServerConn(raw, sc.ssh)
	if err != nil {
		sc.log.Info("ssh login refused", "remote", raw.RemoteAddr().String(), "err", err)
		return
	}
	_ = raw.SetDeadline(time.Time{})
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer stop()
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		if nc.ChannelType() != "session" {
			_ = nc.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, creqs, err := nc.Accept()
		if err != nil {
			return
		}
		sc.wg.Go(func() { sc.session(ch, creqs) })
	}
}

// session answers pty, window-change and shell requests; the shell is the
// serial socket.
func (sc *SerialConsole) session(ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	var serial net.Conn
	defer func() {
		if serial != nil {
			_ = serial.Close()
		}
	}()
	for req := range reqs {
		switch req.Type {
		case "pty-req":
			// string TERM, uint32 cols, uint32 rows, ...
			if cols, rows, ok := ptySize(req.Payload); ok {
				sc.window.Store(uint64(rows)<<32 | uint64(cols))
			}
			_ = req.Reply(true, nil)
		case "window-change":
			if len(req.Payload) >= 8 {
				cols, rows := binary.BigEndian.Uint32(req.Payload[0:4]), binary.BigEndian.Uint32(req.Payload[4:8])
				sc.window.Store(uint64(rows)<<32 | uint64(cols))
			}
			_ = req.Reply(true, nil)
		case "shell":
			if serial != nil {
				_ = req.Reply(false, nil)
				continue
			}
			c, err := net.Dial("unix", sc.cfg.Socket)
			if err != nil {
				sc.log.Warn("serial socket", "err", err)
				_, _ = fmt.Fprintf(ch.Stderr(), "the machine's serial port is not available: %v\r\n", err)
				_ = req.Reply(false, nil)
				return
			}
			serial = c
			_ = req.Reply(true, nil)
			sc.active.Add(1)
			go func() {
				defer sc.active.Add(-1)
				// Serial → SSH; when the socket ends, so does the session.
				_, _ = io.Copy(ch, c)
				_, _ = ch.SendRequest("exit-status", false, make([]byte, 4))
				_ = ch.Close()
			}()
			go func() {
				_, _ = io.Copy(c, ch)
				_ = c.Close()
			}()
		default:
			if req.WantReply {
				_ = req.Reply(false, nil)
			}
		}
	}
}

// ptySize reads cols and rows from a pty-req payload.
func ptySize(p []byte) (cols, rows uint32, ok bool) {
	if len(p) < 4 {
		return 0, 0, false
	}
	n := binary.BigEndian.Uint32(p[:4])
	if uint64(len(p)) < 4+uint64(n)+8 {
		return 0, 0, false
	}
	p = p[4+n:]
	return binary.BigEndian.Uint32(p[0:4]), binary.BigEndian.Uint32(p[4:8]), true
}
