// Package config writes a machine's allocation into its freshly installed
// system: host name, addresses, DNS and NTP, SSH keys, user data, the fstab
// of the applied layout and metal-phonehome with its credential.
//
// Everything is checked before the first file is written, so that bad
// input leaves the target as the image made it. Files are written through
// an os.Root: a symlink in the image can never make the installer write
// outside the installed system.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// Phonehome is what metal-phonehome needs in the installed system.
type Phonehome struct {
	MachineID string
	Centrals  []string
	CAPEM     []byte
	// Token is the machine's agent credential; it is a secret.
	Token string
	// Binary is the metal-phonehome binary to copy; empty skips the copy
	// (an installer built without it).
	Binary string
	// RelayPort is the leaves' agent relay port (0: none).
	RelayPort int
}

// System is what the installer knows of the machine beyond the document.
type System struct {
	// Fstab of the applied layout; empty keeps the image's.
	Fstab string
	// NIC is the interface the machine's addresses go on (name in the
	// installer, which is also the name under a kernel without udev
	// renaming) and its MAC, which the networkd config matches on.
	NIC string
	MAC string
	// Uplinks are the machine's other NICs: brought up with IPv6
	// link-local addressing only, accepting router advertisements, so
	// that metal-phonehome reaches the agent relay of the leaf behind each
	// of them (it fails over between the leaves).
	Uplinks []string
}

// Paths inside the installed system.
const (
	PhonehomeConfig  = "etc/metal/phonehome.json"
	PhonehomeBinary  = "usr/local/bin/metal-phonehome"
	PhonehomeUnit    = "etc/systemd/system/metal-phonehome.service"
	PhonehomeWants   = "etc/systemd/system/multi-user.target.wants/metal-phonehome.service"
	InstallRecord    = "etc/metal/install.json"
	UserData         = "etc/metal/userdata"
	AuthorizedKeys   = "root/.ssh/authorized_keys"
	TimesyncdDropIn  = "etc/systemd/timesyncd.conf.d/metal.conf"
	ResolvedDropIn   = "etc/systemd/resolved.conf.d/metal.conf"
	IfupdownConfig   = "etc/network/interfaces"
	networkdDir      = "etc/systemd/network"
	phonehomeService = `[Unit]
Description=Metalfleet phone-home agent
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/local/bin/metal-phonehome
Restart=always
RestartSec=5
StateDirectory=metal-phonehome

[Install]
WantedBy=multi-user.target
`
)

// file is one file to write.
type file struct {
	path string
	mode fs.FileMode
	data []byte
	// src, when set, is copied instead of data.
	src string
}

// Write writes the allocation of doc into the system mounted at target.
func Write(target string, doc *agentv1.MachineDocument, ph Phonehome, sys System, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	files, err := plan(target, doc, ph, sys)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	root, err := os.OpenRoot(target)
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	defer root.Close()
	for _, f := range files {
		if err := put(root, f); err != nil {
			return fmt.Errorf("config: write /%s: %w", f.path, err)
		}
	}
	// An existing .ssh keeps its mode otherwise; sshd refuses keys in a
	// directory others can write.
	if err := root.Chmod(path.Dir(AuthorizedKeys), 0o700); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("config: %w", err)
	}
	if err := enable(root); err != nil {
		return fmt.Errorf("config: enable metal-phonehome: %w", err)
	}
	names := make([]string, 0, len(files))
	for _, f := range files {
		names = append(names, "/"+f.path)
	}
	log.Info("allocation written into the installed system", "hostname", doc.GetAllocation().GetHostname(), "files", names)
	return nil
}

