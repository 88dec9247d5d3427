package service

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Console serves a machine's serial console through central's console
// broker (docs/bmc.md, "The console path"). The interceptor authorised the
// first request (owners and editors of the machine's project, admins).
func (s *machineService) Console(stream apiv1.MachineService_ConsoleServer) error {
	if s.console == nil {
		return status.Error(codes.Unimplemented, "this central serves no console")
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	var v violations
	v.id("id", first.GetId())
	if err := v.err(); err != nil {
		return err
	}
	return s.console.Serve(stream, first)
}
