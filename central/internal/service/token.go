package service

import (
	"context"
	"time"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/tenancy"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type tokenService struct {
	*API
	apiv1.UnimplementedTokenServiceServer
}

func (s *tokenService) Create(ctx context.Context, req *apiv1.TokenServiceCreateRequest) (*apiv1.TokenServiceCreateResponse, error) {
	var v violations
	v.text("description", req.GetDescription(), 1024)
	// No lifetime and a zero one both mean the default.
	life := req.GetExpiresIn().AsDuration()
	if life != 0 && (life < time.Minute || life > tenancy.MaxTokenLifetime) {
		v.add("expires_in", "must be between 1m and %s", tenancy.MaxTokenLifetime)
	}
	for id, l := range req.GetProjectRoles() {
		v.uuid("project_roles["+quote(id)+"]", id)
		if l == apiv1.Level_LEVEL_UNSPECIFIED {
			v.add("project_roles["+quote(id)+"]", "role required")
		}
	}
	for id, l := range req.GetTenantRoles() {
		v.id("tenant_roles["+quote(id)+"]", id)
		if l == apiv1.Level_LEVEL_UNSPECIFIED {
			v.add("tenant_roles["+quote(id)+"]", "role required")
		}
	}
	if req.GetAdminRole() == apiv1.Level_LEVEL_UNSPECIFIED && len(req.GetProjectRoles()) == 0 && len(req.GetTenantRoles()) == 0 {
		v.add("project_roles", "a token needs at least one role")
	}
	if err := v.err(); err != nil {
		return nil, err
	}
	t := &apiv1.Token{
		Description:  req.GetDescription(),
		AdminRole:    req.GetAdminRole(),
		ProjectRoles: req.GetProjectRoles(),
		TenantRoles:  req.GetTenantRoles(),
	}
	secret, err := tenancy.CreateToken(ctx, s.store, auth.PrincipalFrom(ctx), t, life)
	if err != nil {
		return nil, toStatus(err, "token")
	}
	return &apiv1.TokenServiceCreateResponse{Token: t, Secret: secret}, nil
}

// List shows admins every token and others the tokens they created.
func (s *tokenService) List(ctx context.Context, _ *apiv1.TokenServiceListRequest) (*apiv1.TokenServiceListResponse, error) {
	out, err := tenancy.ListTokens(ctx, s.store.Pool(), auth.PrincipalFrom(ctx))
	if err != nil {
		return nil, toStatus(err, "tokens")
	}
	return &apiv1.TokenServiceListResponse{Tokens: out}, nil
}

// Revoke: admin editors revoke any token, others their own and those they created.
func (s *tokenService) Revoke(ctx context.Context, req *apiv1.TokenServiceRevokeRequest) (*apiv1.TokenServiceRevokeResponse, error) {
	if req.GetId() == "" {
		var v violations
		v.add("id", "required")
		return nil, v.err()
	}
	out, err := tenancy.RevokeToken(ctx, s.store, auth.PrincipalFrom(ctx), req.GetId())
	if err != nil {
		return nil, toStatus(err, "token "+quote(req.GetId()))
	}
	return &apiv1.TokenServiceRevokeResponse{Token: out}, nil
}

func (s *tokenService) Whoami(ctx context.Context, _ *apiv1.TokenServiceWhoamiRequest) (*apiv1.TokenServiceWhoamiResponse, error) {
	t, err := tenancy.GetToken(ctx, s.store.Pool(), auth.PrincipalFrom(ctx).TokenID)
	if err != nil {
		return nil, toStatus(err, "token")
	}
	return &apiv1.TokenServiceWhoamiResponse{Token: t}, nil
}
