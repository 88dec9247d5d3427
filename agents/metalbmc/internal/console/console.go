// Package console is metal-bmc's side of the machines' serial console
// (docs/bmc.md, "The console path"). Central sends a ConsoleOpen on the
// agent stream; metal-bmc connects to the machine's BMC — IPMI
// serial-over-LAN through `ipmitool sol activate` in a pty, or a Redfish
// BMC's SSH serial console — and dials AgentService.Console back to
// central on the agent stream's connection, copying bytes both ways and
// passing window changes on, until either side ends.
package console

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/metalfleet/metalfleet/agents/agent"
	"github.com/metalfleet/metalfleet/agents/metalbmc/internal/driver"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Config of the console server.
type Config struct {
	// Creds returns the partition's BMC credentials in effect.
	Creds func() driver.Creds
	// SSHPort is the port of a Redfish BMC's SSH serial console (22)
	// when the BMC does not name its own.
	SSHPort int
	// SSHPortOf asks the Redfish BMC at an address for its SSH port
	// (oob.Service.SSHPort): 0 when it does not say. nil: SSHPort.
	SSHPortOf func(ctx context.Context, address string) (int, error)
	// Ipmitool is the ipmitool binary ("ipmitool").
	Ipmitool string
	// CipherSuite is ipmitool's -C ("3").
	CipherSuite string
	// Timeout bounds connecting to a BMC (default 30s).
	Timeout time.Duration
	Log     *slog.Logger
	Metrics prometheus.Registerer
}

// Server serves console sessions.
type Server struct {
	cfg Config
	log *slog.Logger
	m   *metrics
}

// New builds a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Creds == nil {
		return nil, errors.New("console: Creds required")
	}
	if cfg.SSHPort == 0 {
		cfg.SSHPort = 22
	}
	if cfg.Ipmitool == "" {
		cfg.Ipmitool = "ipmitool"
	}
	if cfg.CipherSuite == "" {
		cfg.CipherSuite = "3"
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	m := newMetrics()
	if cfg.Metrics != nil {
		if err := cfg.Metrics.Register(m); err != nil {
			return nil, fmt.Errorf("console metrics: %w", err)
		}
	}
	return &Server{cfg: cfg, log: cfg.Log, m: m}, nil
}

// conn is a console connection to a BMC.
type conn interface {
	io.ReadWriteCloser
	// Resize passes a window change on.
	Resize(rows, cols uint32) error
}

// maxChunk bounds one message's bytes (central refuses more than 64 KiB).
const maxChunk = 32 << 10

// Serve runs one session; it is agent.Config.Console.
func (s *Server) Serve(ctx context.Context, open *agentv1.ConsoleOpen, dial agent.ConsoleDial) {
	log := s.log.With("session", open.GetSessionId(), "machine", open.GetMachineId(), "bmc", open.GetAddress())
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.m.active.Inc()
	defer s.m.active.Dec()

	c, err := s.connect(ctx, open)
	stream, derr := dial(ctx)
	if derr != nil {
		// Central ends its side after its join timeout.
		log.Error("console: dial central", "err", derr)
		s.m.sessions.WithLabelValues("central_failed").Inc()
		if c != nil {
			_ = c.Close()
		}
		return
	}
	defer func() { _ = stream.CloseSend() }()
	if err != nil {
		log.Warn("console: connect to the BMC", "err", err)
		s.m.sessions.WithLabelValues("bmc_failed").Inc()
		_ = stream.Send(&agentv1.ConsoleRequest{SessionId: open.GetSessionId(), End: "cannot open the BMC's console: " + err.Error()})
		// Wait for central to take the end, so it is not lost with the stream.
		_, _ = stream.Recv()
		return
	}
	defer c.Close()
	if err := stream.Send(&agentv1.ConsoleRequest{SessionId: open.GetSessionId()}); err != nil {
		log.Warn("console: join", "err", err)
		return
	}
	log.Info("console session joined", "protocol", open.GetProtocol().String())
	s.m.sessions.WithLabelValues("joined").Inc()

	var once sync.Once
	reason := ""
	stop := func(r string) {
		once.Do(func() {
			reason = r
			cancel()
			_ = c.Close()
		})
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		// BMC → central. Send blocks while central's window is full: the
		// BMC's bytes then wait in the kernel and the BMC's own buffers.
		buf := make([]byte, maxChunk)
		for {
			n, err := c.Read(buf)
			if n > 0 {
				s.m.bytes.WithLabelValues("out").Add(float64(n))
				if serr := stream.Send(&agentv1.ConsoleRequest{Data: append([]byte(nil), buf[:n]...)}); serr != nil {
					stop("central's stream ended")
					return
				}
			}
			if err != nil {
				if ctx.Err() == nil {
					stop("the BMC ended the console")
					_ = stream.Send(&agentv1.ConsoleRequest{End: "the BMC ended the console"})
				}
				return
			}
		}
	})
	// central → BMC.
	for {
		f, err := stream.Recv()
		if err != nil {
			stop("central's stream ended")
			break
		}
		if e := f.GetEnd(); e != "" {
			stop("central: " + e)
			break
		}
		if w := f.GetWindow(); w != nil {
			if err := c.Resize(w.GetRows(), w.GetCols()); err != nil {
				log.Debug("console: window change", "err", err)
			}
		}
		if d := f.GetData(); len(d) > 0 {
			s.m.bytes.WithLabelValues("in").Add(float64(len(d)))
			if _, err := c.Write(d); err != nil {
				stop("the BMC's console stopped taking input")
				_ = stream.Send(&agentv1.ConsoleRequest{End: "the BMC's console stopped taking input"})
				break
			}
		}
	}
	wg.Wait()
	log.Info("console session ended", "reason", reason)
}

