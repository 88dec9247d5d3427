package cli

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func ipResource() resource[*apiv1.IP] {
	client := apiv1.NewIPServiceClient
	r := resource[*apiv1.IP]{
		kind: "ip",
		cols: []column[*apiv1.IP]{
			{header: "IP", value: (*apiv1.IP).GetIp},
			{header: "TYPE", value: func(ip *apiv1.IP) string { return enumShort(ip.GetType()) }},
			{header: "NETWORK", value: (*apiv1.IP).GetNetworkId},
			{header: "PROJECT", value: (*apiv1.IP).GetProjectId},
			{header: "NAME", value: (*apiv1.IP).GetName},
			{header: "MACHINE", wide: true, value: (*apiv1.IP).GetMachineId},
			{header: "LABELS", wide: true, value: func(ip *apiv1.IP) string { return formatLabels(ip.GetLabels()) }},
			{header: "DESCRIPTION", wide: true, value: (*apiv1.IP).GetDescription},
		},
		newObj: func() *apiv1.IP { return &apiv1.IP{} },
		id:     (*apiv1.IP).GetIp,
		get: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.IP, error) {
			resp, err := client(cc).Get(ctx, &apiv1.IPServiceGetRequest{Ip: id})
			return resp.GetIp(), err
		},
		create: func(ctx context.Context, cc grpc.ClientConnInterface, ip *apiv1.IP) (*apiv1.IP, error) {
			resp, err := client(cc).Allocate(ctx, &apiv1.IPServiceAllocateRequest{
				ProjectId: ip.GetProjectId(), NetworkId: ip.GetNetworkId(), Ip: ip.GetIp(), Type: ip.GetType(),
				Name: ip.GetName(), Description: ip.GetDescription(), Labels: ip.GetLabels(),
			})
			return resp.GetIp(), err
		},
		update: func(ctx context.Context, cc grpc.ClientConnInterface, ip *apiv1.IP) (*apiv1.IP, error) {
			resp, err := client(cc).Update(ctx, &apiv1.IPServiceUpdateRequest{
				Ip: ip.GetIp(), Name: ip.GetName(), Description: ip.GetDescription(), Type: ip.GetType(), Labels: ip.GetLabels(),
			})
			return resp.GetIp(), err
		},
		remove: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.IP, error) {
			resp, err := client(cc).Release(ctx, &apiv1.IPServiceReleaseRequest{Ip: id})
			return resp.GetIp(), err
		},
	}
	// Without an address every apply would take another IP; requiring it
	// keeps apply idempotent.
	r.upsert = func(ctx context.Context, cc grpc.ClientConnInterface, ip *apiv1.IP) (*apiv1.IP, error) {
		if ip.GetIp() == "" {
			return nil, errors.New("apply needs the ip field; use 'metalctl ip allocate' for the next free address")
		}
		res, err := r.create(ctx, cc, ip)
		if status.Code(err) != codes.AlreadyExists {
			return res, err
		}
		return r.update(ctx, cc, ip)
	}
	return r
}

func (a *app) newIPCommand() *cobra.Command {
	r := ipResource()
	cmd := &cobra.Command{Use: "ip", Aliases: []string{"ips"}, Short: "Allocate and release IP addresses"}

	var project, network string
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.IP, error) {
		resp, err := apiv1.NewIPServiceClient(cc).List(ctx, &apiv1.IPServiceListRequest{ProjectId: project, NetworkId: network})
		return resp.GetIps(), err
	})
	list.Flags().StringVar(&project, "project", "", "only IPs of this project")
	list.Flags().StringVar(&network, "network", "", "only IPs of this network")

	cmd.AddCommand(list, describeCommand(a, r), a.ipAllocateCommand(r), applyCommand(a, r),
		deleteCommand(a, r, "release", "delete", "rm"))
	return cmd
}

func (a *app) ipAllocateCommand(r resource[*apiv1.IP]) *cobra.Command {
	var (
		static bool
		labels []string
	)
	req := &apiv1.IPServiceAllocateRequest{}
	cmd := &cobra.Command{
		Use:   "allocate",
		Short: "Allocate an IP address of a network for a project",
		Example: `  metalctl ip allocate --project $P --network $N
  metalctl ip allocate --project $P --network internet --ip 203.0.113.10 --static --name web`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if req.GetProjectId() == "" || req.GetNetworkId() == "" {
				return errors.New("--project and --network are required")
			}
			if req.GetIp() != "" {
				addr, err := netip.ParseAddr(req.GetIp())
				if err != nil {
					return fmt.Errorf("--ip: %w", err)
				}
				req.Ip = addr.String()
			}
			if f := strings.ToLower(strings.TrimSpace(req.GetAddressFamily())); f != "" {
				if f != familyIPv4 && f != familyIPv6 {
					return fmt.Errorf("--address-family %q: want ipv4 or ipv6", req.GetAddressFamily())
				}
				req.AddressFamily = f
			}
			req.Type = apiv1.IPType_IP_TYPE_EPHEMERAL
			if static {
				req.Type = apiv1.IPType_IP_TYPE_STATIC
			}
			var err error
			if req.Labels, err = parseLabels(labels); err != nil {
				return err
			}
			return printCall(a, cmd, r.cols, func(ctx context.Context, cc grpc.ClientConnInterface) (*apiv1.IP, error) {
				resp, err := apiv1.NewIPServiceClient(cc).Allocate(ctx, req)
				return resp.GetIp(), err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.ProjectId, "project", "", "project id")
	f.StringVar(&req.NetworkId, "network", "", "network id")
	f.StringVar(&req.Ip, "ip", "", "specific address (default: the next free one)")
	f.BoolVar(&static, "static", false, "keep the IP until released (default: ephemeral, freed with its machine)")
	f.StringVar(&req.Name, "name", "", "name")
	f.StringVar(&req.Description, "description", "", "description")
	f.StringVar(&req.AddressFamily, "address-family", "", "ipv4 or ipv6 for a dual-stack network")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	return cmd
}