// plan checks the input and says what to write; it writes nothing.
func plan(target string, doc *agentv1.MachineDocument, ph Phonehome, sys System) ([]file, error) {
	if fi, err := os.Stat(target); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("target %q is not a directory", target)
	}
	a := doc.GetAllocation()
	if a == nil {
		return nil, errors.New("document has no allocation")
	}
	if err := checkHostname(a.GetHostname()); err != nil {
		return nil, err
	}
	if ph.MachineID == "" || doc.GetMachineId() == "" {
		return nil, errors.New("machine id missing")
	}
	if ph.MachineID != doc.GetMachineId() {
		return nil, fmt.Errorf("phonehome machine id %q differs from the document's %q", ph.MachineID, doc.GetMachineId())
	}
	if ph.Token == "" {
		return nil, errors.New("phonehome credential missing")
	}
	if len(ph.Centrals) == 0 {
		return nil, errors.New("phonehome: no central address")
	}
	if sys.NIC == "" {
		return nil, errors.New("no network interface for the machine's addresses")
	}
	if strings.ContainsAny(sys.NIC, "/ \t\n") {
		return nil, fmt.Errorf("bad interface name %q", sys.NIC)
	}
	for _, u := range sys.Uplinks {
		if u == "" || u == sys.NIC || len(u) > 15 || strings.ContainsAny(u, "/ \t\n") {
			return nil, fmt.Errorf("bad uplink interface name %q", u)
		}
	}
	var dns []netip.Addr
	for _, s := range a.GetDnsServers() {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("dns server %q: %w", s, err)
		}
		dns = append(dns, ip)
	}
	for _, s := range a.GetNtpServers() {
		if s == "" || strings.ContainsAny(s, " \t\r\n#;") {
			return nil, fmt.Errorf("ntp server %q: not a host name or address", s)
		}
	}
	var keys strings.Builder
	for _, k := range a.GetSshPublicKeys() {
		k = strings.TrimSpace(k)
		if strings.ContainsAny(k, "\r\n") || len(strings.Fields(k)) < 2 {
			return nil, fmt.Errorf("ssh public key %.30q...: not a single-line key", k)
		}
		keys.WriteString(k + "\n")
	}
	addrs, err := addresses(a.GetNetworks())
	if err != nil {
		return nil, err
	}
	// The whole document, not only the allocation: metal-phonehome takes
	// its reboot_generation as the baseline, so a free ordered while the
	// machine installed still reboots it.
	record, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("encode machine document: %w", err)
	}
	phJSON, err := json.MarshalIndent(struct {
		MachineID string   `json:"machine_id"`
		Centrals  []string `json:"centrals"`
		CAPEM     string   `json:"ca_pem"`
		Token     string   `json:"token"`
		RelayPort int      `json:"relay_port,omitempty"`
	}{ph.MachineID, ph.Centrals, string(ph.CAPEM), ph.Token, ph.RelayPort}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode phonehome config: %w", err)
	}
	if ph.Binary != "" {
		if fi, err := os.Stat(ph.Binary); err != nil || !fi.Mode().IsRegular() {
			return nil, fmt.Errorf("metal-phonehome binary %q missing", ph.Binary)
		}
	}

	host := a.GetHostname()
	short, _, _ := strings.Cut(host, ".")
	hostsNames := host
	if short != host {
		hostsNames = host + " " + short
	}
	files := []file{
		{path: "etc/hostname", mode: 0o644, data: []byte(host + "\n")},
		{path: "etc/hosts", mode: 0o644, data: []byte("127.0.0.1\tlocalhost\n127.0.1.1\t" + hostsNames + "\n" +
			"::1\tlocalhost ip6-localhost ip6-loopback\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n")},
		{path: AuthorizedKeys, mode: 0o600, data: []byte(keys.String())},
		{path: InstallRecord, mode: 0o600, data: append(record, '\n')},
		{path: "etc/systemd/network/10-metal-" + sys.NIC + ".network", mode: 0o644, data: []byte(networkd(a.GetId(), sys, addrs, dns))},
		{path: IfupdownConfig, mode: 0o644, data: []byte(ifupdown(a.GetId(), sys.NIC, addrs) + ifupdownUplinks(sys.Uplinks))},
		{path: PhonehomeConfig, mode: 0o600, data: append(phJSON, '\n')},
		{path: PhonehomeUnit, mode: 0o644, data: []byte(phonehomeService)},
	}
	for _, u := range sys.Uplinks {
		files = append(files, file{path: "etc/systemd/network/20-metal-" + u + ".network", mode: 0o644, data: []byte(networkdUplink(a.GetId(), u))})
	}
	if len(dns) > 0 {
		files = append(files, resolv(target, dns))
	}
	if ntp := a.GetNtpServers(); len(ntp) > 0 {
		files = append(files, file{path: TimesyncdDropIn, mode: 0o644, data: []byte("[Time]\nNTP=" + strings.Join(ntp, " ") + "\n")})
	}
	if a.GetUserData() != "" {
		files = append(files, file{path: UserData, mode: 0o600, data: []byte(a.GetUserData())})
	}
	if sys.Fstab != "" {
		files = append(files, file{path: "etc/fstab", mode: 0o644, data: []byte(sys.Fstab)})
	}
	if ph.Binary != "" {
		files = append(files, file{path: PhonehomeBinary, mode: 0o755, src: ph.Binary})
	}
	return files, nil
}

// resolv writes /etc/resolv.conf, unless the image links it to
// systemd-resolved: then resolved gets the servers and the link stays.
func resolv(target string, dns []netip.Addr) file {
	if fi, err := os.Lstat(target + "/etc/resolv.conf"); err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		var b strings.Builder
		b.WriteString("[Resolve]\nDNS=")
		for i, ip := range dns {
			if i > 0 {
				b.WriteString(" ")
			}
			b.WriteString(ip.String())
		}
		b.WriteString("\n")
		return file{path: ResolvedDropIn, mode: 0o644, data: []byte(b.String())}
	}
	var b strings.Builder
	b.WriteString("# Written by the Metalfleet installer.\n")
	for _, ip := range dns {
		b.WriteString("nameserver " + ip.String() + "\n")
	}
	return file{path: "etc/resolv.conf", mode: 0o644, data: []byte(b.String())}
}

// put writes one file, replacing (not following) a symlink in its place.
func put(root *os.Root, f file) error {
	if err := root.MkdirAll(path.Dir(f.path), 0o755); err != nil {
		return err
	}
	if f.path == AuthorizedKeys {
		if err := root.Chmod(path.Dir(f.path), 0o700); err != nil {
			return err
		}
	}
	if fi, err := root.Lstat(f.path); err == nil && !fi.Mode().IsRegular() {
		if err := root.Remove(f.path); err != nil {
			return err
		}
	}
	tmp := f.path + ".metal-tmp"
	out, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, f.mode)
	if err != nil {
		return err
	}
	defer root.Remove(tmp)
	if f.src != "" {
		err = copyFrom(out, f.src)
	} else {
		_, err = out.Write(f.data)
	}
	if err == nil {
		// The mode of a file that already existed is not changed by
		// OpenFile, and umask narrows a new one.
		err = out.Chmod(f.mode)
	}
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return root.Rename(tmp, f.path)
}

func copyFrom(w io.Writer, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	_, err = io.Copy(w, in)
	return err
}

// enable is what `systemctl enable metal-phonehome` would do.
func enable(root *os.Root) error {
	if err := root.MkdirAll(path.Dir(PhonehomeWants), 0o755); err != nil {
		return err
	}
	if _, err := root.Lstat(PhonehomeWants); err == nil {
		if err := root.Remove(PhonehomeWants); err != nil {
			return err
		}
	}
	return root.Symlink("/"+PhonehomeUnit, PhonehomeWants)
}
