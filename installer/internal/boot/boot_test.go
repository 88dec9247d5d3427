package boot

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tree builds files ("content") and symlinks ("->target") under a temp dir.
func tree(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, c := range files {
		full := filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}
		if l, ok := strings.CutPrefix(c, "->"); ok {
			if err := os.Symlink(l, full); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestFind(t *testing.T) {
	for name, tc := range map[string]struct {
		files          map[string]string
		kernel, initrd string // relative to the target; "" none
		err            error
	}{
		"debian absolute symlinks": {
			files: map[string]string{
				"boot/vmlinuz-6.1.0-9":     "k9",
				"boot/initrd.img-6.1.0-9":  "i9",
				"boot/vmlinuz-6.1.0-10":    "k10",
				"boot/initrd.img-6.1.0-10": "i10",
				// Absolute links must resolve inside the target, not on
				// the installer's root.
				"boot/vmlinuz":    "->/boot/vmlinuz-6.1.0-9",
				"boot/initrd.img": "->/boot/initrd.img-6.1.0-9",
			},
			kernel: "boot/vmlinuz-6.1.0-9", initrd: "boot/initrd.img-6.1.0-9",
		},
		"relative symlinks at the root": {
			files: map[string]string{
				"boot/vmlinuz-6.1.0-9":    "k",
				"boot/initrd.img-6.1.0-9": "i",
				"vmlinuz":                 "->boot/vmlinuz-6.1.0-9",
				"boot/vmlinuz":            "->../vmlinuz",
				"boot/initrd.img":         "->initrd.img-6.1.0-9",
			},
			kernel: "boot/vmlinuz-6.1.0-9", initrd: "boot/initrd.img-6.1.0-9",
		},
		"highest version wins numerically": {
			files: map[string]string{
				"boot/vmlinuz-6.1.0-9":     "k9",
				"boot/initrd.img-6.1.0-9":  "i9",
				"boot/vmlinuz-6.1.0-10":    "k10",
				"boot/initrd.img-6.1.0-10": "i10",
				"boot/config-6.1.0-11":     "c",
			},
			kernel: "boot/vmlinuz-6.1.0-10", initrd: "boot/initrd.img-6.1.0-10",
		},
		"dangling symlink falls back to versions": {
			files: map[string]string{
				"boot/vmlinuz":                "->/boot/vmlinuz-gone",
				"boot/vmlinuz-5.10.0-1":       "k",
				"boot/initramfs-5.10.0-1.img": "i",
			},
			kernel: "boot/vmlinuz-5.10.0-1", initrd: "boot/initramfs-5.10.0-1.img",
		},
		"kernel without initrd": {
			files:  map[string]string{"boot/vmlinuz-6.1": "k"},
			kernel: "boot/vmlinuz-6.1",
		},
		"no kernel": {
			files: map[string]string{"boot/config-6.1": "c", "etc/hostname": "x"},
			err:   ErrNoKernel,
		},
		"no boot dir": {
			files: map[string]string{"etc/hostname": "x"},
			err:   ErrNoKernel,
		},
		"symlink loop": {
			files:  map[string]string{"boot/vmlinuz": "->/boot/vmlinuz", "boot/vmlinuz-1": "k"},
			kernel: "boot/vmlinuz-1",
		},
	} {
		t.Run(name, func(t *testing.T) {
			root := tree(t, tc.files)
			k, i, err := Find(root)
			if tc.err != nil {
				if !errors.Is(err, tc.err) {
					t.Fatalf("err %v, want %v", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if want := filepath.Join(root, tc.kernel); k != want {
				t.Errorf("kernel %s, want %s", k, want)
			}
			want := ""
			if tc.initrd != "" {
				want = filepath.Join(root, tc.initrd)
			}
			if i != want {
				t.Errorf("initrd %q, want %q", i, want)
			}
		})
	}
}

func TestVersionLess(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		less bool
	}{
		{"6.1.0-9-amd64", "6.1.0-10-amd64", true},
		{"6.1.0-10-amd64", "6.1.0-9-amd64", false},
		{"5.10.0", "6.1.0", true},
		{"6.1", "6.1.1", true},
		{"6.1.0-09", "6.1.0-9", false},
		{"6.1.0-cloud", "6.1.0-rt", true},
	} {
		if got := versionLess(tc.a, tc.b); got != tc.less {
			t.Errorf("versionLess(%q, %q) = %v", tc.a, tc.b, got)
		}
	}
}

func TestCmdline(t *testing.T) {
	for name, tc := range map[string]struct {
		uuid  string
		extra string // content of /etc/metal/cmdline; "" no file
		want  string
		err   bool
	}{
		"plain": {uuid: "1234-ab", want: "root=UUID=1234-ab rw console=tty0 console=ttyS0,115200"},
		"image extras with comments": {
			uuid:  "u",
			extra: "# for the lab\nquiet  net.ifnames=0\n\nsystemd.unit=multi-user.target # default\n",
			want:  "root=UUID=u rw console=tty0 console=ttyS0,115200 quiet net.ifnames=0 systemd.unit=multi-user.target",
		},
		"no uuid":  {err: true},
		"bad uuid": {uuid: "a b", err: true},
	} {
		t.Run(name, func(t *testing.T) {
			files := map[string]string{}
			if tc.extra != "" {
				files["etc/metal/cmdline"] = tc.extra
			}
			got, err := Cmdline(tree(t, files), tc.uuid)
			if tc.err {
				if err == nil {
					t.Fatalf("no error, got %q", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got  %q\nwant %q", got, tc.want)
			}
		})
	}
}

func TestSetupDisk(t *testing.T) {
	base := map[string]string{
		"boot/vmlinuz-6.1":    "KERNEL",
		"boot/initrd.img-6.1": "INITRD",
		"etc/os-release":      "NAME=\"Metalfleet lab\"\nPRETTY_NAME=\"Metalfleet lab 1\"\n",
	}
	withLoader := map[string]string{SystemdBootEFI[1:]: "EFI-LOADER"}
	for name, tc := range map[string]struct {
		extra     map[string]string
		esp       string
		installed bool
	}{
		"esp and systemd-boot": {extra: withLoader, esp: "/boot/efi", installed: true},
		"esp without loader":   {esp: "/boot/efi"},
		"no esp (bios)":        {extra: withLoader},
	} {
		t.Run(name, func(t *testing.T) {
			files := map[string]string{}
			for k, v := range base {
				files[k] = v
			}
			for k, v := range tc.extra {
				files[k] = v
			}
			root := tree(t, files)
			spec, err := Prepare(root, "abcd-1234", tc.esp, nil)
			if err != nil {
				t.Fatal(err)
			}
			if spec.Kernel != filepath.Join(root, "boot/vmlinuz-6.1") || spec.Initrd != filepath.Join(root, "boot/initrd.img-6.1") {
				t.Fatalf("spec %+v", spec)
			}
			espDir := filepath.Join(root, "boot/efi")
			_, statErr := os.Stat(filepath.Join(espDir, "EFI/BOOT/BOOTX64.EFI"))
			if !tc.installed {
				if statErr == nil {
					t.Fatal("loader installed although it should not be")
				}
				return
			}
			for p, want := range map[string]string{
				"EFI/BOOT/BOOTX64.EFI":            "EFI-LOADER",
				"EFI/systemd/systemd-bootx64.efi": "EFI-LOADER",
				"metal/vmlinuz":                   "KERNEL",
				"metal/initrd.img":                "INITRD",
				"loader/loader.conf":              "default metal.conf\n",
				"loader/entries/metal.conf": "title Metalfleet lab 1\nlinux /metal/vmlinuz\ninitrd /metal/initrd.img\n" +
					"options root=UUID=abcd-1234 rw console=tty0 console=ttyS0,115200\n",
			} {
				b, err := os.ReadFile(filepath.Join(espDir, p))
				if err != nil {
					t.Fatal(err)
				}
				if !strings.HasPrefix(string(b), want) {
					t.Errorf("%s: %q, want prefix %q", p, b, want)
				}
			}
		})
	}
}

func TestSetupDiskWithoutInitrd(t *testing.T) {
	root := tree(t, map[string]string{"boot/vmlinuz-6.1": "K", SystemdBootEFI[1:]: "L"})
	if _, err := Prepare(root, "u", "/efi", nil); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(root, "efi/loader/entries/metal.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "initrd") || !strings.HasPrefix(string(b), "title Metalfleet\n") {
		t.Errorf("entry %q", b)
	}
}
