package boot

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

func TestParseQuery(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want Query
		ok   bool
	}{
		{"mac=AA:BB:CC:DD:EE:FF&arch=efi", Query{"aa:bb:cc:dd:ee:ff", EFI}, true},
		{"mac=aa-bb-cc-dd-ee-ff&arch=pcbios", Query{"aa:bb:cc:dd:ee:ff", BIOS}, true},
		{"mac=aabb.ccdd.eeff&arch=efi-http&x=1", Query{"aa:bb:cc:dd:ee:ff", EFIHTTP}, true},
		{"", Query{}, true},
		{"mac=zz:bb:cc:dd:ee:ff", Query{}, false},
		{"mac=aa:bb:cc:dd:ee:ff:00:11", Query{}, false}, // EUI-64 is no Ethernet MAC
		{"mac=aa:bb:cc:dd:ee:ff&mac=aa:bb:cc:dd:ee:00", Query{}, false},
		{"mac=aa:bb:cc:dd:ee:ff&arch=arm64", Query{}, false},
		{"mac=" + strings.Repeat("a", 100), Query{}, false},
	} {
		v, _ := url.ParseQuery(tc.raw)
		got, err := ParseQuery(v)
		if (err == nil) != tc.ok {
			t.Errorf("%q: err %v, want ok=%v", tc.raw, err, tc.ok)
			continue
		}
		if tc.ok && got != tc.want {
			t.Errorf("%q: %+v, want %+v", tc.raw, got, tc.want)
		}
	}
}

func TestFileName(t *testing.T) {
	for in, want := range map[string]string{
		"undionly.kpxe": "undionly.kpxe", "/ipxe.efi": "ipxe.efi", "efi/snp.efi": "efi/snp.efi",
		"../etc/passwd": "", "a/../../b": "", ".hidden": "", "a/.x": "", "a\\b": "", "": "", "a\x00b": "",
	} {
		got, err := FileName(in)
		if want == "" && err == nil || want != "" && got != want {
			t.Errorf("%q: %q %v, want %q", in, got, err, want)
		}
	}
}

// FuzzParseQuery: whatever a machine puts in the query, a MAC that passes
// is canonical and an arch is one of the contract's words.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{"mac=aa:bb:cc:dd:ee:ff&arch=efi", "mac=AABB.CCDD.EEFF", "arch=bios", "mac=%zz", "mac=;;&&arch="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, err := ParseQuery(v)
		if err != nil {
			return
		}
		if q.MAC != "" {
			if again, err := ParseMAC(q.MAC); err != nil || again != q.MAC || len(q.MAC) != 17 || strings.ToLower(q.MAC) != q.MAC {
				t.Fatalf("accepted MAC %q is not canonical", q.MAC)
			}
		}
		switch q.Arch {
		case "", BIOS, EFI, EFIHTTP:
		default:
			t.Fatalf("accepted arch %q", q.Arch)
		}
		// Nothing accepted can break a script line.
		if s := InstallerScript(q.MAC, "http://k", "http://i", Cmdline("http://p", "", "", q.Arch)); strings.Count(s, "\n") != 10 {
			t.Fatalf("script has %d lines:\n%s", strings.Count(s, "\n"), s)
		}
	})
}

func TestScripts(t *testing.T) {
	cmd := Cmdline("http://10.0.0.1:80", "console=ttyS0 metal.partition=p1\nshell", "mfb_x-Y_1", EFI)
	if cmd != "console=ttyS0 metal.partition=p1 shell metal.pixie=http://10.0.0.1:80 metal.boot_token=mfb_x-Y_1 initrd=initramfs" {
		t.Fatalf("cmdline %q", cmd)
	}
	if c := Cmdline("http://p", "", "", BIOS); c != "metal.pixie=http://p" {
		t.Fatalf("bios cmdline without token: %q", c)
	}
	s := InstallerScript("aa:bb:cc:dd:ee:ff", "http://p/boot/vmlinuz", "http://p/boot/initramfs", cmd)
	for _, want := range []string{"#!ipxe\n", "\nkernel http://p/boot/vmlinuz " + cmd + " || goto retry\n", "\ninitrd http://p/boot/initramfs || goto retry\n", "\nboot || goto retry\n"} {
		if !strings.Contains(s, want) {
			t.Errorf("installer script lacks %q:\n%s", want, s)
		}
	}
	if d := DiskScript("aa:bb:cc:dd:ee:ff"); !strings.HasPrefix(d, "#!ipxe\n") || !strings.HasSuffix(d, "\nexit 1\n") {
		t.Errorf("disk script:\n%s", d)
	}
	r := RetryScript("central says\nno", "http://p/ipxe/boot.ipxe?mac=x")
	if strings.Count(r, "\n") != 5 || !strings.Contains(r, "chain --autofree --replace http://p/ipxe/boot.ipxe?mac=x\n") {
		t.Errorf("retry script:\n%s", r)
	}
	if c := ChainScript("http://p", "", ""); c != "#!ipxe\nchain --autofree --replace http://p/ipxe/boot.ipxe?mac=${netX/mac}&arch=${platform}\n" {
		t.Errorf("chain script:\n%s", c)
	}
	if u := ScriptURL("http://p", "aa:bb:cc:dd:ee:ff", EFI); u != "http://p/ipxe/boot.ipxe?arch=efi&mac=aa%3Abb%3Acc%3Add%3Aee%3Aff" {
		t.Errorf("script URL %s", u)
	}
	for tok, ok := range map[string]bool{"mfb_abc-DEF_9": true, "": false, "a b": false, "a\nb": false, "${x}": false} {
		if ValidToken(tok) != ok {
			t.Errorf("token %q valid=%v", tok, !ok)
		}
	}
}

