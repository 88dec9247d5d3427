package cli

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

const (
	prefixNetworkType = "NETWORK_TYPE_"
	familyIPv4        = "ipv4"
	familyIPv6        = "ipv6"
)

func networkResource() resource[*apiv1.Network] {
	client := apiv1.NewNetworkServiceClient
	return resource[*apiv1.Network]{
		kind: "network",
		cols: []column[*apiv1.Network]{
			{header: "ID", value: (*apiv1.Network).GetId},
			{header: "NAME", value: (*apiv1.Network).GetName},
			{header: "TYPE", value: func(n *apiv1.Network) string { return enumShort(n.GetType()) }},
			{header: "PARTITION", value: (*apiv1.Network).GetPartitionId},
			{header: "PROJECT", value: (*apiv1.Network).GetProjectId},
			{header: "PARENT", wide: true, value: (*apiv1.Network).GetParentId},
			{header: "VRF", value: func(n *apiv1.Network) string { return formatUint(uint64(n.GetVrf())) }},
			{header: "PREFIXES", value: func(n *apiv1.Network) string { return strings.Join(n.GetPrefixes(), ",") }},
			{header: "CHILD-LENGTHS", wide: true, value: func(n *apiv1.Network) string {
				var parts []string
				if l := n.GetChildPrefixLengthIpv4(); l != 0 {
					parts = append(parts, familyIPv4+"="+strconv.Itoa(int(l)))
				}
				if l := n.GetChildPrefixLengthIpv6(); l != 0 {
					parts = append(parts, familyIPv6+"="+strconv.Itoa(int(l)))
				}
				return strings.Join(parts, ",")
			}},
			{header: "USAGE", wide: true, value: func(n *apiv1.Network) string {
				u := n.GetUsage()
				var parts []string
				if u.GetIpv4Available() != "" || u.GetIpv4Used() != "" {
					parts = append(parts, familyIPv4+" "+u.GetIpv4Used()+"/"+u.GetIpv4Available())
				}
				if u.GetIpv6Available() != "" || u.GetIpv6Used() != "" {
					parts = append(parts, familyIPv6+" "+u.GetIpv6Used()+"/"+u.GetIpv6Available())
				}
				return strings.Join(parts, ",")
			}},
			{header: "DESCRIPTION", wide: true, value: (*apiv1.Network).GetDescription},
		},
		newObj: func() *apiv1.Network { return &apiv1.Network{} },
		id:     (*apiv1.Network).GetId,
		get: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Network, error) {
			resp, err := client(cc).Get(ctx, &apiv1.NetworkServiceGetRequest{Id: id})
			return resp.GetNetwork(), err
		},
		create: func(ctx context.Context, cc grpc.ClientConnInterface, n *apiv1.Network) (*apiv1.Network, error) {
			resp, err := client(cc).Create(ctx, &apiv1.NetworkServiceCreateRequest{Network: n})
			return resp.GetNetwork(), err
		},
		// Only name, description and labels of a network can change; prefixes
		// and VRFs are fixed once created.
		update: func(ctx context.Context, cc grpc.ClientConnInterface, n *apiv1.Network) (*apiv1.Network, error) {
			resp, err := client(cc).Update(ctx, &apiv1.NetworkServiceUpdateRequest{
				Id: n.GetId(), Name: n.GetName(), Description: n.GetDescription(), Labels: n.GetLabels(),
			})
			return resp.GetNetwork(), err
		},
		remove: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Network, error) {
			resp, err := client(cc).Delete(ctx, &apiv1.NetworkServiceDeleteRequest{Id: id})
			return resp.GetNetwork(), err
		},
	}
}

