package config

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

const secret = "mfa_s3cr3t-token"

func goodDoc() *agentv1.MachineDocument {
	return &agentv1.MachineDocument{
		MachineId: "4c4c4544-0000-1111-2222-333344445555",
		Allocation: &agentv1.MachineAllocation{
			Id:       "alloc-1",
			Hostname: "web-1.example.org",
			Image:    &agentv1.ImageRef{Id: "lab-1", Url: "http://img/lab.tar.zst", Sha256: strings.Repeat("a", 64)},
			Networks: []*agentv1.MachineNetwork{
				{NetworkId: "internet", Prefixes: []string{"203.0.113.0/24"}, Ips: []string{"203.0.113.10"}},
				{NetworkId: "private", Prefixes: []string{"10.0.0.0/22", "2001:db8::/64"}, Ips: []string{"10.0.1.5", "2001:db8::5"}, Private: true},
			},
			SshPublicKeys: []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB alice@laptop", "ssh-rsa AAAAB3Nza bob"},
			UserData:      "#cloud-config\npackages: [htop]\n",
			DnsServers:    []string{"192.0.2.53", "2001:db8::53"},
			NtpServers:    []string{"ntp.example.org", "192.0.2.123"},
		},
	}
}

func goodPhonehome(t *testing.T) Phonehome {
	bin := filepath.Join(t.TempDir(), "metal-phonehome")
	if err := os.WriteFile(bin, []byte("\x7fELF fake"), 0o644); err != nil {
		t.Fatal(err)
	}
	return Phonehome{MachineID: "4c4c4544-0000-1111-2222-333344445555", Centrals: []string{"central:8443", "[2001:db8::1]:8443"},
		CAPEM: []byte("-----BEGIN CERTIFICATE-----\nMII\n-----END CERTIFICATE-----\n"), Token: secret, Binary: bin, RelayPort: 4443}
}

var goodSystem = System{Fstab: "UUID=abc / ext4 defaults 0 1\n", NIC: "eth0", MAC: "52:54:00:12:34:56", Uplinks: []string{"eth1"}}

func read(t *testing.T, root, p string) (string, os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(filepath.Join(root, p))
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	b, err := os.ReadFile(filepath.Join(root, p))
	if err != nil {
		t.Fatal(err)
	}
	return string(b), fi.Mode()
}

