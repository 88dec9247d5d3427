// Package boot hands the machine over to the installed system: it finds the
// installed kernel, builds its command line, sets up booting from disk for
// later reboots (systemd-boot on the ESP when the image carries it) and
// kexecs into the kernel.
package boot

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"unicode"
)

// Spec is a kernel to start.
type Spec struct {
	// Kernel and Initrd are paths on the installer's file system (inside
	// the mounted target); Initrd may be empty.
	Kernel  string
	Initrd  string
	Cmdline string
}

// ErrNoKernel says the image carries no kernel the installer can find.
var ErrNoKernel = errors.New("no kernel in the installed system")

// Find looks for the installed kernel and initrd under target: the
// /boot/vmlinuz and /boot/initrd.img symlinks Debian keeps, else the
// highest /boot/vmlinuz-<version> and its initrd. Symlinks are resolved
// inside target, not on the installer's own file system.
func Find(target string) (kernel, initrd string, err error) {
	bootDir := filepath.Join(target, "boot")
	if k, err := resolve(target, "/boot/vmlinuz"); err == nil {
		i, err := resolve(target, "/boot/initrd.img")
		if err != nil {
			i = ""
		}
		return k, i, nil
	}
	entries, err := os.ReadDir(bootDir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return "", "", fmt.Errorf("find kernel: %w", err)
	}
	var versions []string
	for _, e := range entries {
		if v, ok := strings.CutPrefix(e.Name(), "vmlinuz-"); ok && v != "" {
			versions = append(versions, v)
		}
	}
	if len(versions) == 0 {
		return "", "", fmt.Errorf("%w: no /boot/vmlinuz or /boot/vmlinuz-* in the image", ErrNoKernel)
	}
	sort.Slice(versions, func(i, j int) bool { return versionLess(versions[i], versions[j]) })
	v := versions[len(versions)-1]
	kernel, err = resolve(target, "/boot/vmlinuz-"+v)
	if err != nil {
		return "", "", fmt.Errorf("find kernel: %w", err)
	}
	for _, name := range []string{"initrd.img-" + v, "initramfs-" + v + ".img", "initrd-" + v} {
		if i, err := resolve(target, "/boot/"+name); err == nil {
			return kernel, i, nil
		}
	}
	return kernel, "", nil
}

// resolve follows symlinks of p (absolute inside target) within target,
// and requires a regular file at the end.
func resolve(target, p string) (string, error) {
	for range 16 {
		full := filepath.Join(target, p)
		fi, err := os.Lstat(full)
		if err != nil {
			return "", err
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			if !fi.Mode().IsRegular() {
				return "", fmt.Errorf("%s: not a regular file", p)
			}
			return full, nil
		}
		link, err := os.Readlink(full)
		if err != nil {
			return "", err
		}
		if !path.IsAbs(link) {
			link = path.Join(path.Dir(p), link)
		}
		p = path.Clean("/" + link)
	}
	return "", fmt.Errorf("%s: too many symlinks", p)
}

// versionLess orders kernel versions: digit runs as numbers, the rest as
// text ("6.1.0-9" < "6.1.0-10").
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		ca, ra := chunk(a)
		cb, rb := chunk(b)
		if ca != cb {
			da, db := unicode.IsDigit(rune(ca[0])), unicode.IsDigit(rune(cb[0]))
			if da && db {
				ca, cb = strings.TrimLeft(ca, "0"), strings.TrimLeft(cb, "0")
				if len(ca) != len(cb) {
					return len(ca) < len(cb)
				}
			}
			return ca < cb
		}
		a, b = ra, rb
	}
	return len(a) < len(b)
}

func chunk(s string) (string, string) {
	digit := unicode.IsDigit(rune(s[0]))
	i := 1
	for i < len(s) && unicode.IsDigit(rune(s[i])) == digit {
		i++
	}
	return s[:i], s[i:]
}

// ExtraCmdlineFile is where an image keeps kernel parameters of its own,
// one or more per line, # comments allowed.
const ExtraCmdlineFile = "/etc/metal/cmdline"

// Cmdline builds the installed kernel's command line: the root file system
// by UUID, VGA and serial consoles, and the image's own parameters. The
// serial console comes last, which makes it /dev/console: servers are
// debugged over the BMC's serial-over-LAN, not a screen.
func Cmdline(target, rootUUID string) (string, error) {
	if rootUUID == "" {
		return "", errors.New("cmdline: root file system UUID unknown")
	}
	if strings.ContainsAny(rootUUID, " \t\n\"") {
		return "", fmt.Errorf("cmdline: bad root UUID %q", rootUUID)
	}
	parts := []string{"root=UUID=" + rootUUID, "rw", "console=tty0", "console=ttyS0,115200"}
	b, err := os.ReadFile(filepath.Join(target, ExtraCmdlineFile))
	switch {
	case err == nil:
		for _, line := range strings.Split(string(b), "\n") {
			line, _, _ = strings.Cut(line, "#")
			parts = append(parts, strings.Fields(line)...)
		}
	case !errors.Is(err, fs.ErrNotExist):
		return "", fmt.Errorf("cmdline: %w", err)
	}
	return strings.Join(parts, " "), nil
}

// Prepare finds the kernel in target, builds its command line and sets up
// booting from disk (see SetupDisk).
func Prepare(target, rootUUID, esp string, log *slog.Logger) (Spec, error) {
	k, i, err := Find(target)
	if err != nil {
		return Spec{}, err
	}
	cl, err := Cmdline(target, rootUUID)
	if err != nil {
		return Spec{}, err
	}
	spec := Spec{Kernel: k, Initrd: i, Cmdline: cl}
	if _, err := SetupDisk(target, esp, spec, log); err != nil {
		return Spec{}, err
	}
	return spec, nil
}
