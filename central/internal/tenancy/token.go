package tenancy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/field"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

const (
	// MaxTokenLifetime is the longest lifetime a token may be asked for.
	MaxTokenLifetime = 366 * 24 * time.Hour
	// defaultTokenLifetime is a token's lifetime when none is asked for.
	defaultTokenLifetime = 8 * time.Hour
	// maxTokenDepth bounds a token's lineage: authentication checks every
	// ancestor, so the chain's length is the cost of each call.
	maxTokenDepth = 32
)

// Principal implements auth.TokenLookup: one query per call, nothing cached,
// so a revocation takes effect on the very next request on every replica. The
// query also refuses a token with a revoked ancestor: RevokeToken marks the
// descendants too, but a child minted while its ancestor was being revoked
// may have missed that UPDATE.
func (l *Lookup) Principal(ctx context.Context, secret string) (*auth.Principal, error) {
	var (
		spec           []byte
		expires        time.Time
		revoked        *time.Time
		ancestorRevoke bool
	)
	err := l.st.Pool().QueryRow(ctx, `SELECT t.spec, t.expires_at, t.revoked_at,
			EXISTS (SELECT 1 FROM tokens a WHERE a.id = ANY (t.ancestors) AND a.revoked_at IS NOT NULL)
		FROM tokens t WHERE t.secret_hash = $1`, auth.Hash(secret)).
		Scan(&spec, &expires, &revoked, &ancestorRevoke)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, auth.ErrUnauthenticated
	}
	if err != nil {
		return nil, fmt.Errorf("look up token: %w", err)
	}
	if revoked != nil || ancestorRevoke || time.Now().After(expires) {
		return nil, auth.ErrUnauthenticated
	}
	t := &apiv1.Token{}
	if err := store.DecodeSpec(spec, t); err != nil {
		return nil, fmt.Errorf("decode token: %w", err)
	}
	return principalOf(t), nil
}

func principalOf(t *apiv1.Token) *auth.Principal {
	return &auth.Principal{TokenID: t.GetId(), Admin: t.GetAdminRole(), Projects: t.GetProjectRoles(), Tenants: t.GetTenantRoles()}
}