func (a *app) newNetworkCommand() *cobra.Command {
	r := networkResource()
	cmd := &cobra.Command{Use: "network", Aliases: []string{"networks", "net"}, Short: "Manage networks"}

	var partition, project, typ string
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.Network, error) {
		req := &apiv1.NetworkServiceListRequest{PartitionId: partition, ProjectId: project}
		if typ != "" {
			n, err := parseEnum("--type", typ, apiv1.NetworkType(0).Descriptor())
			if err != nil {
				return nil, err
			}
			req.Type = apiv1.NetworkType(n)
		}
		resp, err := apiv1.NewNetworkServiceClient(cc).List(ctx, req)
		return resp.GetNetworks(), err
	})
	list.Flags().StringVar(&partition, "partition", "", "only networks of this partition")
	list.Flags().StringVar(&project, "project", "", "only networks of this project")
	list.Flags().StringVar(&typ, "type", "", "only networks of this type: super, child, underlay or external")

	cmd.AddCommand(list, describeCommand(a, r), a.networkCreateCommand(r), a.networkAllocateCommand(r),
		applyCommand(a, r), deleteCommand(a, r, "delete", "rm"))
	return cmd
}

func (a *app) networkCreateCommand(r resource[*apiv1.Network]) *cobra.Command {
	var (
		file, typ    string
		childLengths []string
		labels       []string
	)
	n := &apiv1.Network{}
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a super, underlay or external network",
		Example: `  metalctl network create --id super-lab --partition lab --type super \
      --prefix 10.128.0.0/14 --prefix fd00:10::/48 --child-prefix-length 22 --child-prefix-length 64
  metalctl network create --id internet --partition lab --type external --prefix 203.0.113.0/24 --vrf 104009`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				return createFromFile(a, cmd, r, file)
			}
			if n.GetId() == "" || typ == "" || len(n.GetPrefixes()) == 0 {
				return errors.New("--id, --type and at least one --prefix are required")
			}
			t, err := parseNetworkCreateType(typ)
			if err != nil {
				return err
			}
			n.Type = t
			if len(childLengths) > 0 && t != apiv1.NetworkType_NETWORK_TYPE_SUPER {
				return errors.New("--child-prefix-length only applies to super networks")
			}
			if cmd.Flags().Changed("vrf") && t == apiv1.NetworkType_NETWORK_TYPE_SUPER {
				return errors.New("--vrf only applies to underlay and external networks; child networks get theirs on allocation")
			}
			if n.ChildPrefixLengthIpv4, n.ChildPrefixLengthIpv6, err = childPrefixLengths(n.GetPrefixes(), childLengths); err != nil {
				return err
			}
			if n.Labels, err = parseLabels(labels); err != nil {
				return err
			}
			return createOne(a, cmd, r, n)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "create the networks of a YAML file instead (- for stdin)")
	f.StringVar(&n.Id, "id", "", "network id")
	f.StringVar(&n.Name, "name", "", "display name")
	f.StringVar(&n.Description, "description", "", "description")
	f.StringVar(&n.PartitionId, "partition", "", "partition id")
	f.StringVar(&typ, "type", "", "super, underlay or external")
	f.StringArrayVar(&n.Prefixes, "prefix", nil, "prefix in CIDR notation, IPv4 or IPv6 (repeatable)")
	f.StringArrayVar(&childLengths, "child-prefix-length", nil,
		"length of child networks of a super network: N (assigned to the address families in the order they appear among --prefix) or ipv4=N / ipv6=N (repeatable)")
	f.Uint32Var(&n.Vrf, "vrf", 0, "VRF id / VNI of an underlay or external network")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	return cmd
}

func parseNetworkCreateType(s string) (apiv1.NetworkType, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "super":
		return apiv1.NetworkType_NETWORK_TYPE_SUPER, nil
	case "underlay":
		return apiv1.NetworkType_NETWORK_TYPE_UNDERLAY, nil
	case "external":
		return apiv1.NetworkType_NETWORK_TYPE_EXTERNAL, nil
	case "child":
		return 0, errors.New("--type child: child networks are made with 'metalctl network allocate'")
	}
	return 0, fmt.Errorf("--type %q: want super, underlay or external", s)
}

