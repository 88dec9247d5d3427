// Package tftp serves the iPXE binaries to PXE firmware, read-only: TFTP
// has no authentication, so nothing may be written and nothing outside
// the iPXE directory may be read.
package tftp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/pin/tftp/v3"

	"github.com/metalfleet/metalfleet/agents/pixie/internal/boot"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/metric"
)

// Server serves the files of one directory.
type Server struct {
	dir     string
	log     *slog.Logger
	metrics *metric.Metrics
}

// New serves dir.
func New(dir string, log *slog.Logger, m *metric.Metrics) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{dir: dir, log: log, metrics: m}
}

// Serve answers read requests on conn until ctx ends, then waits for
// running transfers (each bounded by the TFTP timeout and retries).
func (s *Server) Serve(ctx context.Context, conn net.PacketConn) error {
	srv := tftp.NewServer(s.read, nil)
	srv.SetTimeout(2 * time.Second)
	srv.SetRetries(5)
	srv.SetHook(hook{s})
	done := make(chan error, 1)
	go func() { done <- srv.Serve(conn) }()
	select {
	case <-ctx.Done():
		srv.Shutdown()
		<-done
		return nil
	case err := <-done:
		return err
	}
}

// Open resolves a requested name to an open regular file in dir.
func (s *Server) Open(name string) (*os.File, int64, error) {
	clean, err := boot.FileName(name)
	if err != nil {
		return nil, 0, err
	}
	f, err := os.Open(filepath.Join(s.dir, clean))
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", clean, os.ErrNotExist)
	}
	fi, err := f.Stat()
	if err != nil || !fi.Mode().IsRegular() {
		f.Close()
		return nil, 0, fmt.Errorf("%s: not a regular file", clean)
	}
	return f, fi.Size(), nil
}

func (s *Server) read(name string, rf io.ReaderFrom) error {
	peer := ""
	if t, ok := rf.(tftp.OutgoingTransfer); ok {
		ra := t.RemoteAddr()
		peer = ra.String()
	}
	f, size, err := s.Open(name)
	if err != nil {
		s.log.Warn("tftp: refused", "file", name, "peer", peer, "err", err)
		s.metrics.Request("tftp", "refused")
		return err
	}
	defer f.Close()
	if t, ok := rf.(tftp.OutgoingTransfer); ok {
		// tsize lets the firmware check the download; some ROMs insist.
		t.SetSize(size)
	}
	s.log.Info("tftp: sending", "file", name, "peer", peer, "bytes", size)
	_, err = rf.ReadFrom(f)
	return err
}

// hook counts finished transfers.
type hook struct{ s *Server }

func (h hook) OnSuccess(st tftp.TransferStats) { h.s.metrics.Request("tftp", "ok") }

func (h hook) OnFailure(st tftp.TransferStats, err error) {
	if st.Filename == "" {
		// A packet that was no request at all: counted, otherwise ignored.
		h.s.metrics.Request("tftp", "malformed")
		return
	}
	if !errors.Is(err, os.ErrNotExist) {
		h.s.log.Debug("tftp: transfer failed", "file", st.Filename, "peer", st.RemoteAddr, "err", err)
	}
	h.s.metrics.Request("tftp", "failed")
}
