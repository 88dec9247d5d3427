package sysinit

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadLoadOrder(t *testing.T) {
	for name, tc := range map[string]struct {
		in   string
		want string
		err  bool
	}{
		"order kept, comments and blanks skipped": {
			in:   "# virtio first\nvirtio_ring.ko\nvirtio.ko  # needs virtio_ring\n\n  kernel/net/failover.ko\n",
			want: "virtio_ring.ko,virtio.ko,kernel/net/failover.ko",
		},
		"empty":    {in: "\n# nothing\n", want: ""},
		"absolute": {in: "/lib/modules/x.ko\n", err: true},
		"escapes":  {in: "../../etc/x.ko\n", err: true},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := ReadLoadOrder(strings.NewReader(tc.in))
			if tc.err {
				if err == nil {
					t.Fatalf("no error, got %v", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if strings.Join(got, ",") != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestLoadModulesToleratesMissingAndBadModules(t *testing.T) {
	dir := t.TempDir()
	// Not a module: finit_module refuses it (or, unprivileged, EPERM).
	if err := os.WriteFile(filepath.Join(dir, "bogus.ko"), []byte("not an ELF"), 0o644); err != nil {
		t.Fatal(err)
	}
	order := filepath.Join(dir, "load.order")
	if err := os.WriteFile(order, []byte("missing.ko\nbogus.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	n, err := LoadModules(order, slog.New(slog.NewTextHandler(&logs, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d modules loaded", n)
	}
	if strings.Count(logs.String(), "kernel module not loaded") != 2 {
		t.Errorf("logs %s", logs.String())
	}
	if _, err := LoadModules(filepath.Join(dir, "nope"), slog.New(slog.DiscardHandler)); err == nil {
		t.Error("no error for a missing load.order")
	}
}