// connect opens the BMC's console by its protocol.
func (s *Server) connect(ctx context.Context, open *agentv1.ConsoleOpen) (conn, error) {
	creds := s.cfg.Creds()
	if creds.User == "" {
		return nil, errors.New("no BMC credentials in metal-bmc's document")
	}
	host, port, err := splitAddress(open.GetAddress())
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	switch open.GetProtocol() {
	case agentv1.BmcProtocol_BMC_PROTOCOL_IPMI:
		if port == "" {
			port = "623"
		}
		return s.sol(cctx, ctx, host, port, creds, open.GetWindow())
	default:
		sp, err := s.sshPort(cctx, open.GetAddress())
		if err != nil {
			return nil, err
		}
		return s.ssh(cctx, host, fmt.Sprint(sp), creds, open.GetWindow())
	}
}

// sshPort is the SSH port of the Redfish BMC at address: the one its
// NetworkProtocol names, else the configured one. A BMC that cannot be
// asked, or does not answer within a third of the console's timeout,
// still gets its console tried at the configured port (the question runs
// on to its own end: the driver logs out of what it opened); one that
// says its SSH is off is an error the person sees.
func (s *Server) sshPort(ctx context.Context, address string) (int, error) {
	if s.cfg.SSHPortOf == nil {
		return s.cfg.SSHPort, nil
	}
	type answer struct {
		port int
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		p, err := s.cfg.SSHPortOf(ctx, address)
		ch <- answer{p, err}
	}()
	wait := time.NewTimer(s.cfg.Timeout / 3)
	defer wait.Stop()
	select {
	case a := <-ch:
		switch {
		case errors.Is(a.err, driver.ErrSSHDisabled):
			return 0, a.err
		case a.err != nil:
			s.log.Debug("console: the BMC's SSH port, from its Redfish", "bmc", address, "err", a.err)
		case a.port > 0:
			return a.port, nil
		}
	case <-wait.C:
		s.log.Debug("console: the BMC's Redfish did not name its SSH port in time", "bmc", address)
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	return s.cfg.SSHPort, nil
}

// splitAddress takes the host (and port, if any) of a BMC address as
// metal-bmc reports it: host, host:port, [v6]:port, https://host:port.
func splitAddress(a string) (host, port string, err error) {
	if _, rest, ok := strings.Cut(a, "://"); ok {
		a = rest
	}
	a = strings.TrimSuffix(a, "/")
	if h, p, err := net.SplitHostPort(a); err == nil {
		return h, p, nil
	}
	a = strings.TrimSuffix(strings.TrimPrefix(a, "["), "]")
	if a == "" {
		return "", "", errors.New("the BMC has no address")
	}
	return a, "", nil
}
