// Package dhcp is metal-pixie's DHCPv4 and DHCPv6 server for the
// partition's PXE network: addresses from a pool with leases on disk, and
// for network-booting clients what to load next — the iPXE binary over
// TFTP for PXE firmware, its URL for UEFI HTTP boot, and the boot script
// URL for a client that already runs iPXE.
package dhcp

import (
	"strings"

	"github.com/insomniacslk/dhcp/iana"

	"github.com/metalfleet/metalfleet/agents/pixie/internal/boot"
)

// Vendor classes of network-booting firmware (option 60, DHCPv6 option 16).
const (
	vendorPXE  = "PXEClient"
	vendorHTTP = "HTTPClient"
)

// Boot says what network-booting clients load.
type Boot struct {
	// BaseURL is pixie's HTTP server as clients of this family reach it,
	// e.g. http://192.0.2.1 or http://[2001:db8::1].
	BaseURL string
	// TFTPHost is pixie's TFTP address for PXE over IPv6 (tftp:// URLs);
	// unused for IPv4, where siaddr says it.
	TFTPHost string
	// BIOSFile and EFIFile are the iPXE binaries in the iPXE directory.
	BIOSFile, EFIFile string
}

// client is what a DHCP request says about its sender's boot.
type client struct {
	mac     string
	arch    iana.Arch
	hasArch bool
	pxe     bool // vendor class PXEClient…
	http    bool // vendor class HTTPClient…
	ipxe    bool // user class iPXE
}

func (c *client) vendor(class string) {
	c.pxe = c.pxe || strings.HasPrefix(class, vendorPXE)
	c.http = c.http || strings.HasPrefix(class, vendorHTTP)
}

// answer is what a client is told to load.
type answer struct {
	// file is a TFTP file name (tftp true) or a URL.
	file string
	tftp bool
	// vendor is echoed as the reply's vendor class: PXE firmware ignores
	// offers without "PXEClient", HTTP boot ones without "HTTPClient".
	vendor string
	// arch is the firmware as the boot script sees it.
	arch boot.Arch
	kind string
}

// scriptArch is how a client's architecture reads in the script URL.
func scriptArch(a iana.Arch, known bool) boot.Arch {
	if !known {
		return ""
	}
	switch a {
	case iana.INTEL_X86PC:
		return boot.BIOS
	case iana.EFI_X86_64, iana.EFI_BC:
		return boot.EFI
	case iana.EFI_X86_64_HTTP:
		return boot.EFIHTTP
	}
	return ""
}

// decide picks what c loads; ok is false for a client that does not boot
// from the network (or on a platform pixie has no iPXE for): it gets a
// plain lease.
func (b Boot) decide(c client, v6 bool) (answer, bool) {
	switch {
	case c.ipxe:
		arch := scriptArch(c.arch, c.hasArch)
		return answer{file: boot.ScriptURL(b.BaseURL, c.mac, arch), arch: arch, kind: "ipxe"}, true
	case c.http && c.hasArch && c.arch == iana.EFI_X86_64_HTTP:
		return answer{file: b.BaseURL + "/ipxe/" + b.EFIFile, vendor: vendorHTTP, arch: boot.EFIHTTP, kind: "efi-http"}, true
	case c.pxe && c.hasArch && c.arch == iana.INTEL_X86PC && !v6:
		return answer{file: b.BIOSFile, tftp: true, vendor: vendorPXE, arch: boot.BIOS, kind: "bios"}, true
	case c.pxe && c.hasArch && (c.arch == iana.EFI_X86_64 || c.arch == iana.EFI_BC):
		if v6 {
			return answer{file: "tftp://" + b.TFTPHost + "/" + b.EFIFile, vendor: vendorPXE, arch: boot.EFI, kind: "efi"}, true
		}
		return answer{file: b.EFIFile, tftp: true, vendor: vendorPXE, arch: boot.EFI, kind: "efi"}, true
	}
	return answer{}, false
}
