package cli

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func filesystemLayoutResource() resource[*apiv1.FilesystemLayout] {
	client := apiv1.NewFilesystemLayoutServiceClient
	return resource[*apiv1.FilesystemLayout]{
		kind: "filesystem layout",
		cols: []column[*apiv1.FilesystemLayout]{
			{header: "ID", value: (*apiv1.FilesystemLayout).GetId},
			{header: "NAME", value: (*apiv1.FilesystemLayout).GetName},
			{header: "SIZES", value: func(l *apiv1.FilesystemLayout) string {
				return strings.Join(l.GetConstraints().GetSizes(), ",")
			}},
			{header: "IMAGES", value: func(l *apiv1.FilesystemLayout) string {
				imgs := l.GetConstraints().GetImages()
				var parts []string
				for _, os := range slices.Sorted(maps.Keys(imgs)) {
					parts = append(parts, strings.TrimSpace(os+" "+imgs[os]))
				}
				return strings.Join(parts, ",")
			}},
			{header: "DISKS", wide: true, value: func(l *apiv1.FilesystemLayout) string {
				var ds []string
				for _, d := range l.GetDisks() {
					ds = append(ds, d.GetDevice())
				}
				return strings.Join(ds, ",")
			}},
			{header: "FILESYSTEMS", wide: true, value: func(l *apiv1.FilesystemLayout) string {
				var fs []string
				for _, f := range l.GetFilesystems() {
					if f.GetPath() != "" {
						fs = append(fs, f.GetPath())
					}
				}
				return strings.Join(fs, ",")
			}},
			{header: "DESCRIPTION", value: (*apiv1.FilesystemLayout).GetDescription},
		},
		newObj: func() *apiv1.FilesystemLayout { return &apiv1.FilesystemLayout{} },
		id:     (*apiv1.FilesystemLayout).GetId,
		get: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.FilesystemLayout, error) {
			resp, err := client(cc).Get(ctx, &apiv1.FilesystemLayoutServiceGetRequest{Id: id})
			return resp.GetFilesystemLayout(), err
		},
		create: func(ctx context.Context, cc grpc.ClientConnInterface, l *apiv1.FilesystemLayout) (*apiv1.FilesystemLayout, error) {
			resp, err := client(cc).Create(ctx, &apiv1.FilesystemLayoutServiceCreateRequest{FilesystemLayout: l})
			return resp.GetFilesystemLayout(), err
		},
		update: func(ctx context.Context, cc grpc.ClientConnInterface, l *apiv1.FilesystemLayout) (*apiv1.FilesystemLayout, error) {
			resp, err := client(cc).Update(ctx, &apiv1.FilesystemLayoutServiceUpdateRequest{FilesystemLayout: l})
			return resp.GetFilesystemLayout(), err
		},
		remove: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.FilesystemLayout, error) {
			resp, err := client(cc).Delete(ctx, &apiv1.FilesystemLayoutServiceDeleteRequest{Id: id})
			return resp.GetFilesystemLayout(), err
		},
	}
}

func (a *app) newFilesystemLayoutCommand() *cobra.Command {
	r := filesystemLayoutResource()
	cmd := &cobra.Command{
		Use:     "filesystem-layout",
		Aliases: []string{"fsl", "filesystem-layouts", "filesystemlayout"},
		Short:   "Manage filesystem layouts",
	}
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.FilesystemLayout, error) {
		resp, err := apiv1.NewFilesystemLayoutServiceClient(cc).List(ctx, &apiv1.FilesystemLayoutServiceListRequest{})
		return resp.GetFilesystemLayouts(), err
	})

	// Disks, RAIDs, volumes and filesystems are too nested for flags; they
	// come from -f. The flags cover the header and the constraints.
	var (
		file          string
		sizes, images []string
		labels        []string
	)
	l := &apiv1.FilesystemLayout{}
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a filesystem layout (disks, filesystems etc. via -f)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				return createFromFile(a, cmd, r, file)
			}
			if l.GetId() == "" {
				return errors.New("--id is required (use -f for a complete layout)")
			}
			if len(sizes) > 0 || len(images) > 0 {
				l.Constraints = &apiv1.FilesystemLayoutConstraints{Sizes: sizes}
				for _, im := range images {
					os, constraint, ok := strings.Cut(im, "=")
					if !ok || os == "" {
						return fmt.Errorf("--image %q: want OS=CONSTRAINT, e.g. debian=>=12.0", im)
					}
					if l.Constraints.Images == nil {
						l.Constraints.Images = map[string]string{}
					}
					l.Constraints.Images[os] = constraint
				}
			}
			var err error
			if l.Labels, err = parseLabels(labels); err != nil {
				return err
			}
			return createOne(a, cmd, r, l)
		},
	}
	f := create.Flags()
	f.StringVarP(&file, "file", "f", "", "create the layouts of a YAML file instead (- for stdin)")
	f.StringVar(&l.Id, "id", "", "layout id")
	f.StringVar(&l.Name, "name", "", "display name")
	f.StringVar(&l.Description, "description", "", "description")
	f.StringArrayVar(&sizes, "size", nil, "size id the layout applies to (repeatable)")
	f.StringArrayVar(&images, "image", nil, "OS=semver constraint the layout applies to, e.g. debian=>=12.0 (repeatable)")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")

	cmd.AddCommand(list, describeCommand(a, r), create, applyCommand(a, r), deleteCommand(a, r, "delete", "rm"))
	return cmd
}
