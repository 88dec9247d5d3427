package boot

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// SystemdBootEFI is where Debian's systemd-boot-efi package keeps the boot
// loader; an image that wants UEFI disk boot carries it.
const SystemdBootEFI = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"

// SetupDisk makes the installed system boot from disk on later reboots.
// With an ESP (mounted at esp inside target) and systemd-boot in the image
// it installs systemd-boot as the removable-media loader
// (EFI/BOOT/BOOTX64.EFI), which firmware boots without an NVRAM entry, so
// no efibootmgr is needed; the kernel and initrd are copied to the ESP,
// which systemd-boot can read. Anything else is left to the image (a BIOS
// machine needs the image's own grub) and reported as false.
func SetupDisk(target, esp string, spec Spec, log *slog.Logger) (bool, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if esp == "" {
		log.Info("no EFI system partition in the layout; booting from disk is left to the image (a BIOS machine needs the image's grub)")
		return false, nil
	}
	loader := filepath.Join(target, SystemdBootEFI)
	if _, err := os.Stat(loader); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return false, fmt.Errorf("disk boot: %w", err)
		}
		log.Info("image carries no systemd-boot; booting from disk is left to the image", "looked_for", SystemdBootEFI)
		return false, nil
	}
	root := filepath.Join(target, esp)
	copies := [][2]string{
		{loader, "EFI/BOOT/BOOTX64.EFI"},
		{loader, "EFI/systemd/systemd-bootx64.efi"},
		{spec.Kernel, "metal/vmlinuz"},
	}
	if spec.Initrd != "" {
		copies = append(copies, [2]string{spec.Initrd, "metal/initrd.img"})
	}
	for _, c := range copies {
		if err := copyFile(c[0], filepath.Join(root, c[1])); err != nil {
			return false, fmt.Errorf("disk boot: %w", err)
		}
	}
	conf := "default metal.conf\ntimeout 0\nconsole-mode keep\neditor no\n"
	entry := fmt.Sprintf("title %s\nlinux /metal/vmlinuz\n", title(target))
	if spec.Initrd != "" {
		entry += "initrd /metal/initrd.img\n"
	}
	entry += "options " + spec.Cmdline + "\n"
	if err := writeFile(filepath.Join(root, "loader/loader.conf"), conf); err != nil {
		return false, fmt.Errorf("disk boot: %w", err)
	}
	if err := writeFile(filepath.Join(root, "loader/entries/metal.conf"), entry); err != nil {
		return false, fmt.Errorf("disk boot: %w", err)
	}
	log.Info("systemd-boot installed on the ESP", "esp", esp)
	return true, nil
}

// title is the image's PRETTY_NAME for the boot menu.
func title(target string) string {
	f, err := os.Open(filepath.Join(target, "etc/os-release"))
	if err != nil {
		return "Metalfleet"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	name := ""
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), "=")
		v = strings.Trim(v, `"'`)
		switch {
		case !ok:
		case k == "PRETTY_NAME" && v != "":
			return v
		case k == "NAME" && v != "":
			name = v
		}
	}
	if name != "" {
		return name
	}
	return "Metalfleet"
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s: %w", src, err)
	}
	if err := out.Sync(); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func writeFile(p, content string) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	return os.WriteFile(p, []byte(content), 0o644)
}