func TestWrite(t *testing.T) {
	target := t.TempDir()
	// An image that already has some of the files, one of them linked out
	// of the installed system: the link is replaced, its target untouched.
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("keep"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(target, "etc/network"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(target, "etc/hostname")); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(target, "root/.ssh"), 0o777); err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	ph := goodPhonehome(t)
	if err := Write(target, goodDoc(), ph, goodSystem, log); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(outside); string(b) != "keep" {
		t.Fatalf("wrote through a symlink out of the target: %q", b)
	}
	for _, tc := range []struct {
		path string
		mode os.FileMode
		want []string // substrings, or the exact content when one starts with "="
	}{
		{"etc/hostname", 0o644, []string{"=web-1.example.org\n"}},
		{"etc/hosts", 0o644, []string{"127.0.1.1\tweb-1.example.org web-1\n", "127.0.0.1\tlocalhost\n"}},
		{"etc/resolv.conf", 0o644, []string{"nameserver 192.0.2.53\nnameserver 2001:db8::53\n"}},
		{TimesyncdDropIn, 0o644, []string{"=[Time]\nNTP=ntp.example.org 192.0.2.123\n"}},
		{AuthorizedKeys, 0o600, []string{"=ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB alice@laptop\nssh-rsa AAAAB3Nza bob\n"}},
		{UserData, 0o600, []string{"=#cloud-config\npackages: [htop]\n"}},
		{"etc/fstab", 0o644, []string{"=UUID=abc / ext4 defaults 0 1\n"}},
		{"etc/systemd/network/10-metal-eth0.network", 0o644, []string{
			"[Match]\nMACAddress=52:54:00:12:34:56\n",
			"Address=203.0.113.10/24\nAddress=10.0.1.5/22\nAddress=2001:db8::5/64\n",
			"Gateway=203.0.113.1\nGateway=2001:db8::1\n",
			"DNS=192.0.2.53\nDNS=2001:db8::53\n",
		}},
		{IfupdownConfig, 0o644, []string{
			"auto lo\niface lo inet loopback\n\nauto eth0\n",
			"iface eth0 inet static\n\taddress 203.0.113.10\n\tnetmask 255.255.255.0\n\tgateway 203.0.113.1\n\tup ip addr add 10.0.1.5/22 dev eth0\n",
			"iface eth0 inet6 static\n\taddress 2001:db8::5\n\tnetmask 64\n\tgateway 2001:db8::1\n",
			// The other NIC: up, link-local only, learning its leaf from RAs.
			"\nauto eth1\niface eth1 inet6 manual\n\tup ip link set dev eth1 up\n",
		}},
		{"etc/systemd/network/20-metal-eth1.network", 0o644, []string{"[Match]\nName=eth1\n", "LinkLocalAddressing=ipv6\nIPv6AcceptRA=yes\n"}},
		{PhonehomeUnit, 0o644, []string{"ExecStart=/usr/local/bin/metal-phonehome\n", "WantedBy=multi-user.target\n"}},
		{PhonehomeBinary, 0o755, []string{"=\x7fELF fake"}},
	} {
		got, mode := read(t, target, tc.path)
		if mode.Perm() != tc.mode || !mode.IsRegular() {
			t.Errorf("%s: mode %v, want %v", tc.path, mode, tc.mode)
		}
		for _, w := range tc.want {
			if exact, ok := strings.CutPrefix(w, "="); ok {
				if got != exact {
					t.Errorf("%s:\n got %q\nwant %q", tc.path, got, exact)
				}
			} else if !strings.Contains(got, w) {
				t.Errorf("%s:\n got %q\nwant it to contain %q", tc.path, got, w)
			}
		}
	}
	if fi, err := os.Stat(filepath.Join(target, "root/.ssh")); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("root/.ssh: %v %v, want 0700", fi.Mode(), err)
	}
	if l, err := os.Readlink(filepath.Join(target, PhonehomeWants)); err != nil || l != "/"+PhonehomeUnit {
		t.Errorf("enablement link %q %v", l, err)
	}

	// phonehome.json: the contract of helper-common.md, mode 0600.
	raw, mode := read(t, target, PhonehomeConfig)
	if mode.Perm() != 0o600 {
		t.Errorf("phonehome.json mode %v", mode)
	}
	var phj map[string]any
	if err := json.Unmarshal([]byte(raw), &phj); err != nil {
		t.Fatal(err)
	}
	if phj["machine_id"] != ph.MachineID || phj["token"] != secret || phj["ca_pem"] != string(ph.CAPEM) ||
		len(phj["centrals"].([]any)) != 2 || phj["relay_port"] != float64(4443) {
		t.Errorf("phonehome.json %v", phj)
	}

	// install.json is the machine document, readable back.
	rec, mode := read(t, target, InstallRecord)
	back := &agentv1.MachineDocument{}
	if err := protojson.Unmarshal([]byte(rec), back); err != nil || !proto.Equal(back, goodDoc()) || mode.Perm() != 0o600 {
		t.Errorf("install.json %v %v: %s", err, mode, rec)
	}

	if strings.Contains(logs.String(), secret) {
		t.Errorf("the credential was logged: %s", logs.String())
	}

	// Writing again (a reinstall onto the same target) works and stays
	// idempotent.
	if err := Write(target, goodDoc(), ph, goodSystem, nil); err != nil {
		t.Fatalf("second write: %v", err)
	}
}

