package cli

import (
	"context"
	"errors"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func sizeResource() resource[*apiv1.Size] {
	client := apiv1.NewSizeServiceClient
	constraint := func(t apiv1.SizeConstraintType) func(*apiv1.Size) string {
		return func(s *apiv1.Size) string { return formatConstraint(s.GetConstraints(), t) }
	}
	return resource[*apiv1.Size]{
		kind: "size",
		cols: []column[*apiv1.Size]{
			{header: "ID", value: (*apiv1.Size).GetId},
			{header: "NAME", value: (*apiv1.Size).GetName},
			{header: "CORES", value: constraint(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES)},
			{header: "MEMORY", value: constraint(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY)},
			{header: "STORAGE", value: constraint(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_STORAGE)},
			{header: "GPUS", wide: true, value: constraint(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU)},
			{header: "LABELS", wide: true, value: func(s *apiv1.Size) string { return formatLabels(s.GetLabels()) }},
			{header: "DESCRIPTION", wide: true, value: (*apiv1.Size).GetDescription},
		},
		newObj: func() *apiv1.Size { return &apiv1.Size{} },
		id:     (*apiv1.Size).GetId,
		get: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Size, error) {
			resp, err := client(cc).Get(ctx, &apiv1.SizeServiceGetRequest{Id: id})
			return resp.GetSize(), err
		},
		create: func(ctx context.Context, cc grpc.ClientConnInterface, s *apiv1.Size) (*apiv1.Size, error) {
			resp, err := client(cc).Create(ctx, &apiv1.SizeServiceCreateRequest{Size: s})
			return resp.GetSize(), err
		},
		update: func(ctx context.Context, cc grpc.ClientConnInterface, s *apiv1.Size) (*apiv1.Size, error) {
			resp, err := client(cc).Update(ctx, &apiv1.SizeServiceUpdateRequest{Size: s})
			return resp.GetSize(), err
		},
		remove: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.Size, error) {
			resp, err := client(cc).Delete(ctx, &apiv1.SizeServiceDeleteRequest{Id: id})
			return resp.GetSize(), err
		},
	}
}

func (a *app) newSizeCommand() *cobra.Command {
	r := sizeResource()
	cmd := &cobra.Command{Use: "size", Aliases: []string{"sizes"}, Short: "Manage machine sizes"}
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.Size, error) {
		resp, err := apiv1.NewSizeServiceClient(cc).List(ctx, &apiv1.SizeServiceListRequest{})
		return resp.GetSizes(), err
	})
	cmd.AddCommand(list, describeCommand(a, r), a.sizeCreateCommand(r), applyCommand(a, r), deleteCommand(a, r, "delete", "rm"))
	return cmd
}

func (a *app) sizeCreateCommand(r resource[*apiv1.Size]) *cobra.Command {
	var (
		file                   string
		cores, memory, storage string
		gpus, labels           []string
	)
	s := &apiv1.Size{}
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Create a size",
		Example: `  metalctl size create --id s1 --cores 1-64 --memory 1GiB-1TiB --storage 1GiB-100TiB
  metalctl size create --id gpu --cores 32 --memory 256GiB --gpus 2:H100*`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				return createFromFile(a, cmd, r, file)
			}
			if s.GetId() == "" {
				return errors.New("--id is required")
			}
			var err error
			if s.Constraints, err = sizeConstraints(cores, memory, storage, gpus); err != nil {
				return err
			}
			if s.Labels, err = parseLabels(labels); err != nil {
				return err
			}
			return createOne(a, cmd, r, s)
		},
	}
	f := cmd.Flags()
	f.StringVarP(&file, "file", "f", "", "create the sizes of a YAML file instead (- for stdin)")
	f.StringVar(&s.Id, "id", "", "size id")
	f.StringVar(&s.Name, "name", "", "display name")
	f.StringVar(&s.Description, "description", "", "description")
	f.StringVar(&cores, "cores", "", "CPU cores as MIN-MAX or N")
	f.StringVar(&memory, "memory", "", "memory as MIN-MAX or N with units B, KB..PB, KiB..PiB, e.g. 1GiB-1TiB")
	f.StringVar(&storage, "storage", "", "total disk size as MIN-MAX or N with units, e.g. 1GiB-100TiB")
	f.StringArrayVar(&gpus, "gpus", nil, "GPUs as COUNT[:MODEL], MODEL a glob like H100* (repeatable)")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")
	return cmd
}

