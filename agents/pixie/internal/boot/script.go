package boot

import (
	"fmt"
	"net/url"
	"path"
	"regexp"
	"strings"
)

// InitrdName is the name iPXE gives the installer initramfs; EFI kernels
// loaded by iPXE find it through initrd=<name> on their command line.
const InitrdName = "initramfs"

// tokenRE is what central's tokens look like (prefix + base64url). A
// token is written into a script, so nothing else may pass.
var tokenRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,256}$`)

// ValidToken reports whether tok can go into a kernel command line.
func ValidToken(tok string) bool { return tokenRE.MatchString(tok) }

// oneLine keeps s on one script line: a newline in a command line or an
// error text would otherwise start a new iPXE command.
func oneLine(s string) string {
	return strings.Join(strings.FieldsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }), " ")
}

// Cmdline is the installer's kernel command line: central's (or the
// document's) plus where pixie is, the boot token when there is one, and
// for EFI the initrd name.
func Cmdline(base, cmdline, token string, arch Arch) string {
	parts := []string{}
	if c := strings.TrimSpace(oneLine(cmdline)); c != "" {
		parts = append(parts, c)
	}
	parts = append(parts, "metal.pixie="+base)
	if token != "" {
		parts = append(parts, "metal.boot_token="+token)
	}
	if arch.IsEFI() {
		parts = append(parts, "initrd="+InitrdName)
	}
	return strings.Join(parts, " ")
}

// InstallerScript boots the installer. A failed download retries instead
// of falling through to the firmware, which would boot a disk the
// machine is supposed to be reinstalling.
func InstallerScript(mac, kernelURL, initrdURL, cmdline string) string {
	initrd := "initrd " + oneLine(initrdURL)
	if u, err := url.Parse(initrdURL); err != nil || path.Base(u.Path) != InitrdName {
		// iPXE names an image after its URL's last element; EFI kernels
		// look the initrd up by the name on their command line.
		initrd = "initrd --name " + InitrdName + " " + oneLine(initrdURL)
	}
	return fmt.Sprintf(`#!ipxe
echo metal-pixie: installer for %s
:start
kernel %s %s || goto retry
%s || goto retry
boot || goto retry
:retry
echo metal-pixie: boot failed, retrying in 5 s
sleep 5
goto start
`, mac, oneLine(kernelURL), oneLine(cmdline), initrd)
}

// DiskScript leaves iPXE: the firmware boots the next device, the disk.
// It exits with a failure status on purpose: a UEFI boot manager that gets
// EFI_SUCCESS back from a boot option stops going through the boot order
// and shows its menu (edk2 does); BIOS goes on to the next device either way.
func DiskScript(mac string) string {
	return fmt.Sprintf("#!ipxe\necho metal-pixie: %s boots from disk\nexit 1\n", mac)
}

// RetryScript asks again after a pause: while central cannot decide, the
// machine waits in iPXE rather than boot something stale.
func RetryScript(reason, again string) string {
	return fmt.Sprintf("#!ipxe\necho metal-pixie: %s\necho retrying in 10 s\nsleep 10\nchain --autofree --replace %s\n", oneLine(reason), oneLine(again))
}

// ChainScript answers a request that lacks the MAC or the arch (a DHCP
// answer could not know them): iPXE asks again naming the interface it
// booted from (netX) and its platform.
func ChainScript(base, mac string, arch Arch) string {
	if mac == "" {
		mac = "${netX/mac}"
	}
	a := string(arch)
	if a == "" {
		a = "${platform}"
	}
	return fmt.Sprintf("#!ipxe\nchain --autofree --replace %s/ipxe/boot.ipxe?mac=%s&arch=%s\n", base, mac, a)
}

// ScriptURL is the boot script URL iPXE gets over DHCP. mac or arch may
// be empty: the script then asks iPXE for them.
func ScriptURL(base, mac string, arch Arch) string {
	v := url.Values{}
	if mac != "" {
		v.Set("mac", mac)
	}
	if arch != "" {
		v.Set("arch", string(arch))
	}
	u := base + "/ipxe/boot.ipxe"
	if len(v) > 0 {
		u += "?" + v.Encode()
	}
	return u
}
