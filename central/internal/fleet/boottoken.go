package fleet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// The fleet owns the boot_tokens table: it mints tokens for PXE boots and
// for admins, exchanges them for installer credentials and sweeps them
// (docs/agent-protocol.md, "Boot tokens and the threat model").

// DefaultMaxUnusedBootTokens caps the unused, unexpired boot tokens of one
// partition. A PXE boot supersedes the unused token of its MAC, so only
// boots of distinct MACs add up: far more than a partition has machines
// booting at once, far less than a loop on the PXE network could mint.
const DefaultMaxUnusedBootTokens = 4096

// BootToken is a token to mint.
type BootToken struct {
	Partition string
	// MAC binds the token to the NIC it was minted for: the installer that
	// exchanges it must report that MAC. Empty only for tokens an admin
	// mints by hand.
	MAC string
	// Machine binds it to the machine that owned MAC when it was minted;
	// empty when the MAC was unknown.
	Machine   string
	TTL       time.Duration
	CreatedBy string
}

// MintedBootToken is a stored token and its secret, shown once.
type MintedBootToken struct {
	ID, Secret string
	ExpiresAt  time.Time
}

// MintBootToken stores a new one-time boot token inside tx, the caller's
// transaction (a store.Querier, so that callers need not name the
// driver's transaction type). A token bound to a MAC supersedes that MAC's unused tokens
// (only the newest boot of a NIC may claim); a partition holding
// Config.MaxUnusedBootTokens unused ones is refused with ResourceExhausted.
func (h *Hub) MintBootToken(ctx context.Context, tx store.Querier, t BootToken) (MintedBootToken, error) {
	if t.MAC != "" {
		if _, err := tx.Exec(ctx, `DELETE FROM boot_tokens WHERE mac = $1 AND used_at IS NULL`, t.MAC); err != nil {
			return MintedBootToken{}, fmt.Errorf("supersede boot tokens of %s: %w", t.MAC, err)
		}
	}
	var unused int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM boot_tokens WHERE partition_id = $1 AND used_at IS NULL AND expires_at > now()`,
		t.Partition).Scan(&unused); err != nil {
		return MintedBootToken{}, fmt.Errorf("count boot tokens: %w", err)
	}
	if unused >= h.cfg.MaxUnusedBootTokens {
		h.metrics.bootTokens.WithLabelValues("refused").Inc()
		return MintedBootToken{}, status.Errorf(codes.ResourceExhausted,
			"partition %q has %d unused boot tokens, the limit: a loop on its PXE network? they expire after their lifetime", t.Partition, unused)
	}
	secret, hash := auth.NewPrefixedSecret(auth.BootTokenPrefix)
	m := MintedBootToken{ID: uuid.NewString(), Secret: secret, ExpiresAt: time.Now().Add(t.TTL)}
	if _, err := tx.Exec(ctx, `INSERT INTO boot_tokens (id, partition_id, secret_hash, expires_at, created_by, mac, machine_id)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		m.ID, t.Partition, hash, m.ExpiresAt, t.CreatedBy, nullable(t.MAC), nullable(t.Machine)); err != nil {
		return MintedBootToken{}, fmt.Errorf("store boot token: %w", err)
	}
	h.metrics.bootTokens.WithLabelValues("minted").Inc()
	return m, nil
}

// CreateBootToken mints the boot token an admin asked for, with its audit
// row, in one transaction, once exists has found its partition.
func (h *Hub) CreateBootToken(ctx context.Context, t BootToken, exists PartitionCheck) (MintedBootToken, error) {
	var m MintedBootToken
	err := h.store.Tx(ctx, func(tx pgx.Tx) error {
		if err := exists(ctx, tx, t.Partition); err != nil {
			return err
		}
		var err error
		if m, err = h.MintBootToken(ctx, tx, t); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "boot-token/"+m.ID, "")
	})
	if err != nil {
		return MintedBootToken{}, err
	}
	return m, nil
}

// SweepBootTokens deletes boot tokens that expired before cutoff, used or
// not: an expired token proves nothing any more. It returns how many went.
func (h *Hub) SweepBootTokens(ctx context.Context, cutoff time.Time) (int64, error) {
	tag, err := h.store.Pool().Exec(ctx, `DELETE FROM boot_tokens WHERE expires_at < $1`, cutoff)
	if err != nil {
		return 0, fmt.Errorf("sweep boot tokens: %w", err)
	}
	return tag.RowsAffected(), nil
}

