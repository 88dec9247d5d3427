// Package auth authenticates bearer tokens and authorises every RPC by the
// access rule its proto method declares (metalfleet.api.v1.access). One
// interceptor enforces the rules; handlers only filter lists by Visible.
package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"strings"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Principal is the authenticated caller: a token and its roles.
type Principal struct {
	TokenID  string
	Admin    apiv1.Level
	Projects map[string]apiv1.Level
	Tenants  map[string]apiv1.Level
}

// AdminLevel is the caller's admin role; owner counts as editor.
func (p *Principal) AdminLevel() apiv1.Level {
	return min(p.Admin, apiv1.Level_LEVEL_EDITOR)
}

// ProjectLevel is the caller's effective role on a project of a tenant.
func (p *Principal) ProjectLevel(projectID, tenantID string) apiv1.Level {
	l := p.AdminLevel()
	if projectID != "" {
		l = max(l, p.Projects[projectID])
	}
	if tenantID != "" {
		l = max(l, p.Tenants[tenantID])
	}
	return l
}

// TenantLevel is the caller's effective role on a tenant.
func (p *Principal) TenantLevel(tenantID string) apiv1.Level {
	return max(p.AdminLevel(), p.Tenants[tenantID])
}

// SeesAll reports whether lists need no filtering.
func (p *Principal) SeesAll() bool { return p.AdminLevel() >= apiv1.Level_LEVEL_VIEWER }

// Visible reports whether a project-owned object may be shown in a list.
func (p *Principal) Visible(projectID, tenantID string) bool {
	return p.ProjectLevel(projectID, tenantID) >= apiv1.Level_LEVEL_VIEWER
}

// Call is what one request carries for the audit log.
type Call struct {
	Principal *Principal
	Method    string
	RequestID string
}

type callKey struct{}

// WithCall stores c in ctx.
func WithCall(ctx context.Context, c *Call) context.Context {
	return context.WithValue(ctx, callKey{}, c)
}

// CallFrom returns the request's call info; nil outside an authenticated RPC.
func CallFrom(ctx context.Context) *Call {
	c, _ := ctx.Value(callKey{}).(*Call)
	return c
}

// PrincipalFrom returns the caller; a zero-role principal when absent so that
// misuse fails closed.
func PrincipalFrom(ctx context.Context) *Principal {
	if c := CallFrom(ctx); c != nil && c.Principal != nil {
		return c.Principal
	}
	return &Principal{}
}

// Secret prefixes mark Metalfleet secrets so that secret scanners can find
// leaked ones and people can tell them apart.
const (
	// TokenPrefix starts a people API token.
	TokenPrefix = "mft_"
	// AgentTokenPrefix starts an agent credential.
	AgentTokenPrefix = "mfa_"
	// BootTokenPrefix starts a one-time boot token.
	BootTokenPrefix = "mfb_"
)

// NewSecret returns a new bearer secret and the hash that is stored. 256 random
// bits make a fast hash safe here: there is nothing to brute-force.
func NewSecret() (secret string, hash []byte) { return NewPrefixedSecret(TokenPrefix) }

// NewPrefixedSecret is NewSecret for another kind of secret.
func NewPrefixedSecret(prefix string) (secret string, hash []byte) {
	b := make([]byte, 32)
	_, _ = rand.Read(b) // crypto/rand.Read never fails on Linux
	secret = prefix + base64.RawURLEncoding.EncodeToString(b)
	return secret, Hash(secret)
}

// Hash is the stored form of a secret.
func Hash(secret string) []byte {
	h := sha256.Sum256([]byte(strings.TrimSpace(secret)))
	return h[:]
}