func sizeReservationResource() resource[*apiv1.SizeReservation] {
	client := apiv1.NewSizeReservationServiceClient
	return resource[*apiv1.SizeReservation]{
		kind: "size reservation",
		cols: []column[*apiv1.SizeReservation]{
			{header: "ID", value: (*apiv1.SizeReservation).GetId},
			{header: "SIZE", value: (*apiv1.SizeReservation).GetSizeId},
			{header: "PARTITION", value: (*apiv1.SizeReservation).GetPartitionId},
			{header: "PROJECT", value: (*apiv1.SizeReservation).GetProjectId},
			{header: "AMOUNT", value: func(r *apiv1.SizeReservation) string { return formatUint(uint64(r.GetAmount())) }},
			{header: "LABELS", wide: true, value: func(r *apiv1.SizeReservation) string { return formatLabels(r.GetLabels()) }},
			{header: "DESCRIPTION", value: (*apiv1.SizeReservation).GetDescription},
		},
		newObj: func() *apiv1.SizeReservation { return &apiv1.SizeReservation{} },
		id:     (*apiv1.SizeReservation).GetId,
		get: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.SizeReservation, error) {
			resp, err := client(cc).Get(ctx, &apiv1.SizeReservationServiceGetRequest{Id: id})
			return resp.GetSizeReservation(), err
		},
		create: func(ctx context.Context, cc grpc.ClientConnInterface, r *apiv1.SizeReservation) (*apiv1.SizeReservation, error) {
			resp, err := client(cc).Create(ctx, &apiv1.SizeReservationServiceCreateRequest{SizeReservation: r})
			return resp.GetSizeReservation(), err
		},
		update: func(ctx context.Context, cc grpc.ClientConnInterface, r *apiv1.SizeReservation) (*apiv1.SizeReservation, error) {
			resp, err := client(cc).Update(ctx, &apiv1.SizeReservationServiceUpdateRequest{SizeReservation: r})
			return resp.GetSizeReservation(), err
		},
		remove: func(ctx context.Context, cc grpc.ClientConnInterface, id string) (*apiv1.SizeReservation, error) {
			resp, err := client(cc).Delete(ctx, &apiv1.SizeReservationServiceDeleteRequest{Id: id})
			return resp.GetSizeReservation(), err
		},
	}
}

func (a *app) newSizeReservationCommand() *cobra.Command {
	r := sizeReservationResource()
	cmd := &cobra.Command{
		Use:     "size-reservation",
		Aliases: []string{"sizereservation", "size-reservations", "sizereservations"},
		Short:   "Manage size reservations",
	}
	var project string
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.SizeReservation, error) {
		resp, err := apiv1.NewSizeReservationServiceClient(cc).List(ctx, &apiv1.SizeReservationServiceListRequest{ProjectId: project})
		return resp.GetSizeReservations(), err
	})
	list.Flags().StringVar(&project, "project", "", "only reservations of this project")

	var (
		file   string
		labels []string
	)
	sr := &apiv1.SizeReservation{}
	create := &cobra.Command{
		Use:   "create",
		Short: "Reserve machines of a size in a partition for a project",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file != "" {
				return createFromFile(a, cmd, r, file)
			}
			if sr.GetSizeId() == "" || sr.GetPartitionId() == "" || sr.GetProjectId() == "" {
				return errors.New("--size, --partition and --project are required")
			}
			var err error
			if sr.Labels, err = parseLabels(labels); err != nil {
				return err
			}
			return createOne(a, cmd, r, sr)
		},
	}
	f := create.Flags()
	f.StringVarP(&file, "file", "f", "", "create the reservations of a YAML file instead (- for stdin)")
	f.StringVar(&sr.Id, "id", "", "reservation id (the server picks one if empty)")
	f.StringVar(&sr.SizeId, "size", "", "size id")
	f.StringVar(&sr.PartitionId, "partition", "", "partition id")
	f.StringVar(&sr.ProjectId, "project", "", "project id")
	f.Uint32Var(&sr.Amount, "amount", 1, "number of machines to reserve")
	f.StringVar(&sr.Description, "description", "", "description")
	f.StringArrayVar(&labels, "label", nil, "label key=value (repeatable)")

	cmd.AddCommand(list, describeCommand(a, r), create, applyCommand(a, r), deleteCommand(a, r, "delete", "rm"))
	return cmd
}