// Claim is a boot token exchange as the domain sees it: an installer
// proving a boot with a token, for the machine it names.
type Claim struct {
	Partition string
	// Identity is the machine the installer says it is.
	Identity string
	// MAC and Machine are what the token was bound to when minted.
	MAC, Machine string
	TokenID      string
}

// Claimer is implemented by a Domain that decides whether a boot may claim
// the machine it names (for example: not an installed, allocated one).
// It runs in the exchange's transaction; an error refuses the exchange
// and nothing of it is stored.
type Claimer interface {
	Claim(ctx context.Context, tx pgx.Tx, c Claim) error
}

// exchangeBootToken consumes a boot token once and gives the installer
// its own credential. The token must have been minted for a MAC the
// installer reports and for the machine it names; an installer known in
// another partition is refused (a partition's token proves nothing about
// other partitions); the domain has the last word on the machine.
func (h *Hub) exchangeBootToken(ctx context.Context, tx pgx.Tx, secret string, hello *agentv1.Hello) (Enrolment, error) {
	var (
		claim     = Claim{Identity: hello.GetIdentity()}
		mac, mach *string
	)
	err := tx.QueryRow(ctx, `UPDATE boot_tokens SET used_at = now()
		WHERE secret_hash = $1 AND used_at IS NULL AND expires_at > now() RETURNING id, partition_id, mac, machine_id`, auth.Hash(secret)).
		Scan(&claim.TokenID, &claim.Partition, &mac, &mach)
	if errors.Is(err, pgx.ErrNoRows) {
		return Enrolment{}, errBadBootToken
	}
	if err != nil {
		return Enrolment{}, fmt.Errorf("consume boot token: %w", err)
	}
	if mac != nil {
		claim.MAC = *mac
		if !reportsMAC(hello, claim.MAC) {
			return Enrolment{}, status.Errorf(codes.PermissionDenied,
				"this boot token was handed out for the PXE boot of MAC %s, which hello.facts.machine.nics does not list", claim.MAC)
		}
	}
	if mach != nil {
		claim.Machine = *mach
		if !strings.EqualFold(claim.Machine, hello.GetIdentity()) {
			return Enrolment{}, status.Errorf(codes.PermissionDenied,
				"this boot token was handed out for the PXE boot of machine %s, not %s", claim.Machine, hello.GetIdentity())
		}
	}
	kind := KindName(hello.GetKind())
	var known *string
	err = tx.QueryRow(ctx, `SELECT partition_id FROM agents WHERE kind = $1 AND identity = $2 FOR UPDATE`, kind, hello.GetIdentity()).Scan(&known)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
	case err != nil:
		return Enrolment{}, fmt.Errorf("look up installer: %w", err)
	case known == nil || *known != claim.Partition:
		return Enrolment{}, status.Errorf(codes.PermissionDenied, "%s/%s belongs to another partition than this boot token", kind, hello.GetIdentity())
	}
	if c, ok := h.domain.(Claimer); ok {
		if err := c.Claim(ctx, tx, claim); err != nil {
			return Enrolment{}, err
		}
	}
	e, err := h.Enroll(ctx, tx, hello.GetKind(), hello.GetIdentity(), claim.Partition, "boot-token/"+claim.TokenID)
	if err != nil {
		return Enrolment{}, err
	}
	if _, err := tx.Exec(ctx, `UPDATE boot_tokens SET used_by = $2 WHERE id = $1`, claim.TokenID, e.ID); err != nil {
		return Enrolment{}, fmt.Errorf("mark boot token used: %w", err)
	}
	h.metrics.bootTokens.WithLabelValues("exchanged").Inc()
	return e, nil
}

// reportsMAC tells whether the hello's machine facts list mac.
func reportsMAC(hello *agentv1.Hello, mac string) bool {
	want, err := net.ParseMAC(mac)
	if err != nil {
		return false
	}
	for _, n := range hello.GetFacts().GetMachine().GetNics() {
		if hw, err := net.ParseMAC(n.GetMac()); err == nil && hw.String() == want.String() {
			return true
		}
	}
	return false
}

func nullable(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}
