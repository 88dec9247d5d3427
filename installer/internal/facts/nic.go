package facts

import (
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strconv"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// readNICs lists the physical network interfaces: those backed by a device
// (PCI, virtio, USB), which leaves out lo, bridges, veths, bonds, tunnels.
func readNICs(r Root, log *slog.Logger) ([]*agentv1.NICFact, error) {
	dir := r.sys("class/net")
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		log.Warn("no net class in sysfs", "path", dir)
		return nil, nil
	}
	if err != nil {
		return nil, errPath(dir, err)
	}
	var out []*agentv1.NICFact
	for _, e := range ents {
		name := e.Name()
		d := filepath.Join(dir, name)
		if _, err := os.Stat(filepath.Join(d, "device")); err != nil {
			continue
		}
		mac, err := net.ParseMAC(readString(filepath.Join(d, "address")))
		if err != nil {
			log.Warn("interface without a MAC", "nic", name, "err", err)
			continue
		}
		nic := &agentv1.NICFact{Name: name, Mac: mac.String()}
		// speed is -1 or unreadable while the link is down.
		if s, err := strconv.Atoi(readString(filepath.Join(d, "speed"))); err == nil && s > 0 {
			nic.SpeedMbps = uint32(s)
		}
		out = append(out, nic)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
