// Package boot decides what a PXE-booting machine boots: it asks central
// through the Boot RPC, remembers the answers on disk for when central is
// unreachable, and renders the iPXE scripts.
package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"strings"
)

// Arch is a booting machine's firmware as the scripts need it: iPXE on
// EFI wants initrd=<name> on the kernel line.
type Arch string

// Firmware kinds of the wire contract (BootRequest.arch).
const (
	BIOS    Arch = "bios"
	EFI     Arch = "efi"
	EFIHTTP Arch = "efi-http"
)

// IsEFI reports whether the machine runs EFI firmware.
func (a Arch) IsEFI() bool { return a == EFI || a == EFIHTTP }

// ParseArch reads an arch query value. "pcbios" is iPXE's ${platform}
// word for BIOS; empty means unknown.
func ParseArch(s string) (Arch, error) {
	switch s {
	case "":
		return "", nil
	case "bios", "pcbios":
		return BIOS, nil
	case "efi":
		return EFI, nil
	case "efi-http":
		return EFIHTTP, nil
	}
	if len(s) > 32 {
		s = s[:32] + "…"
	}
	return "", fmt.Errorf("arch %q: want bios, efi or efi-http", s)
}

// ParseMAC reads an Ethernet MAC in any notation net.ParseMAC knows and
// returns it in the contract's form: lower-case, colon separated.
func ParseMAC(s string) (string, error) {
	if s == "" {
		return "", errors.New("mac missing")
	}
	if len(s) > 32 {
		return "", fmt.Errorf("mac %q…: too long", s[:32])
	}
	hw, err := net.ParseMAC(s)
	if err != nil {
		return "", fmt.Errorf("mac %q: %w", s, err)
	}
	if len(hw) != 6 {
		return "", fmt.Errorf("mac %q: not a 6-byte Ethernet address", s)
	}
	return hw.String(), nil
}

// Query is what a boot script request asks for.
type Query struct {
	// MAC is empty when the request named none: the answer is then a
	// script that asks again with iPXE's own ${netX/mac}.
	MAC  string
	Arch Arch
}

// ParseQuery reads ?mac=&arch= of a boot script request; anything else
// in the query is ignored. Each parameter may appear once.
func ParseQuery(v url.Values) (Query, error) {
	var q Query
	macs, arches := v["mac"], v["arch"]
	if len(macs) > 1 || len(arches) > 1 {
		return q, errors.New("mac and arch may each be given once")
	}
	if len(macs) == 1 {
		mac, err := ParseMAC(macs[0])
		if err != nil {
			return q, err
		}
		q.MAC = mac
	}
	if len(arches) == 1 {
		a, err := ParseArch(arches[0])
		if err != nil {
			return q, err
		}
		q.Arch = a
	}
	return q, nil
}

// FileName checks a file name asked for under the iPXE directory (over
// HTTP or TFTP): a relative path without "..", no hidden files.
func FileName(name string) (string, error) {
	name = strings.TrimLeft(name, "/")
	if name == "" || len(name) > 255 || strings.ContainsAny(name, "\\\x00") || !fs.ValidPath(name) {
		return "", fmt.Errorf("file name %q not allowed", name)
	}
	for _, el := range strings.Split(name, "/") {
		if strings.HasPrefix(el, ".") {
			return "", fmt.Errorf("file name %q not allowed", name)
		}
	}
	return name, nil
}
