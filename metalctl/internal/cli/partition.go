package cli

import (
	"context"
	"errors"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func partitionResource() resource[*apiv1.Partition] {
	client := apiv1.NewPartitionServiceClient
	return resource[*apiv1.Partition]{
		kind: "partition",
		cols: []column[*apiv1.Partition]{
			{header: "ID", value: (*apiv1.Partition).GetId},
			{header: "NAME", value: (*apiv1.Partition).GetName},
			{header: "REGION", value: (*apiv1.Partition).GetRegion},
			{header: "DNS", wide: true, value: func(p *apiv1.Partition) string { return strings.Join(p.GetDnsServers(), ",") }},
			{header: "NTP", wide: true, value: func(p *apiv1.Partition) string { return strings.Join(p.GetNtpServers(), ",") }},
			{header: "LABELS", wide: true, value: func(p *apiv1.Partition) string { return formatLabels(p.GetLabels()) }},
			{header: "ATTACH", wide: true, value: func(p *apiv1.Partition) string {
				if p.GetAllowSingleAttach() {
					return "single allowed"
				}
				return "dual"
			}},
			{header: "DESCRIPTION", value: (*apiv1.Partition).GetDescription},
		},
		newObj: func() *apiv1.Partition { return &apiv1.Partition{} },
		id:     (*apiv1.Partition).GetId,
		get: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Partition, error) {
			resp, err := client(cc).Get(ctx, &apiv1.PartitionServiceGetRequest{Id: id})
			return resp.GetPartition(), err
		},
		create: func(ctx context.Context, cc grpc.ClientConnInterface, p *apiv1.Partition) (*apiv1.Partition, error) {
			resp, err := client(cc).Create(ctx, &apiv1.PartitionServiceCreateRequest{Partition: p})
			return resp.GetPartition(), err
		},
		update: func(ctx context.Context, cc grpc.ClientConnInterface, p *apiv1.Partition) (*apiv1.Partition, error) {
			resp, err := client(cc).Update(ctx, &apiv1.PartitionServiceUpdateRequest{Partition: p})
			return resp.GetPartition(), err
		},
		remove: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Partition, error) {
			resp, err := client(cc).Delete(ctx, &apiv1.PartitionServiceDeleteRequest{Id: id})
			return resp.GetPartition(), err
		},
	}
}

func (a *app) newPartitionCommand() *cobra.Command {
	r := partitionResource()
	cmd := &cobra.Command{Use: "partition", Aliases: []string{"partitions"}, Short: "Manage partitions"}
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.Partition, error) {
		resp, err := apiv1.NewPartitionServiceClient(cc).List(ctx, &apiv1.PartitionServiceListRequest{})
		return resp.GetPartitions(), err
	})
	cmd.AddCommand(list, describeCommand(a, r), a.partitionCreateCommand(r), applyCommand(a, r), deleteCommand(a, r, "delete", "rm"),
		a.newPartitionBMCCommand())
	return cmd
}

func (a *app) partitionCreateCommand(r resource[*apiv1.Partition]) *cobra.Command {
	var (
		file   string
		labels []string
		boot   apiv1.PartitionBootConfig
	)
	p := &apiv1.Partition{}
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a partition",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				return createFromFile(a, cmd, r, file)
			}
			if p.GetId() == "" {
				return errors.New("--id is required")
			}
			var err error
			if p.Labels, err = parseLabels(labels); err != nil {
				return err
			}
			if boot.KernelUrl != "" || boot.InitramfsUrl != "" || boot.Cmdline != "" {
				p.Boot = &apiv1.PartitionBootConfig{KernelUrl: boot.KernelUrl, InitramfsUrl: boot.InitramfsUrl, Cmdline: boot.Cmdline}
			}
			return createOne(a, cmd, r, p)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "create the partitions of a YAML file instead (- for stdin)")
	f.StringVar(&p.Id, "id", "", "partition id")
	f.StringVar(&p.Name, "name", "", "display name")
	f.StringVar(&p.Description, "description", "", "description")
	f.StringVar(&p.Region, "region", "", "region the partition belongs to")
	f.BoolVar(&p.AllowSingleAttach, "allow-single-attach", false, "let machines linked to fewer than two switches be allocated (a lab, a partition without a fabric); off: a machine must be dual attached")
	f.StringArrayVar(&p.DnsServers, "dns-server", nil, "DNS server for machines (repeatable)")
	f.StringArrayVar(&p.NtpServers, "ntp-server", nil, "NTP server for machines (repeatable)")
	f.StringVar(&boot.KernelUrl, "boot-kernel-url", "", "PXE kernel URL")
	f.StringVar(&boot.InitramfsUrl, "boot-initramfs-url", "", "PXE initramfs URL")
	f.StringVar(&boot.Cmdline, "boot-cmdline", "", "PXE kernel command line")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	return cmd
}