// childPrefixLengths maps --child-prefix-length values to address families.
// Explicit "ipv4=N"/"ipv6=N" values name their family; plain values fill
// the remaining families in the order they first appear among prefixes, so
// "--prefix 10.0.0.0/8 --prefix fd00::/48 --child-prefix-length 22
// --child-prefix-length 64" reads the way it is written.
func childPrefixLengths(prefixes, lengths []string) (v4, v6 uint32, err error) {
	var families []string
	longest := map[string]int{} // the child must fit in every prefix of its family
	for _, p := range prefixes {
		pfx, err := netip.ParsePrefix(strings.TrimSpace(p))
		if err != nil {
			return 0, 0, fmt.Errorf("--prefix %q: %w", p, err)
		}
		fam := familyIPv6
		if pfx.Addr().Is4() {
			fam = familyIPv4
		}
		bits, seen := longest[fam]
		if !seen {
			families = append(families, fam)
		}
		longest[fam] = max(bits, pfx.Bits())
	}

	got := map[string]uint32{}
	set := func(fam, raw, value string) error {
		if _, dup := got[fam]; dup {
			return fmt.Errorf("--child-prefix-length %q: %s given twice", raw, fam)
		}
		maxBits := 32
		if fam == familyIPv6 {
			maxBits = 128
		}
		n, err := strconv.Atoi(strings.TrimSpace(value))
		if err != nil || n < 1 || n > maxBits {
			return fmt.Errorf("--child-prefix-length %q: want a number from 1 to %d for %s", raw, maxBits, fam)
		}
		if n < longest[fam] {
			return fmt.Errorf("--child-prefix-length %q: /%d does not fit into a /%d %s prefix", raw, n, longest[fam], fam)
		}
		got[fam] = uint32(n)
		return nil
	}

	var positional []string
	for _, l := range lengths {
		fam, value, explicit := strings.Cut(l, "=")
		if !explicit {
			positional = append(positional, l)
			continue
		}
		fam = strings.ToLower(strings.TrimSpace(fam))
		if fam != familyIPv4 && fam != familyIPv6 {
			return 0, 0, fmt.Errorf("--child-prefix-length %q: unknown address family %q, want ipv4 or ipv6", l, fam)
		}
		if _, ok := longest[fam]; !ok {
			return 0, 0, fmt.Errorf("--child-prefix-length %q: no %s --prefix given", l, fam)
		}
		if err := set(fam, l, value); err != nil {
			return 0, 0, err
		}
	}
	var open []string
	for _, fam := range families {
		if _, ok := got[fam]; !ok {
			open = append(open, fam)
		}
	}
	if len(positional) > len(open) {
		return 0, 0, fmt.Errorf("--child-prefix-length: %d values but only %d address families left among --prefix (%s)",
			len(positional), len(open), strings.Join(families, ", "))
	}
	for i, l := range positional {
		if err := set(open[i], l, l); err != nil {
			return 0, 0, err
		}
	}
	return got[familyIPv4], got[familyIPv6], nil
}

func (a *app) networkAllocateCommand(r resource[*apiv1.Network]) *cobra.Command {
	var labels []string
	req := &apiv1.NetworkServiceAllocateRequest{}
	cmd := &cobra.Command{
		Use:     "allocate",
		Short:   "Allocate a child network with its own VRF for a project",
		Example: "  metalctl network allocate --project $P --partition lab --name n1",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if req.GetProjectId() == "" || req.GetPartitionId() == "" || req.GetName() == "" {
				return errors.New("--project, --partition and --name are required")
			}
			for i, f := range req.AddressFamilies {
				f = strings.ToLower(strings.TrimSpace(f))
				if f != familyIPv4 && f != familyIPv6 {
					return fmt.Errorf("--address-family %q: want ipv4 or ipv6", req.AddressFamilies[i])
				}
				req.AddressFamilies[i] = f
			}
			var err error
			if req.Labels, err = parseLabels(labels); err != nil {
				return err
			}
			return printCall(a, cmd, r.cols, func(ctx context.Context, cc grpc.ClientConnInterface) (*apiv1.Network, error) {
				resp, err := apiv1.NewNetworkServiceClient(cc).Allocate(ctx, req)
				return resp.GetNetwork(), err
			})
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.ProjectId, "project", "", "project id")
	f.StringVar(&req.PartitionId, "partition", "", "partition id")
	f.StringVar(&req.Name, "name", "", "network name")
	f.StringVar(&req.Description, "description", "", "description")
	f.StringVar(&req.ParentId, "parent", "", "super network to allocate from (default: the partition's only one)")
	f.StringSliceVar(&req.AddressFamilies, "address-family", nil, "ipv4 and/or ipv6 (default: every family of the parent)")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	return cmd
}
