package cli

import (
	"context"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func auditColumns() []column[*apiv1.AuditEntry] {
	return []column[*apiv1.AuditEntry]{
		{header: "AT", value: func(e *apiv1.AuditEntry) string { return formatTime(e.GetAt()) }},
		{header: "SUBJECT", value: (*apiv1.AuditEntry).GetSubject},
		{header: "METHOD", value: (*apiv1.AuditEntry).GetMethod},
		{header: "TARGET", value: (*apiv1.AuditEntry).GetTarget},
		{header: "PROJECT", wide: true, value: (*apiv1.AuditEntry).GetProjectId},
		{header: "REQUEST-ID", wide: true, value: (*apiv1.AuditEntry).GetRequestId},
	}
}

func (a *app) newAuditCommand() *cobra.Command {
	r := resource[*apiv1.AuditEntry]{kind: "audit entry", cols: auditColumns()}
	cmd := &cobra.Command{Use: "audit", Short: "Read the audit log"}
	req := &apiv1.AuditServiceListRequest{}
	list := listCommand(a, r, func(ctx context.Context, cc grpc.ClientConnInterface) ([]*apiv1.AuditEntry, error) {
		resp, err := apiv1.NewAuditServiceClient(cc).List(ctx, req)
		return resp.GetEntries(), err
	})
	list.Short = "List audit entries"
	list.Flags().StringVar(&req.Subject, "subject", "", "only calls made by this token id")
	list.Flags().StringVar(&req.Target, "target", "", "only changes of this object, e.g. network/n1")
	list.Flags().Uint32Var(&req.Limit, "limit", 0, "at most this many entries (server default 100, at most 1000)")
	cmd.AddCommand(list)
	return cmd
}
