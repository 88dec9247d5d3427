package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestMakeHelpListsEveryTarget runs `make help` into a pipe, as a person
// piping it to less or grep does: every target the Makefile documents
// with "## " is listed (also those with digits, like lab-e2e), and there
// are no terminal colour codes.
func TestMakeHelpListsEveryTarget(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	mk, err := os.ReadFile("../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	documented := regexp.MustCompile(`(?m)^([^\s:#=]+):[^=\n]*## `).FindAllStringSubmatch(string(mk), -1)
	if len(documented) < 10 {
		t.Fatalf("found only %d documented targets in the Makefile", len(documented))
	}
	cmd := exec.Command("make", "-s", "--no-print-directory", "-C", "../..", "help")
	cmd.Env = append(os.Environ(), "NO_COLOR=")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("make help: %v", err)
	}
	if strings.Contains(string(out), "\x1b") {
		t.Errorf("make help into a pipe prints escape sequences:\n%q", out)
	}
	listed := map[string]bool{}
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			listed[f[0]] = true
		}
	}
	for _, m := range documented {
		if !listed[m[1]] {
			t.Errorf("make help does not list %s", m[1])
		}
	}
}

// TestMakeRebuildsOnlyWhatChanged: with the binaries, the installer and
// the lab image newer than their sources, `make build installer-image
// lab-image` builds nothing (a second `make lab` takes seconds); a newer
// source rebuilds what is made from it and nothing else. make -n prints
// what it would run; -W pretends a file was just changed.
func TestMakeRebuildsOnlyWhatChanged(t *testing.T) {
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	dir := t.TempDir()
	vars := []string{"BIN=" + dir + "/bin", "INSTALLER_DIR=" + dir + "/installer", "LAB_IMAGE_DIR=" + dir + "/lab-image"}
	future := time.Now().Add(time.Hour)
	for _, f := range []string{"bin/metal-central", "bin/metalctl", "bin/metal-lab", "bin/metal-pixie", "bin/metal-phonehome", "bin/metal-core", "bin/metal-bmc", "bin/sonic-emu",
		"installer/vmlinuz", "installer/initramfs.cpio.gz", "lab-image/metal-lab-image.tar.zst"} {
		p := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, future, future); err != nil {
			t.Fatal(err)
		}
	}
	builds := regexp.MustCompile(`(?m)go build .*-o \S+|installer/build/build\.sh|lab/image/build\.sh`)
	for _, tc := range []struct {
		name    string
		changed string // a source that is newer, or none
		want    []string
	}{
		{"nothing changed", "", nil},
		{"lab image rootfs", "lab/image/rootfs/etc/inittab", []string{"lab/image/build.sh"}},
		{"shared build script", "installer/build/lib.sh", []string{"installer/build/build.sh", "lab/image/build.sh"}},
		{"agent runtime", "agents/agent/agent.go", []string{
			"go build -o " + dir + "/bin/metal-central", "go build -o " + dir + "/bin/metalctl", "go build -o " + dir + "/bin/metal-lab",
			"go build -o " + dir + "/bin/metal-pixie", "go build -trimpath -ldflags '-s -w' -o " + dir + "/bin/metal-phonehome", "go build -o " + dir + "/bin/metal-core",
			"go build -o " + dir + "/bin/metal-bmc", "go build -trimpath -ldflags '-s -w' -o " + dir + "/bin/sonic-emu",
			"installer/build/build.sh"}},
		{"metalctl", "metalctl/internal/cli/root.go", []string{
			"go build -o " + dir + "/bin/metal-central", "go build -o " + dir + "/bin/metalctl", "go build -o " + dir + "/bin/metal-lab",
			"go build -o " + dir + "/bin/metal-pixie", "go build -trimpath -ldflags '-s -w' -o " + dir + "/bin/metal-phonehome", "go build -o " + dir + "/bin/metal-core",
			"go build -o " + dir + "/bin/metal-bmc", "go build -trimpath -ldflags '-s -w' -o " + dir + "/bin/sonic-emu"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"-n", "--no-print-directory", "-C", "../.."}, vars...)
			if tc.changed != "" {
				if _, err := os.Stat("../../" + tc.changed); err != nil {
					t.Fatal(err)
				}
				args = append(args, "-W", tc.changed)
			}
			out, err := exec.Command("make", append(args, "build", "installer-image", "lab-image")...).CombinedOutput()
			if err != nil {
				t.Fatalf("make -n: %v\n%s", err, out)
			}
			got := builds.FindAllString(string(out), -1)
			for i, g := range got {
				got[i] = strings.Replace(g, "  ", " ", 1)
			}
			if strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("make would build:\n%s\nwant:\n%s\n(make -n said:\n%s)", strings.Join(got, "\n"), strings.Join(tc.want, "\n"), out)
			}
		})
	}
}