func TestWriteWithoutNetworksUsesDHCPAndResolved(t *testing.T) {
	target := t.TempDir()
	if err := os.MkdirAll(filepath.Join(target, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	// systemd-resolved images link resolv.conf; the link must stay.
	if err := os.Symlink("/run/systemd/resolve/stub-resolv.conf", filepath.Join(target, "etc/resolv.conf")); err != nil {
		t.Fatal(err)
	}
	doc := goodDoc()
	doc.Allocation.Networks = nil
	doc.Allocation.NtpServers = nil
	doc.Allocation.UserData = ""
	ph := goodPhonehome(t)
	ph.Binary = ""
	if err := Write(target, doc, ph, System{NIC: "ens3"}, nil); err != nil {
		t.Fatal(err)
	}
	if l, err := os.Readlink(filepath.Join(target, "etc/resolv.conf")); err != nil || !strings.HasPrefix(l, "/run/systemd") {
		t.Errorf("resolv.conf link replaced: %q %v", l, err)
	}
	if got, _ := read(t, target, ResolvedDropIn); got != "[Resolve]\nDNS=192.0.2.53 2001:db8::53\n" {
		t.Errorf("resolved drop-in %q", got)
	}
	if got, _ := read(t, target, "etc/systemd/network/10-metal-ens3.network"); !strings.Contains(got, "[Match]\nName=ens3\n") || !strings.Contains(got, "DHCP=yes\n") {
		t.Errorf("networkd %q", got)
	}
	if got, _ := read(t, target, IfupdownConfig); !strings.Contains(got, "auto ens3\niface ens3 inet dhcp\n") {
		t.Errorf("interfaces %q", got)
	}
	for _, p := range []string{TimesyncdDropIn, UserData, PhonehomeBinary, "etc/fstab"} {
		if _, err := os.Lstat(filepath.Join(target, p)); err == nil {
			t.Errorf("%s written although there was nothing for it", p)
		}
	}
}

func TestWriteRejectsBadInputBeforeWriting(t *testing.T) {
	for name, tc := range map[string]struct {
		doc func(*agentv1.MachineDocument)
		ph  func(*Phonehome)
		sys func(*System)
	}{
		"hostname with underscore": {doc: func(d *agentv1.MachineDocument) { d.Allocation.Hostname = "web_1" }},
		"hostname leading hyphen":  {doc: func(d *agentv1.MachineDocument) { d.Allocation.Hostname = "-web" }},
		"hostname empty label":     {doc: func(d *agentv1.MachineDocument) { d.Allocation.Hostname = "web..example" }},
		"hostname label too long":  {doc: func(d *agentv1.MachineDocument) { d.Allocation.Hostname = strings.Repeat("a", 64) }},
		"hostname with newline":    {doc: func(d *agentv1.MachineDocument) { d.Allocation.Hostname = "web\nevil" }},
		"hostname missing":         {doc: func(d *agentv1.MachineDocument) { d.Allocation.Hostname = "" }},
		"no allocation":            {doc: func(d *agentv1.MachineDocument) { d.Allocation = nil }},
		"bad dns":                  {doc: func(d *agentv1.MachineDocument) { d.Allocation.DnsServers = []string{"dns.example.org"} }},
		"ntp with newline":         {doc: func(d *agentv1.MachineDocument) { d.Allocation.NtpServers = []string{"a\nNTP=evil"} }},
		"ssh key with newline":     {doc: func(d *agentv1.MachineDocument) { d.Allocation.SshPublicKeys = []string{"ssh-rsa AAA\nssh-rsa BBB"} }},
		"ssh key one field":        {doc: func(d *agentv1.MachineDocument) { d.Allocation.SshPublicKeys = []string{"garbage"} }},
		"ip outside its prefixes":  {doc: func(d *agentv1.MachineDocument) { d.Allocation.Networks[0].Ips = []string{"198.51.100.1"} }},
		"bad prefix":               {doc: func(d *agentv1.MachineDocument) { d.Allocation.Networks[0].Prefixes = []string{"203.0.113.0/33"} }},
		"bad ip":                   {doc: func(d *agentv1.MachineDocument) { d.Allocation.Networks[0].Ips = []string{"203.0.113"} }},
		"machine id mismatch":      {doc: func(d *agentv1.MachineDocument) { d.MachineId = "other" }},
		"no token":                 {ph: func(p *Phonehome) { p.Token = "" }},
		"no centrals":              {ph: func(p *Phonehome) { p.Centrals = nil }},
		"phonehome binary missing": {ph: func(p *Phonehome) { p.Binary = "/nonexistent/metal-phonehome" }},
		"no nic":                   {sys: func(s *System) { s.NIC = "" }},
		"nic with slash":           {sys: func(s *System) { s.NIC = "../../etc/passwd" }},
		"uplink with slash":        {sys: func(s *System) { s.Uplinks = []string{"../x"} }},
		"uplink is the nic":        {sys: func(s *System) { s.Uplinks = []string{s.NIC} }},
	} {
		t.Run(name, func(t *testing.T) {
			target := t.TempDir()
			doc, ph, sys := goodDoc(), goodPhonehome(t), goodSystem
			if tc.doc != nil {
				tc.doc(doc)
			}
			if tc.ph != nil {
				tc.ph(&ph)
			}
			if tc.sys != nil {
				tc.sys(&sys)
			}
			err := Write(target, doc, ph, sys, nil)
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error carries the credential: %v", err)
			}
			if entries, _ := os.ReadDir(target); len(entries) != 0 {
				t.Errorf("wrote %d entries before failing: %v", len(entries), err)
			}
		})
	}
}

func TestWriteTargetMissing(t *testing.T) {
	if err := Write(filepath.Join(t.TempDir(), "nope"), goodDoc(), goodPhonehome(t), goodSystem, nil); err == nil {
		t.Fatal("no error for a missing target")
	}
}

func FuzzCheckHostname(f *testing.F) {
	for _, s := range []string{"web-1", "a.b.c", "-x", "x-", "", "a..b", "ü", strings.Repeat("a", 300)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		if checkHostname(h) != nil {
			return
		}
		// Whatever passes is safe to put into /etc/hostname and hosts.
		if strings.ContainsAny(h, " \t\r\n/\x00#") || len(h) > 253 {
			t.Fatalf("accepted %q", h)
		}
	})
}
