package facts

import (
	"os"
	"path/filepath"
	"sort"
	"strings"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// gpuVendor names the PCI vendors of GPUs that matter for sizes; others
// are reported by their id. The installer carries no pci.ids database.
func gpuVendor(id string) string {
	switch id {
	case "10de":
		return "NVIDIA"
	case "1002":
		return "AMD"
	case "8086":
		return "Intel"
	}
	return id
}

// readGPUs lists PCI display controllers (class 0x03xxxx).
func readGPUs(r Root) ([]*agentv1.GPUFact, error) {
	dir := r.sys("bus/pci/devices")
	ents, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, errPath(dir, err)
	}
	var out []*agentv1.GPUFact
	for _, e := range ents {
		d := filepath.Join(dir, e.Name())
		class := hexID(readString(filepath.Join(d, "class")))
		if len(class) != 6 || !strings.HasPrefix(class, "03") {
			continue
		}
		vendor := gpuVendor(hexID(readString(filepath.Join(d, "vendor"))))
		model := readString(filepath.Join(d, "label"))
		if model == "" {
			model = hexID(readString(filepath.Join(d, "device")))
		}
		out = append(out, &agentv1.GPUFact{Vendor: vendor, Model: model, PciAddress: e.Name()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].PciAddress < out[j].PciAddress })
	return out, nil
}

// hexID turns sysfs' "0x10de" into "10de".
func hexID(s string) string {
	return strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(s, "0x"), "0X"))
}
