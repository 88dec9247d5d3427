package cli

import (
	"context"
	"errors"
	"fmt"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func projectResource() resource[*apiv1.Project] {
	client := apiv1.NewProjectServiceClient
	r := resource[*apiv1.Project]{
		kind: "project",
		cols: []column[*apiv1.Project]{
			{header: "ID", value: (*apiv1.Project).GetId},
			{header: "TENANT", value: (*apiv1.Project).GetTenantId},
			{header: "NAME", value: (*apiv1.Project).GetName},
			{header: "LABELS", wide: true, value: func(p *apiv1.Project) string { return formatLabels(p.GetLabels()) }},
			{header: "CREATED", wide: true, value: func(p *apiv1.Project) string { return formatTime(p.GetMeta().GetCreatedAt()) }},
			{header: "DESCRIPTION", value: (*apiv1.Project).GetDescription},
		},
		newObj: func() *apiv1.Project { return &apiv1.Project{} },
		id: func(p *apiv1.Project) string {
			if p.GetId() != "" {
				return p.GetId()
			}
			return p.GetTenantId() + "/" + p.GetName()
		},
		get: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Project, error) {
			resp, err := client(cc).Get(ctx, &apiv1.ProjectServiceGetRequest{Id: id})
			return resp.GetProject(), err
		},
		create: func(ctx context.Context, cc grpc.ClientConnInterface, p *apiv1.Project) (*apiv1.Project, error) {
			resp, err := client(cc).Create(ctx, &apiv1.ProjectServiceCreateRequest{Project: p})
			return resp.GetProject(), err
		},
		update: func(ctx context.Context, cc grpc.ClientConnInterface, p *apiv1.Project) (*apiv1.Project, error) {
			resp, err := client(cc).Update(ctx, &apiv1.ProjectServiceUpdateRequest{Project: p})
			return resp.GetProject(), err
		},
		remove: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Project, error) {
			resp, err := client(cc).Delete(ctx, &apiv1.ProjectServiceDeleteRequest{Id: id})
			return resp.GetProject(), err
		},
	}
	// The server picks project ids, so a document without id is matched by
	// its name, which is unique within the tenant.
	r.upsert = func(ctx context.Context, cc grpc.ClientConnInterface, p *apiv1.Project) (*apiv1.Project, error) {
		if p.GetId() != "" {
			return r.update(ctx, cc, p)
		}
		created, err := r.create(ctx, cc, p)
		if status.Code(err) != codes.AlreadyExists {
			return created, err
		}
		resp, err := client(cc).List(ctx, &apiv1.ProjectServiceListRequest{TenantId: p.GetTenantId(), Name: p.GetName()})
		if err != nil {
			return nil, err
		}
		if n := len(resp.GetProjects()); n != 1 {
			return nil, fmt.Errorf("project %q of tenant %q exists but %d projects match it", p.GetName(), p.GetTenantId(), n)
		}
		upd := proto.Clone(p).(*apiv1.Project)
		upd.Id = resp.GetProjects()[0].GetId()
		return r.update(ctx, cc, upd)
	}
	return r
}

func (a *app) newProjectCommand() *cobra.Command {
	r := projectResource()
	cmd := &cobra.Command{Use: "project", Aliases: []string{"projects"}, Short: "Manage projects"}

	var tenant, name string
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.Project, error) {
		resp, err := apiv1.NewProjectServiceClient(cc).List(ctx, &apiv1.ProjectServiceListRequest{TenantId: tenant, Name: name})
		return resp.GetProjects(), err
	})
	list.Flags().StringVar(&tenant, "tenant", "", "only projects of this tenant")
	list.Flags().StringVar(&name, "name", "", "only projects with this name")

	var (
		file   string
		labels []string
	)
	p := &apiv1.Project{}
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a project; prints its id (the server picks it)",
		Example: `  metalctl project create --tenant t1 --name p1
  P=$(metalctl project create --tenant t1 --name p2)`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				return createFromFile(a, cmd, r, file)
			}
			if p.GetTenantId() == "" || p.GetName() == "" {
				return errors.New("--tenant and --name are required")
			}
			var err error
			if p.Labels, err = parseLabels(labels); err != nil {
				return err
			}
			pr, err := a.printer("")
			if err != nil {
				return err
			}
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				created, err := r.create(ctx, cc, p)
				if err != nil {
					return err
				}
				// Only the id, so scripts can capture it.
				if pr.format == formatTable {
					_, err := fmt.Fprintln(pr.w, created.GetId())
					return err
				}
				return printOne(pr, r.cols, created)
			})
		},
	}
	f := create.Flags()
	f.StringVarP(&file, "file", "f", "", "create the projects of a YAML file instead (- for stdin)")
	f.StringVar(&p.TenantId, "tenant", "", "tenant the project belongs to")
	f.StringVar(&p.Name, "name", "", "project name, unique within the tenant")
	f.StringVar(&p.Description, "description", "", "description")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")

	cmd.AddCommand(list, describeCommand(a, r), create, applyCommand(a, r), deleteCommand(a, r, "delete", "rm"))
	return cmd
}
