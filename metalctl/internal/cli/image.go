package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func imageResource() resource[*apiv1.Image] {
	client := apiv1.NewImageServiceClient
	return resource[*apiv1.Image]{
		kind: "image",
		cols: []column[*apiv1.Image]{
			{header: "ID", value: (*apiv1.Image).GetId},
			{header: "NAME", wide: true, value: (*apiv1.Image).GetName},
			{header: "OS", value: (*apiv1.Image).GetOs},
			{header: "VERSION", value: (*apiv1.Image).GetVersion},
			{header: "CLASSIFICATION", value: func(i *apiv1.Image) string {
				return enumShort(i.GetClassification())
			}},
			{header: "FEATURES", wide: true, value: func(i *apiv1.Image) string {
				var fs []string
				for _, f := range i.GetFeatures() {
					fs = append(fs, enumShort(f))
				}
				return strings.Join(fs, ",")
			}},
			{header: "EXPIRES", value: func(i *apiv1.Image) string { return formatTime(i.GetExpiresAt()) }},
			{header: "URL", wide: true, value: (*apiv1.Image).GetUrl},
		},
		newObj: func() *apiv1.Image { return &apiv1.Image{} },
		id:     (*apiv1.Image).GetId,
		get: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Image, error) {
			resp, err := client(cc).Get(ctx, &apiv1.ImageServiceGetRequest{Id: id})
			return resp.GetImage(), err
		},
		create: func(ctx context.Context, cc grpc.ClientConnInterface, i *apiv1.Image) (*apiv1.Image, error) {
			resp, err := client(cc).Create(ctx, &apiv1.ImageServiceCreateRequest{Image: i})
			return resp.GetImage(), err
		},
		update: func(ctx context.Context, cc grpc.ClientConnInterface, i *apiv1.Image) (*apiv1.Image, error) {
			resp, err := client(cc).Update(ctx, &apiv1.ImageServiceUpdateRequest{Image: i})
			return resp.GetImage(), err
		},
		remove: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Image, error) {
			resp, err := client(cc).Delete(ctx, &apiv1.ImageServiceDeleteRequest{Id: id})
			return resp.GetImage(), err
		},
	}
}

func (a *app) newImageCommand() *cobra.Command {
	r := imageResource()
	cmd := &cobra.Command{Use: "image", Aliases: []string{"images"}, Short: "Manage operating system images"}
	var osName string
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.Image, error) {
		resp, err := apiv1.NewImageServiceClient(cc).List(ctx, &apiv1.ImageServiceListRequest{Os: osName})
		return resp.GetImages(), err
	})
	list.Flags().StringVar(&osName, "os", "", "only images of this operating system")
	cmd.AddCommand(list, describeCommand(a, r), a.imageCreateCommand(r), applyCommand(a, r), deleteCommand(a, r, "delete", "rm"), a.imageLatestCommand(r))
	return cmd
}

// imageLatestCommand asks central for the newest usable image of an OS, the
// one a machine create with just "--image debian" would get.
func (a *app) imageLatestCommand(r resource[*apiv1.Image]) *cobra.Command {
	var osName string
	var deprecated bool
	cmd := &cobra.Command{
		Use:   "latest --os OS",
		Short: "Show the newest usable image of an operating system",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if osName == "" {
				return errors.New("--os is required")
			}
			return printCall(a, cmd, r.cols, func(ctx context.Context, cc grpc.ClientConnInterface) (*apiv1.Image, error) {
				resp, err := apiv1.NewImageServiceClient(cc).Latest(ctx, &apiv1.ImageServiceLatestRequest{Os: osName, IncludeDeprecated: deprecated})
				return resp.GetImage(), err
			})
		},
	}
	cmd.Flags().StringVar(&osName, "os", "", "operating system, e.g. debian")
	cmd.Flags().BoolVar(&deprecated, "include-deprecated", false, "consider deprecated images too")
	return cmd
}

func (a *app) imageCreateCommand(r resource[*apiv1.Image]) *cobra.Command {
	var (
		file, classification, expires string
		features, labels              []string
	)
	img := &apiv1.Image{}
	cmd := &cobra.Command{
		Use:     "create",
		Short:   "Create an image",
		Example: "  metalctl image create --id debian-12 --os debian --version 12.0.0 --url https://images.example/debian-12.tar.zst --sha256 <hex>",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				return createFromFile(a, cmd, r, file)
			}
			if img.GetId() == "" || img.GetOs() == "" || img.GetVersion() == "" || img.GetUrl() == "" {
				return errors.New("--id, --os, --version and --url are required")
			}
			if classification != "" {
				n, err := parseEnum("--classification", classification, apiv1.ImageClassification(0).Descriptor())
				if err != nil {
					return err
				}
				img.Classification = apiv1.ImageClassification(n)
			}
			for _, f := range features {
				n, err := parseEnum("--feature", f, apiv1.ImageFeature(0).Descriptor())
				if err != nil {
					return err
				}
				img.Features = append(img.Features, apiv1.ImageFeature(n))
			}
			if expires != "" {
				t, err := parseExpiry(expires, a.streams.now())
				if err != nil {
					return fmt.Errorf("--expires: %w", err)
				}
				img.ExpiresAt = timestamppb.New(t)
			}
			var err error
			if img.Labels, err = parseLabels(labels); err != nil {
				return err
			}
			return createOne(a, cmd, r, img)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "create the images of a YAML file instead (- for stdin)")
	f.StringVar(&img.Id, "id", "", "image id, e.g. debian-12")
	f.StringVar(&img.Name, "name", "", "display name")
	f.StringVar(&img.Description, "description", "", "description")
	f.StringVar(&img.Os, "os", "", "operating system, e.g. debian")
	f.StringVar(&img.Version, "version", "", "semantic version, e.g. 12.0.0")
	f.StringVar(&img.Url, "url", "", "URL of the root filesystem tarball")
	f.StringVar(&img.Sha256, "sha256", "", "SHA-256 of the tarball, hex")
	f.StringVar(&classification, "classification", "", "preview, supported or deprecated")
	f.StringSliceVar(&features, "feature", nil, "machine and/or firewall (repeatable)")
	f.StringVar(&expires, "expires", "", "expiry as RFC 3339 time, date (2006-01-02) or duration from now (e.g. 2160h)")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	return cmd
}

func parseExpiry(s string, now time.Time) (time.Time, error) {
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	if d, err := time.ParseDuration(s); err == nil && d > 0 {
		return now.Add(d), nil
	}
	return time.Time{}, fmt.Errorf("%q: want an RFC 3339 time, a date like 2006-01-02 or a positive duration", s)
}
