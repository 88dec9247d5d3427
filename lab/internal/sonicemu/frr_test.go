package sonicemu

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestFRRReload checks the router guest's --frr-reload for metal-core:
// the FRR the guest runs takes a new frr.conf that adds a VRF's BGP
// instance, then one that removes it (and adds another), as metal-core
// applies a document: validated with `vtysh --dryrun -f`, then the reload
// command with {file}. FRR_RELOAD overrides the command (default
// metal-core's, frr-reload.py --reload --confdir {dir} {file}). The file
// stays as written: FRR writing its own rendering into it would make
// metal-core see a change at every resync. It needs a running FRR
// (the guest's, which rcS started); elsewhere it is skipped.
func TestFRRReload(t *testing.T) {
	if out, err := exec.Command("vtysh", "-c", "show running-config").CombinedOutput(); err != nil {
		t.Skipf("no FRR running here (vtysh: %v: %.200s)", err, out)
	}
	reload := os.Getenv("FRR_RELOAD")
	if reload == "" {
		reload = "/usr/lib/frr/frr-reload.py --reload --confdir {dir} {file}"
	}
	running := func() string {
		t.Helper()
		out, err := exec.Command("vtysh", "-c", "show running-config").CombinedOutput()
		if err != nil {
			t.Fatalf("vtysh show running-config: %v: %s", err, out)
		}
		return string(out)
	}
	dir := t.TempDir()
	conf := func(vrfs ...string) string {
		var b strings.Builder
		b.WriteString("frr defaults datacenter\nhostname router\n!\nrouter bgp 4200000011\n bgp router-id 10.0.0.11\n neighbor FABRIC peer-group\n neighbor FABRIC remote-as external\n!\n")
		for _, v := range vrfs {
			b.WriteString("router bgp 4200000011 vrf " + v + "\n bgp router-id 10.0.0.11\n !\n address-family ipv4 unicast\n  redistribute connected\n exit-address-family\n!\n")
		}
		return b.String()
	}
	apply := func(name, content string) {
		t.Helper()
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := exec.Command("vtysh", "--dryrun", "-f", f).CombinedOutput(); err != nil {
			t.Fatalf("vtysh --dryrun -f %s: %v: %s", name, err, out)
		}
		args := strings.Fields(strings.NewReplacer("{file}", f, "{dir}", dir).Replace(reload))
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
		}
		if b, err := os.ReadFile(f); err != nil || string(b) != content {
			t.Fatalf("%s after the reload: %v, rewritten:\n%s", name, err, b)
		}
	}
	has := func(cfg, line string) bool {
		for _, l := range strings.Split(cfg, "\n") {
			if strings.TrimSpace(l) == line {
				return true
			}
		}
		return false
	}
	before := running()
	t.Logf("running-config before:\n%s", before)
	apply("add.conf", conf("Vrf104001"))
	added := running()
	t.Logf("running-config after adding Vrf104001:\n%s", added)
	if !has(added, "router bgp 4200000011 vrf Vrf104001") || !has(added, "neighbor FABRIC peer-group") {
		t.Fatal("FRR did not take the VRF's BGP instance")
	}
	apply("swap.conf", conf("Vrf104002"))
	swapped := running()
	t.Logf("running-config after replacing it by Vrf104002:\n%s", swapped)
	if has(swapped, "router bgp 4200000011 vrf Vrf104001") {
		t.Fatal("the removed VRF's BGP instance is still running")
	}
	if !has(swapped, "router bgp 4200000011 vrf Vrf104002") {
		t.Fatal("FRR did not take the new VRF's BGP instance")
	}
}
