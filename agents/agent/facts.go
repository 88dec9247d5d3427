package agent

import (
	"context"
	"net"
	"os"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// HostFacts returns a Facts function with what every agent knows of its
// host: version, hostname and global addresses.
func HostFacts(version string) func(context.Context) (*agentv1.Facts, error) {
	return func(context.Context) (*agentv1.Facts, error) {
		f := &agentv1.Facts{AgentVersion: version}
		f.Hostname, _ = os.Hostname()
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return f, err
		}
		for _, a := range addrs {
			ipn, ok := a.(*net.IPNet)
			if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() {
				continue
			}
			if len(f.Addresses) == 64 {
				break
			}
			f.Addresses = append(f.Addresses, ipn.IP.String())
		}
		return f, nil
	}
}