// MintToken stores a new token and returns its secret. It bypasses the
// caller checks: start-up uses it for the first admin token. A token minted
// by another (CreatedBy) never outlives it, whatever lifetime is asked: the
// expiry is cut to the creator's here, where every token is made. It also
// inherits the creator's lineage, so that revoking any ancestor reaches it.
func MintToken(ctx context.Context, tx pgx.Tx, t *apiv1.Token, lifetime time.Duration) (string, error) {
	secret, hash := auth.NewSecret()
	now := time.Now()
	expires := now.Add(lifetime)
	ancestors := []string{}
	if t.GetCreatedBy() != "" {
		p, err := readParent(ctx, tx, t.GetCreatedBy())
		if err != nil {
			return "", err
		}
		if len(p.ancestors)+1 >= maxTokenDepth {
			return "", status.Errorf(codes.FailedPrecondition, "a token may be at most %d mints away from its root: mint from a token nearer it", maxTokenDepth-1)
		}
		ancestors = append(p.ancestors, t.GetCreatedBy())
		if p.expires.Before(expires) {
			expires = p.expires
		}
	}
	t.Id = uuid.NewString()
	t.ExpiresAt = timestamppb.New(expires)
	t.Meta = &apiv1.Meta{CreatedAt: timestamppb.New(now), UpdatedAt: timestamppb.New(now)}
	spec, err := protojson.Marshal(t)
	if err != nil {
		return "", fmt.Errorf("encode token: %w", err)
	}
	if _, err := tx.Exec(ctx, `INSERT INTO tokens (id, secret_hash, spec, expires_at, created_by, created_at, ancestors) VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		t.GetId(), hash, spec, expires, store.Nullable(t.GetCreatedBy()), now, ancestors); err != nil {
		return "", fmt.Errorf("store token: %w", err)
	}
	return secret, nil
}

// CreateToken mints t for caller, who becomes its creator, with its audit
// row, and returns its secret. life is the lifetime asked for, 0 for none
// (8 hours, cut to what the caller's token has left). The token may hold
// no role the caller lacks and no role on a project or tenant that does
// not exist, and a lifetime asked for may not outlive the caller's token.
func CreateToken(ctx context.Context, st *store.Store, caller *auth.Principal, t *apiv1.Token, life time.Duration) (string, error) {
	t.CreatedBy = caller.TokenID
	asked := life != 0
	if !asked {
		life = defaultTokenLifetime
	}
	var secret string
	err := st.Tx(ctx, func(tx pgx.Tx) error {
		if asked {
			if err := checkLifetime(ctx, tx, caller.TokenID, life); err != nil {
				return err
			}
		}
		if err := checkCovers(ctx, tx, caller, principalOf(t)); err != nil {
			return err
		}
		if err := checkRoleTargets(ctx, tx, t); err != nil {
			return err
		}
		var err error
		if secret, err = MintToken(ctx, tx, t, life); err != nil {
			return err
		}
		return store.Audit(ctx, tx, "token/"+t.GetId(), "")
	})
	return secret, err
}

// parentToken is what minting needs of the token that mints.
type parentToken struct {
	expires   time.Time
	ancestors []string
}

func readParent(ctx context.Context, tx pgx.Tx, id string) (parentToken, error) {
	var p parentToken
	err := tx.QueryRow(ctx, `SELECT expires_at, ancestors FROM tokens WHERE id = $1`, id).Scan(&p.expires, &p.ancestors)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, status.Error(codes.Unauthenticated, "invalid, expired or revoked token")
	}
	if err != nil {
		return p, fmt.Errorf("read parent token: %w", err)
	}
	return p, nil
}

// checkLifetime refuses a lifetime asked for that would outlive the token
// that mints it, naming that token's expiry, rather than cutting it silently:
// whoever asked for a year-long CI token should learn they did not get one.
// Without a lifetime asked for, MintToken cuts the default to the parent's.
func checkLifetime(ctx context.Context, tx pgx.Tx, parent string, life time.Duration) error {
	p, err := readParent(ctx, tx, parent)
	if err != nil {
		return err
	}
	if left := time.Until(p.expires); life > left {
		v := field.Violations{Clip: auth.ClipEcho}
		v.Add("expires_in", "%s outlives the token that mints it, which expires at %s (in %s)",
			life, p.expires.UTC().Format(time.RFC3339), left.Truncate(time.Second))
		return v.Err("")
	}
	return nil
}

// checkCovers refuses to mint a token with a role the caller lacks; project
// roles the caller holds through the project's tenant count too.
func checkCovers(ctx context.Context, tx pgx.Tx, caller, want *auth.Principal) error {
	if caller.AdminLevel() >= apiv1.Level_LEVEL_EDITOR {
		return nil
	}
	if want.AdminLevel() > caller.AdminLevel() {
		return status.Error(codes.PermissionDenied, "cannot grant an admin role you do not hold")
	}
	for t, l := range want.Tenants {
		if l > caller.TenantLevel(t) {
			return status.Errorf(codes.PermissionDenied, "cannot grant tenant %q role you do not hold", t)
		}
	}
	for p, l := range want.Projects {
		var tenant string
		err := tx.QueryRow(ctx, `SELECT tenant_id FROM projects WHERE id = $1`, p).Scan(&tenant)
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && caller.ProjectLevel(p, tenant) < apiv1.Level_LEVEL_VIEWER) {
			return status.Errorf(codes.NotFound, "project %q not found", p)
		}
		if err != nil {
			return fmt.Errorf("read project's tenant: %w", err)
		}
		if l > caller.ProjectLevel(p, tenant) {
			return status.Errorf(codes.PermissionDenied, "cannot grant project %q role you do not hold", p)
		}
	}
	return nil
}

// checkRoleTargets refuses roles on projects and tenants that do not exist:
// such a role grants nothing today and something unintended once an object
// of that id is made. It runs after checkCovers, which already answers
// NotFound to callers who may not see a project, so it tells nobody
// anything they could not see.
func checkRoleTargets(ctx context.Context, tx pgx.Tx, t *apiv1.Token) error {
	v := field.Violations{Clip: auth.ClipEcho}
	for _, r := range []struct {
		field, table string
		roles        map[string]apiv1.Level
	}{{"project_roles", "projects", t.GetProjectRoles()}, {"tenant_roles", "tenants", t.GetTenantRoles()}} {
		if len(r.roles) == 0 {
			continue
		}
		ids := make([]string, 0, len(r.roles))
		for id := range r.roles {
			ids = append(ids, id)
		}
		rows, err := tx.Query(ctx, `SELECT id FROM `+r.table+` WHERE id = ANY($1)`, ids)
		if err != nil {
			return fmt.Errorf("check %s: %w", r.field, err)
		}
		found, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("check %s: %w", r.field, err)
		}
		exists := make(map[string]bool, len(found))
		for _, id := range found {
			exists[id] = true
		}
		slices.Sort(ids)
		for _, id := range ids {
			if !exists[id] {
				v.Add(r.field+"["+auth.Quote(id)+"]", "%s does not exist", strings.TrimSuffix(r.table, "s"))
			}
		}
	}
	return v.Err("")
}

// ListTokens returns every token to callers who see all, and to others the
// tokens they created and their own, oldest first, revoked ones marked.
func ListTokens(ctx context.Context, db store.Querier, caller *auth.Principal) ([]*apiv1.Token, error) {
	rows, err := db.Query(ctx, `SELECT spec, revoked_at FROM tokens
		WHERE $1 OR created_by = $2 OR id = $2 ORDER BY created_at`, caller.SeesAll(), caller.TokenID)
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	defer rows.Close()
	var out []*apiv1.Token
	for rows.Next() {
		var spec []byte
		var revoked *time.Time
		if err := rows.Scan(&spec, &revoked); err != nil {
			return nil, fmt.Errorf("list tokens: %w", err)
		}
		t := &apiv1.Token{}
		if err := store.DecodeSpec(spec, t); err != nil {
			return nil, fmt.Errorf("decode token: %w", err)
		}
		if revoked != nil {
			t.RevokedAt = timestamppb.New(*revoked)
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	return out, nil
}

// GetToken reads one token as it was minted.
func GetToken(ctx context.Context, db store.Querier, id string) (*apiv1.Token, error) {
	var spec []byte
	if err := db.QueryRow(ctx, `SELECT spec FROM tokens WHERE id = $1`, id).Scan(&spec); err != nil {
		return nil, fmt.Errorf("read token: %w", err)
	}
	t := &apiv1.Token{}
	if err := store.DecodeSpec(spec, t); err != nil {
		return nil, fmt.Errorf("decode token: %w", err)
	}
	return t, nil
}

// RevokeToken revokes the token id and every token minted from it,
// directly or further down, with its audit row. Admin editors revoke any
// token, others their own and those they created; a token the caller may
// not see is not found.
func RevokeToken(ctx context.Context, st *store.Store, caller *auth.Principal, id string) (*apiv1.Token, error) {
	var out *apiv1.Token
	err := st.Tx(ctx, func(tx pgx.Tx) error {
		var spec []byte
		var createdBy *string
		err := tx.QueryRow(ctx, `SELECT spec, created_by FROM tokens WHERE id = $1 FOR UPDATE`, id).Scan(&spec, &createdBy)
		mine := err == nil && (id == caller.TokenID || (createdBy != nil && *createdBy == caller.TokenID))
		if errors.Is(err, pgx.ErrNoRows) || (err == nil && !mine && !caller.SeesAll()) {
			return status.Errorf(codes.NotFound, "token %q not found", id)
		}
		if err != nil {
			return fmt.Errorf("read token: %w", err)
		}
		if !mine && caller.AdminLevel() < apiv1.Level_LEVEL_EDITOR {
			return status.Error(codes.PermissionDenied, "needs admin editor to revoke others' tokens")
		}
		out = &apiv1.Token{}
		if err := store.DecodeSpec(spec, out); err != nil {
			return fmt.Errorf("decode token: %w", err)
		}
		// The token and every token minted from it, directly or further
		// down, in one UPDATE through the lineage index.
		now := time.Now()
		if _, err := tx.Exec(ctx, `UPDATE tokens SET revoked_at = COALESCE(revoked_at, $2)
			WHERE id = $1 OR ancestors @> ARRAY[$1::TEXT]`, id, now); err != nil {
			return fmt.Errorf("revoke tokens: %w", err)
		}
		out.RevokedAt = timestamppb.New(now)
		return store.Audit(ctx, tx, "token/"+id, "")
	})
	return out, err
}
