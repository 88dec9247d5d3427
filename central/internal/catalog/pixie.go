package catalog

import (
	"strings"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Trust is what an installer needs to find and trust central: the agent
// endpoints (host:port) it dials and the lower-case hex sha256 of
// central's CA certificate (DER) it checks the fetched CA against. Both
// go onto the installer's kernel command line.
type Trust struct {
	Centrals []string
	CAPin    string
}

// PixieDocument is what a partition's PXE service serves: the partition's
// installer kernel and initramfs, and its command line with central's
// endpoints, the partition and the CA pin appended.
func PixieDocument(t Trust, part *apiv1.Partition) *agentv1.PixieDocument {
	cmd := strings.Fields(part.GetBoot().GetCmdline())
	if len(t.Centrals) > 0 {
		cmd = append(cmd, "metal.central="+strings.Join(t.Centrals, ","))
	}
	cmd = append(cmd, "metal.partition="+part.GetId())
	if t.CAPin != "" {
		cmd = append(cmd, "metal.ca="+t.CAPin)
	}
	return &agentv1.PixieDocument{
		PartitionId:  part.GetId(),
		KernelUrl:    part.GetBoot().GetKernelUrl(),
		InitramfsUrl: part.GetBoot().GetInitramfsUrl(),
		Cmdline:      strings.Join(cmd, " "),
		Centrals:     t.Centrals,
		CaSha256:     t.CAPin,
	}
}
