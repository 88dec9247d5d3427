package cli

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func tokenColumns() []column[*apiv1.Token] {
	return []column[*apiv1.Token]{
		{header: "ID", value: (*apiv1.Token).GetId},
		{header: "DESCRIPTION", value: (*apiv1.Token).GetDescription},
		{header: "ROLES", value: formatRoles},
		{header: "EXPIRES", value: func(t *apiv1.Token) string { return formatTime(t.GetExpiresAt()) }},
		{header: "REVOKED", value: func(t *apiv1.Token) string { return formatTime(t.GetRevokedAt()) }},
		{header: "CREATED-BY", wide: true, value: (*apiv1.Token).GetCreatedBy},
	}
}

// formatRoles lists admin, tenant and project roles in a stable order.
func formatRoles(t *apiv1.Token) string {
	var parts []string
	if t.GetAdminRole() != apiv1.Level_LEVEL_UNSPECIFIED {
		parts = append(parts, "admin="+enumShort(t.GetAdminRole()))
	}
	for _, id := range slices.Sorted(maps.Keys(t.GetTenantRoles())) {
		parts = append(parts, "tenant/"+id+"="+enumShort(t.GetTenantRoles()[id]))
	}
	for _, id := range slices.Sorted(maps.Keys(t.GetProjectRoles())) {
		parts = append(parts, "project/"+id+"="+enumShort(t.GetProjectRoles()[id]))
	}
	return strings.Join(parts, ",")
}

func parseLevel(flag, s string) (apiv1.Level, error) {
	n, err := parseEnum(flag, s, apiv1.Level(0).Descriptor())
	return apiv1.Level(n), err
}

// tokenFlags are the flags of token create.
type tokenFlags struct {
	description  string
	projects     []string
	roles        []string
	projectRoles []string
	tenantRoles  []string
	adminRole    string
	expires      time.Duration
}

// request builds the create request. --project and --role pair up by
// position, so "--project P1 --role viewer --project P2 --role owner" works
// like "--project-role P1=viewer --project-role P2=owner".
func (f tokenFlags) request() (*apiv1.TokenServiceCreateRequest, error) {
	req := &apiv1.TokenServiceCreateRequest{Description: f.description}
	if len(f.projects) != len(f.roles) {
		return nil, fmt.Errorf("--project and --role come in pairs: got %d --project and %d --role", len(f.projects), len(f.roles))
	}
	add := func(m *map[string]apiv1.Level, flag, id, role string) error {
		if id == "" {
			return fmt.Errorf("%s: empty id", flag)
		}
		l, err := parseLevel(flag, role)
		if err != nil {
			return err
		}
		if *m == nil {
			*m = map[string]apiv1.Level{}
		}
		if prev, dup := (*m)[id]; dup && prev != l {
			return fmt.Errorf("%s: %q given with two roles", flag, id)
		}
		(*m)[id] = l
		return nil
	}
	for i, p := range f.projects {
		if err := add(&req.ProjectRoles, "--role", p, f.roles[i]); err != nil {
			return nil, err
		}
	}
	for _, pr := range f.projectRoles {
		id, role, ok := strings.Cut(pr, "=")
		if !ok {
			return nil, fmt.Errorf("--project-role %q: want PROJECT=ROLE", pr)
		}
		if err := add(&req.ProjectRoles, "--project-role", id, role); err != nil {
			return nil, err
		}
	}
	for _, tr := range f.tenantRoles {
		id, role, ok := strings.Cut(tr, "=")
		if !ok {
			return nil, fmt.Errorf("--tenant-role %q: want TENANT=ROLE", tr)
		}
		if err := add(&req.TenantRoles, "--tenant-role", id, role); err != nil {
			return nil, err
		}
	}
	if f.adminRole != "" {
		l, err := parseLevel("--admin-role", f.adminRole)
		if err != nil {
			return nil, err
		}
		if l == apiv1.Level_LEVEL_OWNER {
			return nil, fmt.Errorf("--admin-role %q: want viewer or editor", f.adminRole)
		}
		req.AdminRole = l
	}
	if f.expires < 0 {
		return nil, fmt.Errorf("--expires %s: must be positive", f.expires)
	}
	if f.expires > 0 {
		req.ExpiresIn = durationpb.New(f.expires)
	}
	if req.AdminRole == apiv1.Level_LEVEL_UNSPECIFIED && len(req.ProjectRoles) == 0 && len(req.TenantRoles) == 0 {
		return nil, errors.New("a token needs a role: --project P --role ROLE, --project-role, --tenant-role or --admin-role")
	}
	return req, nil
}

func (a *app) newTokenCommand() *cobra.Command {
	cols := tokenColumns()
	cmd := &cobra.Command{Use: "token", Aliases: []string{"tokens"}, Short: "Create, list and revoke API tokens"}

	var tf tokenFlags
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a token; prints the secret, which is shown only once",
		Example: `  metalctl token create --project $P --role viewer
  metalctl token create --project-role $P1=editor --tenant-role t1=viewer --expires 720h --description ci`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, err := tf.request()
			if err != nil {
				return err
			}
			p, err := a.printer("")
			if err != nil {
				return err
			}
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				resp, err := apiv1.NewTokenServiceClient(cc).Create(ctx, req)
				if err != nil {
					return err
				}
				// Only the secret, so `export METALCTL_API_TOKEN=$(metalctl token create ...)` works.
				if p.isTable() {
					_, err := fmt.Fprintln(p.w, resp.GetSecret())
					return err
				}
				return printOne(p, nil, resp)
			})
		},
	}
	f := create.Flags()
	f.StringVar(&tf.description, "description", "", "what the token is for")
	f.StringArrayVar(&tf.projects, "project", nil, "project id, paired with the --role at the same position (repeatable)")
	f.StringArrayVar(&tf.roles, "role", nil, "viewer, editor or owner for the --project at the same position (repeatable)")
	f.StringArrayVar(&tf.projectRoles, "project-role", nil, "PROJECT=ROLE (repeatable)")
	f.StringArrayVar(&tf.tenantRoles, "tenant-role", nil, "TENANT=ROLE (repeatable)")
	f.StringVar(&tf.adminRole, "admin-role", "", "viewer or editor over everything")
	f.DurationVar(&tf.expires, "expires", 0, "lifetime, e.g. 8h (server default 8h, at most a year)")

	list := &cobra.Command{
		Use:     "list",
		Aliases: []string{"ls"},
		Short:   "List tokens",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := a.printer("")
			if err != nil {
				return err
			}
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				resp, err := apiv1.NewTokenServiceClient(cc).List(ctx, &apiv1.TokenServiceListRequest{})
				if err != nil {
					return err
				}
				return printList(p, cols, resp.GetTokens())
			})
		},
	}

	revoke := &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return printCall(a, cmd, cols, func(ctx context.Context, cc grpc.ClientConnInterface) (*apiv1.Token, error) {
				resp, err := apiv1.NewTokenServiceClient(cc).Revoke(ctx, &apiv1.TokenServiceRevokeRequest{Id: args[0]})
				return resp.GetToken(), err
			})
		},
	}

	whoami := &cobra.Command{
		Use:   "whoami",
		Short: "Show the token in use",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return printCall(a, cmd, cols, func(ctx context.Context, cc grpc.ClientConnInterface) (*apiv1.Token, error) {
				resp, err := apiv1.NewTokenServiceClient(cc).Whoami(ctx, &apiv1.TokenServiceWhoamiRequest{})
				return resp.GetToken(), err
			})
		},
	}

	cmd.AddCommand(create, list, revoke, whoami)
	return cmd
}
