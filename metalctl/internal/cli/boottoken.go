package cli

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func bootTokenColumns() []column[*apiv1.BootToken] {
	return []column[*apiv1.BootToken]{
		{header: "ID", value: (*apiv1.BootToken).GetId},
		{header: "PARTITION", value: (*apiv1.BootToken).GetPartitionId},
		{header: "EXPIRES", value: func(t *apiv1.BootToken) string { return formatTime(t.GetExpiresAt()) }},
		{header: "USED", value: func(t *apiv1.BootToken) string { return formatTime(t.GetUsedAt()) }},
		{header: "USED-BY", value: (*apiv1.BootToken).GetUsedBy},
	}
}

func (a *app) newBootTokenCommand() *cobra.Command {
	cols := bootTokenColumns()
	cmd := &cobra.Command{
		Use:     "boot-token",
		Aliases: []string{"boot-tokens", "boottoken"},
		Short:   "Create boot tokens that let PXE-booted servers of a partition join the fleet",
	}

	var expiresIn time.Duration
	req := &apiv1.BootTokenServiceCreateRequest{}
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a boot token; prints the secret, which is shown only once",
		Long: `Create a boot token of a partition and print it. A PXE-booted installer
exchanges it once for its own credential. The secret is shown only once;
central stores only its hash.

With -o json, yaml or template the output is the whole answer, the token
being its "secret" field.`,
		Example: `  metalctl boot-token create --partition lab
  metalctl boot-token create --partition lab --expires-in 2h -o template --template '{{.secret}}'`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if req.GetPartitionId() == "" {
				return errors.New("--partition is required")
			}
			if expiresIn < 0 {
				return fmt.Errorf("--expires-in %s: must be positive", expiresIn)
			}
			req.ExpiresIn = nil
			if expiresIn > 0 {
				req.ExpiresIn = durationpb.New(expiresIn)
			}
			p, err := a.printer("")
			if err != nil {
				return err
			}
			return a.withConn(cmd, func(ctx context.Context, cc grpc.ClientConnInterface) error {
				resp, err := apiv1.NewBootTokenServiceClient(cc).Create(ctx, req)
				if err != nil {
					return err
				}
				return printWithSecret(p, cols, resp.GetBootToken(), resp, resp.GetSecret(), "the boot token")
			})
		},
	}
	f := create.Flags()
	f.StringVar(&req.PartitionId, "partition", "", "partition whose servers may use the token")
	f.DurationVar(&expiresIn, "expires-in", 0, "lifetime, e.g. 30m (server default 30m, from 1m to 24h)")

	cmd.AddCommand(create)
	return cmd
}
