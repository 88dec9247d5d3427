package netlab

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// privateRunEnv marks the test binary re-executed by
// TestDeleteNSAfterIPNetnsAdd inside a mount namespace of its own.
const privateRunEnv = "NETLAB_TEST_PRIVATE_RUN"

// TestDeleteNSAfterIPNetnsAdd: the lab's namespaces can be deleted after
// someone ran `ip netns add` / `ip netns del` on the host, which binds
// /run/netns onto itself if it is no mount point yet — whether the lab's
// namespaces came before that (made the way the lab used to, on a plain
// directory) or after; and the namespaces of others stay usable.
//
// It runs in a mount namespace of its own with a fresh tmpfs on /run per
// case, so the host's /run/netns (and any lab on it) is not touched.
func TestDeleteNSAfterIPNetnsAdd(t *testing.T) {
	p := needRoot(t)
	for _, tool := range []string{"ip", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s", tool)
		}
	}
	if os.Getenv(privateRunEnv) == "" {
		cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--",
			os.Args[0], "-test.run=^TestDeleteNSAfterIPNetnsAdd$", "-test.v", "-test.count=1")
		cmd.Env = append(os.Environ(), privateRunEnv+"=1")
		out, err := cmd.CombinedOutput()
		t.Logf("in a private mount namespace:\n%s", out)
		if err != nil {
			t.Fatal(err)
		}
		return
	}
	ipNetns := func(t *testing.T, args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"netns"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip netns %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	// oldCreate makes a namespace as the lab did before: a bind mount on
	// /run/netns as a plain directory.
	oldCreate := func(t *testing.T, name string) {
		t.Helper()
		if err := os.MkdirAll(nsDir, 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(nsDir + "/" + name)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		if out, err := exec.Command("unshare", "--net="+nsDir+"/"+name, "true").CombinedOutput(); err != nil {
			t.Fatalf("unshare --net: %v: %s", err, out)
		}
	}
	lab := p + "lab"
	for _, tc := range []struct {
		name  string
		steps func(t *testing.T)
	}{
		{"lab, then ip netns add and del", func(t *testing.T) {
			if err := CreateNS(lab); err != nil {
				t.Fatal(err)
			}
			ipNetns(t, "add", "x")
			ipNetns(t, "add", "keep")
			ipNetns(t, "del", "x")
		}},
		{"ip netns add and del, then lab", func(t *testing.T) {
			ipNetns(t, "add", "keep")
			ipNetns(t, "add", "x")
			ipNetns(t, "del", "x")
			if err := CreateNS(lab); err != nil {
				t.Fatal(err)
			}
		}},
		{"lab made the old way, then ip netns add and del", func(t *testing.T) {
			oldCreate(t, "old-other")
			oldCreate(t, lab)
			ipNetns(t, "add", "x")
			ipNetns(t, "add", "keep")
			ipNetns(t, "del", "x")
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := unix.Mount("tmpfs", "/run", "tmpfs", 0, "mode=755"); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = unix.Unmount("/run", unix.MNT_DETACH) })
			tc.steps(t)
			if err := DeleteNS(lab); err != nil {
				t.Fatalf("DeleteNS: %v\n%s", err, nsMounts(t))
			}
			if left, err := ListNS(p); err != nil || len(left) > 0 {
				t.Fatalf("left: %v (%v)", left, err)
			}
			if m := nsMounts(t); strings.Contains(m, lab) {
				t.Fatalf("%s is still mounted:\n%s", lab, m)
			}
			// Everyone else's namespaces still work.
			ents, _ := os.ReadDir(nsDir)
			for _, e := range ents {
				if out, err := exec.Command("ip", "netns", "exec", e.Name(), "true").CombinedOutput(); err != nil {
					t.Errorf("ip netns exec %s: %v: %s", e.Name(), err, out)
				}
			}
			if len(ents) == 0 {
				t.Error("the other namespaces are gone")
			}
			// And the lab can come again.
			if err := CreateNS(lab); err != nil {
				t.Fatal(err)
			}
			if err := DeleteNS(lab); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// nsMounts lists the mounts under /run/netns, for failure messages.
func nsMounts(t *testing.T) string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var b strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.Contains(sc.Text(), "/run/netns") {
			b.WriteString(sc.Text() + "\n")
		}
	}
	return b.String()
}