// booter is a central whose answer the test sets.
type booter struct {
	mu    sync.Mutex
	resp  map[string]*agentv1.BootResponse
	err   error
	calls int
}

func (b *booter) Boot(ctx context.Context, req *agentv1.BootRequest) (*agentv1.BootResponse, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls++
	if b.err != nil {
		return nil, b.err
	}
	if r, ok := b.resp[req.GetMac()]; ok {
		return r, nil
	}
	return nil, status.Error(codes.NotFound, "unknown")
}

func (b *booter) set(err error) {
	b.mu.Lock()
	b.err = err
	b.mu.Unlock()
}

func TestDecideOffline(t *testing.T) {
	dir := t.TempDir()
	c := &booter{resp: map[string]*agentv1.BootResponse{
		"aa:00:00:00:00:01": {Action: agentv1.BootAction_BOOT_ACTION_INSTALLER, Cmdline: "c1", BootToken: "mfb_secret", BootTokenExpiresAt: timestamppb.New(time.Now().Add(time.Hour))},
		"aa:00:00:00:00:02": {Action: agentv1.BootAction_BOOT_ACTION_DISK},
		"aa:00:00:00:00:03": {Action: agentv1.BootAction_BOOT_ACTION_UNSPECIFIED},
	}}
	var doc *agentv1.PixieDocument
	d, err := NewDecider(DeciderConfig{Central: c, Dir: dir, Document: func() *agentv1.PixieDocument { return doc }})
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	req := func(mac string) *agentv1.BootRequest { return &agentv1.BootRequest{Mac: mac, Arch: "efi"} }

	dec, err := d.Decide(ctx, req("aa:00:00:00:00:01"))
	if err != nil || dec.Source != FromCentral || dec.Resp.GetBootToken() != "mfb_secret" {
		t.Fatalf("online: %+v %v", dec, err)
	}
	if _, err := d.Decide(ctx, req("aa:00:00:00:00:02")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Decide(ctx, req("aa:00:00:00:00:03")); err == nil || Offline(err) {
		t.Fatalf("unspecified action accepted or taken for offline: %v", err)
	}
	if _, err := d.Decide(ctx, req("aa:00:00:00:00:09")); err == nil || Offline(err) || status.Code(err) != codes.NotFound {
		t.Fatalf("refusal passed through: %v", err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "aa-00-00-00-00-01.json"))
	if err != nil || strings.Contains(string(b), "mfb_secret") {
		t.Fatalf("cached decision %s (%v): the token must not be on disk", b, err)
	}

	for _, offline := range []error{status.Error(codes.Unavailable, "down"), status.Error(codes.DeadlineExceeded, "slow")} {
		c.set(offline)
		dec, err = d.Decide(ctx, req("aa:00:00:00:00:01"))
		if err != nil || dec.Source != FromCache || dec.Resp.GetAction() != agentv1.BootAction_BOOT_ACTION_INSTALLER || dec.Resp.GetCmdline() != "c1" || dec.Resp.GetBootToken() != "" {
			t.Fatalf("offline, known MAC: %+v %v", dec, err)
		}
		if dec, err = d.Decide(ctx, req("aa:00:00:00:00:02")); err != nil || dec.Resp.GetAction() != agentv1.BootAction_BOOT_ACTION_DISK {
			t.Fatalf("offline, disk MAC: %+v %v", dec, err)
		}
		doc = nil
		if _, err := d.Decide(ctx, req("aa:00:00:00:00:05")); !Offline(err) {
			t.Fatalf("offline, unknown MAC, no document: %v", err)
		}
		doc = &agentv1.PixieDocument{KernelUrl: "http://k", InitramfsUrl: "http://i", Cmdline: "metal.partition=p1"}
		dec, err = d.Decide(ctx, req("aa:00:00:00:00:05"))
		if err != nil || dec.Source != FromDocument || dec.Resp.GetCmdline() != "metal.partition=p1" || dec.Resp.GetKernelUrl() != "http://k" || dec.Resp.GetBootToken() != "" {
			t.Fatalf("offline, unknown MAC: %+v %v", dec, err)
		}
		if _, _, err := d.BootToken(ctx, req("aa:00:00:00:00:01")); !Offline(err) {
			t.Fatalf("boot token while offline: %v", err)
		}
	}
	c.set(nil)
	if _, _, err := d.BootToken(ctx, req("aa:00:00:00:00:02")); !errors.Is(err, ErrNoToken) {
		t.Fatalf("boot token for a disk machine: %v", err)
	}
	if tok, exp, err := d.BootToken(ctx, req("aa:00:00:00:00:01")); err != nil || tok != "mfb_secret" || time.Until(exp) < 50*time.Minute {
		t.Fatalf("boot token: %q %v %v", tok, exp, err)
	}
}

// slowBooter never answers: a black-holed central.
type slowBooter struct{}

func (slowBooter) Boot(ctx context.Context, _ *agentv1.BootRequest) (*agentv1.BootResponse, error) {
	<-ctx.Done()
	return nil, status.FromContextError(ctx.Err()).Err()
}

func TestDecideTimesOut(t *testing.T) {
	d, err := NewDecider(DeciderConfig{Central: slowBooter{}, Timeout: 50 * time.Millisecond,
		Document: func() *agentv1.PixieDocument { return &agentv1.PixieDocument{Cmdline: "x"} }})
	if err != nil {
		t.Fatal(err)
	}
	dec, err := d.Decide(t.Context(), &agentv1.BootRequest{Mac: "aa:00:00:00:00:01"})
	if err != nil || dec.Source != FromDocument {
		t.Fatalf("black-holed central: %+v %v", dec, err)
	}
}
