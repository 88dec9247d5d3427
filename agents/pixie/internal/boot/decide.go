package boot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/metalfleet/metalfleet/agents/agent/file"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/metric"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Booter is central's Boot RPC.
type Booter interface {
	Boot(ctx context.Context, req *agentv1.BootRequest) (*agentv1.BootResponse, error)
}

// Source says where a decision came from.
type Source string

// Sources of decisions.
const (
	// FromCentral: central answered now.
	FromCentral Source = "central"
	// FromCache: central was unreachable; its last answer for the MAC.
	FromCache Source = "cache"
	// FromDocument: central was unreachable and never answered for the
	// MAC; the installer of pixie's desired document, without a token.
	FromDocument Source = "document"
)

// Decision is what a machine boots and why.
type Decision struct {
	Resp   *agentv1.BootResponse
	Source Source
}

// ErrOffline wraps failures that mean central cannot be reached now.
var ErrOffline = errors.New("central unreachable")

// ErrNoToken: central answered, but with no boot token (a machine that
// should boot from disk asked for one).
var ErrNoToken = errors.New("central issued no boot token")

// Offline reports whether err means central is unreachable (as opposed
// to central refusing the question).
func Offline(err error) bool {
	if errors.Is(err, ErrOffline) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	}
	return false
}

// DeciderConfig configures a Decider.
type DeciderConfig struct {
	Central Booter
	// Dir keeps the last answer per MAC (without its boot token).
	Dir string
	// Timeout bounds one question to central (default 2s): a machine's
	// firmware gives up on a slow HTTP answer, and a partition must keep
	// booting from its cache while central is away.
	Timeout time.Duration
	// Document returns pixie's current desired document (nil: none yet).
	Document func() *agentv1.PixieDocument
	Log      *slog.Logger
	Metrics  *metric.Metrics
}

// Decider answers what a MAC boots.
type Decider struct {
	cfg DeciderConfig
}

// NewDecider checks cfg and prepares the decision cache.
func NewDecider(cfg DeciderConfig) (*Decider, error) {
	if cfg.Central == nil {
		return nil, errors.New("boot: central required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 2 * time.Second
	}
	if cfg.Document == nil {
		cfg.Document = func() *agentv1.PixieDocument { return nil }
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Dir != "" {
		if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
			return nil, fmt.Errorf("boot: decision cache: %w", err)
		}
	}
	return &Decider{cfg: cfg}, nil
}

// Decide asks central what req.Mac boots, falling back to the cached
// answer and then to the document's installer when central is offline.
func (d *Decider) Decide(ctx context.Context, req *agentv1.BootRequest) (Decision, error) {
	resp, err := d.ask(ctx, req)
	if err == nil {
		if err := d.remember(req.GetMac(), resp); err != nil {
			d.cfg.Log.Warn("cache boot decision", "mac", req.GetMac(), "err", err)
		}
		return Decision{Resp: resp, Source: FromCentral}, nil
	}
	if !Offline(err) {
		return Decision{}, err
	}
	if resp, ok := d.recall(req.GetMac()); ok {
		return Decision{Resp: resp, Source: FromCache}, nil
	}
	if doc := d.cfg.Document(); doc != nil {
		return Decision{Resp: &agentv1.BootResponse{
			Action:       agentv1.BootAction_BOOT_ACTION_INSTALLER,
			KernelUrl:    doc.GetKernelUrl(),
			InitramfsUrl: doc.GetInitramfsUrl(),
			Cmdline:      doc.GetCmdline(),
		}, Source: FromDocument}, nil
	}
	return Decision{}, fmt.Errorf("no cached decision and no desired document yet: %w", err)
}

// BootToken asks central for a fresh boot token for mac; there is no
// offline answer (tokens are one-time, central's alone to mint).
func (d *Decider) BootToken(ctx context.Context, req *agentv1.BootRequest) (string, time.Time, error) {
	resp, err := d.ask(ctx, req)
	if err != nil {
		return "", time.Time{}, err
	}
	if resp.GetBootToken() == "" {
		return "", time.Time{}, fmt.Errorf("%w (action %s)", ErrNoToken, resp.GetAction())
	}
	return resp.GetBootToken(), resp.GetBootTokenExpiresAt().AsTime(), nil
}

func (d *Decider) ask(ctx context.Context, req *agentv1.BootRequest) (*agentv1.BootResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Timeout)
	defer cancel()
	resp, err := d.cfg.Central.Boot(ctx, req)
	if err != nil {
		d.cfg.Metrics.CentralError(status.Code(err).String())
		if Offline(err) || ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %v", ErrOffline, err)
		}
		return nil, fmt.Errorf("central: %w", err)
	}
	switch resp.GetAction() {
	case agentv1.BootAction_BOOT_ACTION_INSTALLER, agentv1.BootAction_BOOT_ACTION_DISK:
	default:
		d.cfg.Metrics.CentralError("bad_answer")
		return nil, fmt.Errorf("central answered action %s", resp.GetAction())
	}
	return resp, nil
}

func (d *Decider) path(mac string) string {
	return filepath.Join(d.cfg.Dir, strings.ReplaceAll(mac, ":", "-")+".json")
}

// remember keeps central's answer for offline boots. The boot token is
// not kept: it is one-time, and a secret has no business on disk.
func (d *Decider) remember(mac string, resp *agentv1.BootResponse) error {
	if d.cfg.Dir == "" {
		return nil
	}
	keep := proto.Clone(resp).(*agentv1.BootResponse)
	keep.BootToken, keep.BootTokenExpiresAt = "", nil
	b, err := protojson.Marshal(keep)
	if err != nil {
		return err
	}
	return file.WriteAtomic(d.path(mac), b, 0o600)
}

func (d *Decider) recall(mac string) (*agentv1.BootResponse, bool) {
	if d.cfg.Dir == "" {
		return nil, false
	}
	b, err := os.ReadFile(d.path(mac))
	if err != nil {
		return nil, false
	}
	resp := &agentv1.BootResponse{}
	if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(b, resp); err != nil {
		d.cfg.Log.Warn("damaged cached boot decision ignored", "mac", mac, "err", err)
		return nil, false
	}
	return resp, true
}
