package cli

import (
	"context"
	"errors"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func tenantResource() resource[*apiv1.Tenant] {
	client := apiv1.NewTenantServiceClient
	return resource[*apiv1.Tenant]{
		kind: "tenant",
		cols: []column[*apiv1.Tenant]{
			{header: "ID", value: (*apiv1.Tenant).GetId},
			{header: "NAME", value: (*apiv1.Tenant).GetName},
			{header: "LABELS", wide: true, value: func(t *apiv1.Tenant) string { return formatLabels(t.GetLabels()) }},
			{header: "CREATED", wide: true, value: func(t *apiv1.Tenant) string { return formatTime(t.GetMeta().GetCreatedAt()) }},
			{header: "DESCRIPTION", value: (*apiv1.Tenant).GetDescription},
		},
		newObj: func() *apiv1.Tenant { return &apiv1.Tenant{} },
		id:     (*apiv1.Tenant).GetId,
		get: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Tenant, error) {
			resp, err := client(cc).Get(ctx, &apiv1.TenantServiceGetRequest{Id: id})
			return resp.GetTenant(), err
		},
		create: func(ctx context.Context, cc grpc.ClientConnInterface, t *apiv1.Tenant) (*apiv1.Tenant, error) {
			resp, err := client(cc).Create(ctx, &apiv1.TenantServiceCreateRequest{Tenant: t})
			return resp.GetTenant(), err
		},
		update: func(ctx context.Context, cc grpc.ClientConnInterface, t *apiv1.Tenant) (*apiv1.Tenant, error) {
			resp, err := client(cc).Update(ctx, &apiv1.TenantServiceUpdateRequest{Tenant: t})
			return resp.GetTenant(), err
		},
		remove: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Tenant, error) {
			resp, err := client(cc).Delete(ctx, &apiv1.TenantServiceDeleteRequest{Id: id})
			return resp.GetTenant(), err
		},
	}
}

func (a *app) newTenantCommand() *cobra.Command {
	r := tenantResource()
	cmd := &cobra.Command{Use: "tenant", Aliases: []string{"tenants"}, Short: "Manage tenants"}
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.Tenant, error) {
		resp, err := apiv1.NewTenantServiceClient(cc).List(ctx, &apiv1.TenantServiceListRequest{})
		return resp.GetTenants(), err
	})

	var (
		file   string
		labels []string
	)
	t := &apiv1.Tenant{}
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a tenant",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				return createFromFile(a, cmd, r, file)
			}
			if t.GetId() == "" {
				return errors.New("--id is required")
			}
			var err error
			if t.Labels, err = parseLabels(labels); err != nil {
				return err
			}
			return createOne(a, cmd, r, t)
		},
	}
	f := create.Flags()
	f.StringVarP(&file, "file", "f", "", "create the tenants of a YAML file instead (- for stdin)")
	f.StringVar(&t.Id, "id", "", "tenant id")
	f.StringVar(&t.Name, "name", "", "display name")
	f.StringVar(&t.Description, "description", "", "description")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")

	cmd.AddCommand(list, describeCommand(a, r), create, applyCommand(a, r), deleteCommand(a, r, "delete", "rm"))
	return cmd
}
