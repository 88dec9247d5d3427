package pixie

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/nclient4"
	"github.com/insomniacslk/dhcp/dhcpv6"
	"github.com/insomniacslk/dhcp/dhcpv6/nclient6"
	"github.com/insomniacslk/dhcp/iana"
	"github.com/mdlayher/ndp"
	"github.com/pin/tftp/v3"
	"golang.org/x/net/ipv6"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/metalfleet/metalfleet/agents/agent/nettest"
	"github.com/metalfleet/metalfleet/agents/pixie/internal/lease"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

const pixieToken = "mfa_pixie-test-token"

// central is a fake of central's AgentService: it hands pixie its
// document over Sync, keeps the events pixie reports, and answers Boot
// for the MACs the test sets up, checking pixie's bearer credential.
type central struct {
	agentv1.UnimplementedAgentServiceServer
	doc *agentv1.PixieDocument

	mu     sync.Mutex
	boots  map[string]*agentv1.BootResponse
	asked  []*agentv1.BootRequest
	events []*agentv1.Event
}

func (c *central) Sync(s agentv1.AgentService_SyncServer) error {
	m, err := s.Recv()
	if err != nil {
		return err
	}
	h := m.GetHello()
	if h.GetKind() != agentv1.Kind_KIND_PIXIE || h.GetIdentity() != "pixie-test" || h.GetCredential().GetToken() != pixieToken {
		return status.Error(codes.Unauthenticated, "bad hello")
	}
	if err := s.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Welcome{Welcome: &agentv1.Welcome{AgentId: "a1", HeartbeatInterval: durationpb.New(time.Second)}}}); err != nil {
		return err
	}
	if err := s.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Desired{Desired: &agentv1.Desired{Revision: 1, Pixie: c.doc}}}); err != nil {
		return err
	}
	for {
		m, err := s.Recv()
		if err != nil {
			return err
		}
		if r := m.GetReport(); r != nil {
			c.mu.Lock()
			c.events = append(c.events, r.GetEvents()...)
			c.mu.Unlock()
		}
	}
}

func (c *central) Boot(ctx context.Context, req *agentv1.BootRequest) (*agentv1.BootResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	if a := md.Get("authorization"); len(a) != 1 || a[0] != "Bearer "+pixieToken {
		return nil, status.Error(codes.Unauthenticated, "boot: missing bearer credential")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.asked = append(c.asked, req)
	if r, ok := c.boots[req.GetMac()]; ok {
		return r, nil
	}
	return nil, status.Error(codes.NotFound, "unknown MAC")
}

func (c *central) pxeEvents() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]string{}
	for _, e := range c.events {
		if e.GetType() == "PXE Booting" {
			out[e.GetSubject()] = e.GetMessage()
		}
	}
	return out
}

// upstream is an artifact and image server counting fetches per path.
type upstream struct {
	files map[string][]byte
	hits  sync.Map
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n, _ := u.hits.LoadOrStore(r.URL.Path, new(atomic.Int64))
	n.(*atomic.Int64).Add(1)
	// Slow enough that concurrent image requests overlap.
	time.Sleep(100 * time.Millisecond)
	b, ok := u.files[r.URL.Path]
	if !ok {
		http.NotFound(w, r)
		return
	}
	_, _ = w.Write(b)
}

func (u *upstream) count(p string) int64 {
	if n, ok := u.hits.Load(p); ok {
		return n.(*atomic.Int64).Load()
	}
	return 0
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return b
}

func hexSum(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// ipxeDir is Debian's iPXE when installed (the real binaries), else a
// stand-in with random bytes: either way TFTP must hand them out intact.
func ipxeDir(t *testing.T) string {
	if _, err := os.Stat("/usr/lib/ipxe/undionly.kpxe"); err == nil {
		return "/usr/lib/ipxe"
	}
	t.Log("Debian package ipxe not installed (apt-get install ipxe); using stand-in binaries")
	d := t.TempDir()
	for _, f := range []string{"undionly.kpxe", "ipxe.efi"} {
		if err := os.WriteFile(filepath.Join(d, f), randBytes(80_000), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return d
}

type harness struct {
	t       *testing.T
	link    *nettest.Link
	srvIP   string // pixie's IPv4 on the link
	srvIP6  string
	http    *http.Client
	central *central
	grpc    *grpc.Server
	up      *upstream
	upURL   string
	cfg     Config
	pixie   *Pixie
	stop    context.CancelFunc
	// bound are the lease addresses added to the client end, for getAs.
	bound map[string]bool
}

// getAs GETs url as the machine with mac does: from the IPv4 address pixie
// leased to it (pixie hands boot tokens only there).
func (h *harness) getAs(mac, url string) (int, []byte) {
	h.t.Helper()
	l, ok := h.pixie.Leases().ByMAC(mac, false)
	if !ok {
		h.t.Fatalf("no lease for %s", mac)
	}
	addr := l.Addr.String()
	if h.bound == nil {
		h.bound = map[string]bool{}
	}
	if !h.bound[addr] {
		h.link.AddPeerAddr(h.t, addr+"/32")
		h.bound[addr] = true
	}
	c := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, to string) (net.Conn, error) {
			var c net.Conn
			err := h.link.Do(func() (err error) {
				d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(addr)}}
				c, err = d.DialContext(ctx, "tcp4", to)
				return err
			})
			return c, err
		},
	}}
	resp, err := c.Get(url)
	if err != nil {
		h.t.Fatalf("GET %s as %s: %v", url, mac, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (h *harness) start() {
	t := h.t
	p, err := New(h.cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	if err := p.Start(ctx); err != nil {
		cancel()
		t.Fatal(err)
	}
	h.pixie, h.stop = p, cancel
}

func (h *harness) shutdown() {
	if h.stop == nil {
		return
	}
	h.stop()
	if err := h.pixie.Wait(); err != nil {
		h.t.Errorf("pixie stopped with %v", err)
	}
	h.stop = nil
}

func (h *harness) base() string {
	return fmt.Sprintf("http://%s:%d", h.srvIP, h.pixie.HTTPAddr().(*net.TCPAddr).Port)
}

// get fetches url from inside the client namespace.
func (h *harness) get(url string) (int, []byte) {
	h.t.Helper()
	resp, err := h.http.Get(url)
	if err != nil {
		h.t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

// dhcp4 runs a whole DISCOVER/OFFER/REQUEST/ACK as mac from inside the
// client namespace.
func (h *harness) dhcp4(mac string, mods ...dhcpv4.Modifier) *nclient4.Lease {
	h.t.Helper()
	hw, _ := net.ParseMAC(mac)
	var c *nclient4.Client
	if err := h.link.Do(func() (err error) {
		c, err = nclient4.New(h.link.Peer, nclient4.WithHWAddr(hw), nclient4.WithTimeout(2*time.Second), nclient4.WithRetry(4))
		return err
	}); err != nil {
		h.t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(h.t.Context(), 30*time.Second)
	defer cancel()
	l, err := c.Request(ctx, mods...)
	if err != nil {
		h.t.Fatalf("dhcp4 as %s: %v", mac, err)
	}
	return l
}

func newHarness(t *testing.T) *harness {
	nettest.Skip(t)
	b := randBytes(3)
	n4, n6 := int(b[0])%250+1, int(b[1])<<8|int(b[2])
	h := &harness{t: t, srvIP: fmt.Sprintf("198.18.%d.1", n4), srvIP6: fmt.Sprintf("fd5e:%x::1", n6)}
	h.link = nettest.NewLink(t, []string{h.srvIP + "/24", h.srvIP6 + "/64"}, nil)
	h.http = &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := h.link.Do(func() (err error) {
				c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		},
	}}

	h.up = &upstream{files: map[string][]byte{"/vmlinuz": randBytes(300_000), "/initramfs": randBytes(500_000), "/image.tgz": randBytes(200_000)}}
	us := httptest.NewServer(h.up)
	t.Cleanup(us.Close)
	h.upURL = us.URL

	h.central = &central{
		doc: &agentv1.PixieDocument{PartitionId: "p1", KernelUrl: us.URL + "/vmlinuz", InitramfsUrl: us.URL + "/initramfs",
			Cmdline: "console=ttyS0 metal.central=127.0.0.1:1 metal.partition=p1", Centrals: []string{"127.0.0.1:1"}, CaSha256: strings.Repeat("ab", 32)},
		boots: map[string]*agentv1.BootResponse{},
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.grpc = grpc.NewServer()
	agentv1.RegisterAgentServiceServer(h.grpc, h.central)
	go func() { _ = h.grpc.Serve(lis) }()
	t.Cleanup(h.grpc.Stop)

	r4, _ := lease.ParseRange(fmt.Sprintf("198.18.%d.100-198.18.%d.150", n4, n4))
	r6, _ := lease.ParseRange(fmt.Sprintf("fd5e:%x::100-fd5e:%x::1ff", n6, n6))
	h.cfg = Config{
		Name: "pixie-test", Centrals: []string{lis.Addr().String()}, Token: pixieToken, StateDir: t.TempDir(),
		Interface: h.link.Host, Range4: r4, Range6: r6, DNS: []netip.Addr{netip.MustParseAddr(h.srvIP)}, LeaseTime: 10 * time.Minute,
		RA: true, RAInterval: time.Hour,
		TFTPListen: h.srvIP + ":69", IPXEDir: ipxeDir(t),
		HTTPListen: "0.0.0.0:0", BootTimeout: time.Second,
		Log:          slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelInfo})),
		AgentBackoff: 300 * time.Millisecond,
	}
	return h
}

// TestPXEBootOverRealNetwork: pixie on one end of a veth pair, PXE clients
// in a network namespace on the other, a fake central over gRPC.
func TestPXEBootOverRealNetwork(t *testing.T) {
	h := newHarness(t)
	h.start()
	defer h.shutdown()

	// The document arrives over Sync and the installer is prefetched.
	waitFor(t, "pixie document", func() bool { return h.pixie.Document() != nil })
	waitFor(t, "installer prefetch", func() bool { return h.up.count("/vmlinuz") == 1 && h.up.count("/initramfs") == 1 })

	const (
		macBIOS = "52:54:00:aa:00:01"
		macIPXE = "52:54:00:aa:00:02"
		macDisk = "52:54:00:aa:00:03"
		macNew  = "52:54:00:aa:00:04"
	)
	h.central.mu.Lock()
	h.central.boots[macIPXE] = &agentv1.BootResponse{Action: agentv1.BootAction_BOOT_ACTION_INSTALLER, MachineId: "m2",
		KernelUrl: h.central.doc.KernelUrl, InitramfsUrl: h.central.doc.InitramfsUrl, Cmdline: "console=ttyS0 metal.central=127.0.0.1:1 metal.partition=p1", BootToken: "mfb_first-boot"}
	h.central.boots[macDisk] = &agentv1.BootResponse{Action: agentv1.BootAction_BOOT_ACTION_DISK, MachineId: "m3"}
	h.central.mu.Unlock()

	var addrBIOS, addrIPXE string
	t.Run("dhcp4 legacy BIOS PXE gets undionly.kpxe over TFTP", func(t *testing.T) {
		l := h.dhcp4(macBIOS, dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00000:UNDI:002001")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.INTEL_X86PC)))
		ack := l.ACK
		addrBIOS = ack.YourIPAddr.String()
		if !h.cfg.Range4.Contains(netip.MustParseAddr(addrBIOS)) {
			t.Fatalf("address %s outside the pool", addrBIOS)
		}
		if ack.BootFileNameOption() != "undionly.kpxe" || ack.BootFileName != "undionly.kpxe" || ack.ServerIPAddr.String() != h.srvIP || ack.ClassIdentifier() != "PXEClient" {
			t.Fatalf("ack: %s", ack.Summary())
		}
		if d := ack.DNS(); len(d) != 1 || d[0].String() != h.srvIP || ack.SubnetMask().String() != "ffffff00" {
			t.Fatalf("options: %s", ack.Summary())
		}
	})
	h.link.AddPeerAddr(t, addrBIOS+"/24")

	t.Run("tftp serves the iPXE binary byte for byte, read-only", func(t *testing.T) {
		want, err := os.ReadFile(filepath.Join(h.cfg.IPXEDir, "undionly.kpxe"))
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		var traversal, write error
		if err := h.link.Do(func() error {
			c, err := tftp.NewClient(h.srvIP + ":69")
			if err != nil {
				return err
			}
			c.SetTimeout(2 * time.Second)
			c.SetRetries(3)
			wt, err := c.Receive("undionly.kpxe", "octet")
			if err != nil {
				return err
			}
			if _, err := wt.WriteTo(&got); err != nil {
				return err
			}
			if wt, err := c.Receive("../../../etc/passwd", "octet"); err == nil {
				_, traversal = wt.WriteTo(io.Discard)
			} else {
				traversal = err
			}
			if rf, err := c.Send("evil.efi", "octet"); err == nil {
				_, write = rf.ReadFrom(strings.NewReader("x"))
			} else {
				write = err
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("tftp: got %d bytes, want the %d of the file", got.Len(), len(want))
		}
		if traversal == nil || write == nil {
			t.Fatalf("traversal err %v, write err %v: both must fail", traversal, write)
		}
	})

	var script string
	t.Run("dhcp4 iPXE gets the script URL; the script boots the installer", func(t *testing.T) {
		l := h.dhcp4(macIPXE, dhcpv4.WithUserClass("iPXE", false), dhcpv4.WithOption(dhcpv4.OptClassIdentifier("PXEClient:Arch:00007:UNDI:003016")), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)))
		addrIPXE = l.ACK.YourIPAddr.String()
		url := l.ACK.BootFileNameOption()
		if want := h.base() + "/ipxe/boot.ipxe?arch=efi&mac=52%3A54%3A00%3Aaa%3A00%3A02"; url != want {
			t.Fatalf("bootfile %q, want %q", url, want)
		}
		// A stranger (the BIOS machine's address) gets no token for it.
		if code, b := h.get(url); code != 403 {
			t.Fatalf("script for %s from another machine's address: %d, want 403\n%s", macIPXE, code, b)
		}
		code, b := h.getAs(macIPXE, url)
		script = string(b)
		wantKernel := "kernel " + h.base() + "/boot/vmlinuz console=ttyS0 metal.central=127.0.0.1:1 metal.partition=p1 metal.pixie=" + h.base() + " metal.boot_token=mfb_first-boot initrd=initramfs || goto retry\n"
		if code != 200 || !strings.HasPrefix(script, "#!ipxe\n") || !strings.Contains(script, wantKernel) || !strings.Contains(script, "\ninitrd "+h.base()+"/boot/initramfs || goto retry\n") {
			t.Fatalf("script (%d):\n%s\nwant kernel line:\n%s", code, script, wantKernel)
		}
		h.central.mu.Lock()
		req := h.central.asked[len(h.central.asked)-1]
		h.central.mu.Unlock()
		if req.GetMac() != macIPXE || req.GetArch() != "efi" || req.GetAddress() != addrIPXE {
			t.Fatalf("central was asked %v; want the MAC, arch and leased address %s", req, addrIPXE)
		}
	})

	t.Run("kernel and initramfs come from pixie's cache", func(t *testing.T) {
		for path, up := range map[string]string{"/boot/vmlinuz": "/vmlinuz", "/boot/initramfs": "/initramfs"} {
			code, b := h.get(h.base() + path)
			if code != 200 || !bytes.Equal(b, h.up.files[up]) {
				t.Fatalf("%s: %d, %d bytes", path, code, len(b))
			}
			if n := h.up.count(up); n != 1 {
				t.Fatalf("%s fetched upstream %d times, want once", up, n)
			}
		}
		code, b := h.get(h.base() + "/ipxe/ipxe.efi")
		want, _ := os.ReadFile(filepath.Join(h.cfg.IPXEDir, "ipxe.efi"))
		if code != 200 || !bytes.Equal(b, want) {
			t.Fatalf("ipxe.efi over HTTP: %d, %d bytes", code, len(b))
		}
	})

	t.Run("disk, boot token, bad input", func(t *testing.T) {
		h.dhcp4(macDisk)
		if code, b := h.getAs(macDisk, h.base()+"/ipxe/boot.ipxe?mac=52:54:00:AA:00:03&arch=bios"); code != 200 || !strings.HasSuffix(string(b), "\nexit 1\n") {
			t.Fatalf("disk script (%d):\n%s", code, b)
		}
		if code, b := h.get(h.base() + "/v1/boot-token?mac=" + macIPXE); code != 403 {
			t.Fatalf("boot token for %s from another machine's address: %d %s, want 403", macIPXE, code, b)
		}
		code, b := h.getAs(macIPXE, h.base()+"/v1/boot-token?mac="+macIPXE)
		var tok struct {
			BootToken string `json:"boot_token"`
		}
		if code != 200 || json.Unmarshal(b, &tok) != nil || tok.BootToken != "mfb_first-boot" {
			t.Fatalf("boot token: %d %s", code, b)
		}
		for _, q := range []string{"mac=not-a-mac", "mac=52:54:00:aa:00:02&arch=ppc", "mac=52:54:00:aa:00:02:03:04"} {
			if code, b := h.get(h.base() + "/ipxe/boot.ipxe?" + q); code != 400 {
				t.Errorf("%s: %d %s, want 400", q, code, b)
			}
		}
	})

	t.Run("PXE Booting events reach central", func(t *testing.T) {
		waitFor(t, "events", func() bool {
			ev := h.central.pxeEvents()
			return ev[macIPXE] != "" && ev[macDisk] != ""
		})
		if got := h.central.pxeEvents()[macIPXE]; got != "arch=efi address="+addrIPXE+" action=installer source=central" {
			t.Fatalf("event message %q", got)
		}
	})

	t.Run("image cache: one fetch for concurrent requests, mismatch not cached", func(t *testing.T) {
		img := h.up.files["/image.tgz"]
		url := h.base() + "/images/" + hexSum(img) + "?url=" + h.upURL + "/image.tgz"
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				resp, err := h.http.Get(url)
				if err != nil {
					t.Error(err)
					return
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				if resp.StatusCode != 200 || !bytes.Equal(b, img) {
					t.Errorf("image: %d, %d bytes", resp.StatusCode, len(b))
				}
			})
		}
		wg.Wait()
		if n := h.up.count("/image.tgz"); n != 1 {
			t.Fatalf("image fetched upstream %d times, want once", n)
		}
		bad := h.base() + "/images/" + strings.Repeat("0", 64) + "?url=" + h.upURL + "/image.tgz"
		for i := range 2 {
			if code, _ := h.get(bad); code != 502 {
				t.Fatalf("mismatch attempt %d: %d, want 502", i, code)
			}
		}
		if n := h.up.count("/image.tgz"); n != 3 {
			t.Fatalf("upstream fetched %d times, want 3: a mismatch must not be cached", n)
		}
	})

	t.Run("dhcp6 iPXE and UEFI HTTP boot get their boot file URLs", func(t *testing.T) {
		var c *nclient6.Client
		if err := h.link.Do(func() (err error) {
			c, err = nclient6.New(h.link.Peer, nclient6.WithTimeout(2*time.Second), nclient6.WithRetry(4))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		base6 := fmt.Sprintf("http://[%s]:%d", h.srvIP6, h.pixie.HTTPAddr().(*net.TCPAddr).Port)
		for name, tc := range map[string]struct {
			mods   []dhcpv6.Modifier
			url    string
			vendor string
		}{
			"ipxe": {[]dhcpv6.Modifier{dhcpv6.WithUserClass([]byte("iPXE")), dhcpv6.WithArchType(iana.EFI_BC)},
				base6 + "/ipxe/boot.ipxe?arch=efi&mac=" + strings.ReplaceAll(h.link.PeerMAC.String(), ":", "%3A"), ""},
			"uefi http": {[]dhcpv6.Modifier{dhcpv6.WithArchType(iana.EFI_X86_64_HTTP), dhcpv6.WithOption(&dhcpv6.OptVendorClass{EnterpriseNumber: 343, Data: [][]byte{[]byte("HTTPClient:Arch:00016:UNDI:003001")}})},
				base6 + "/ipxe/ipxe.efi", "HTTPClient"},
		} {
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			adv, err := c.Solicit(ctx, tc.mods...)
			if err != nil {
				cancel()
				t.Fatalf("%s: solicit: %v", name, err)
			}
			rep, err := c.Request(ctx, adv, tc.mods...)
			cancel()
			if err != nil {
				t.Fatalf("%s: request: %v", name, err)
			}
			if rep.Type() != dhcpv6.MessageTypeReply {
				t.Fatalf("%s: %s", name, rep.Summary())
			}
			a := rep.Options.OneIANA().Options.OneAddress()
			if a == nil || !h.cfg.Range6.Contains(netip.MustParseAddr(a.IPv6Addr.String())) {
				t.Fatalf("%s: address %v", name, rep.Options.OneIANA())
			}
			if got := rep.Options.BootFileURL(); got != tc.url {
				t.Fatalf("%s: boot file URL %q, want %q", name, got, tc.url)
			}
			if vc := rep.Options.VendorClasses(); tc.vendor != "" && (len(vc) != 1 || string(vc[0].Data[0]) != tc.vendor) {
				t.Fatalf("%s: vendor class %v", name, vc)
			}
		}
	})

	t.Run("router advertisement answers a solicitation", func(t *testing.T) {
		var conn *ndp.Conn
		if err := h.link.Do(func() error {
			ifi, err := net.InterfaceByName(h.link.Peer)
			if err != nil {
				return err
			}
			conn, _, err = ndp.Listen(ifi, ndp.LinkLocal)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var f ipv6.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv6.ICMPTypeRouterAdvertisement)
		_ = conn.SetICMPFilter(&f)
		if err := conn.WriteTo(&ndp.RouterSolicitation{}, nil, netip.MustParseAddr("ff02::2")); err != nil {
			t.Fatal(err)
		}
		_ = conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		m, _, _, err := conn.ReadFrom()
		if err != nil {
			t.Fatalf("no router advertisement: %v", err)
		}
		ra, ok := m.(*ndp.RouterAdvertisement)
		if !ok || !ra.ManagedConfiguration || ra.RouterLifetime != 0 {
			t.Fatalf("advertisement %+v: want managed (DHCPv6), not a default router", m)
		}
		var prefix string
		for _, o := range ra.Options {
			if p, ok := o.(*ndp.PrefixInformation); ok && p.OnLink && !p.AutonomousAddressConfiguration {
				prefix = netip.PrefixFrom(p.Prefix, int(p.PrefixLength)).String()
			}
		}
		if want := netip.MustParsePrefix(h.srvIP6 + "/64").Masked().String(); prefix != want {
			t.Fatalf("advertised prefix %q, want %s", prefix, want)
		}
	})

	t.Run("garbage on the DHCP port is ignored", func(t *testing.T) {
		if err := h.link.Do(func() error {
			c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.ParseIP(h.srvIP), Port: 67})
			if err != nil {
				return err
			}
			defer c.Close()
			for _, p := range [][]byte{{}, {1}, randBytes(300), append([]byte{1, 1, 6, 0}, randBytes(500)...), bytes.Repeat([]byte{0xff}, 1500)} {
				if _, err := c.Write(p); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "malformed packets counted", func() bool {
			_, m := h.get(h.base() + "/metrics")
			return bytes.Contains(m, []byte(`metalfleet_pixie_requests_total{kind="dhcp4",result="malformed"} 5`))
		})
		// Still serving.
		if got := h.dhcp4(macNew).ACK.YourIPAddr.String(); got == addrBIOS || got == addrIPXE {
			t.Fatalf("new client got %s, which is taken", got)
		}
	})

	t.Run("offline: cached decisions, the document's installer for unknown MACs", func(t *testing.T) {
		h.grpc.Stop()
		code, b := h.getAs(macIPXE, h.base()+"/ipxe/boot.ipxe?mac="+macIPXE+"&arch=efi")
		s := string(b)
		if code != 200 || !strings.Contains(s, "kernel "+h.base()+"/boot/vmlinuz console=ttyS0 metal.central=127.0.0.1:1 metal.partition=p1 metal.pixie="+h.base()+" initrd=initramfs") || strings.Contains(s, "boot_token") {
			t.Fatalf("cached installer (%d), want no token:\n%s", code, s)
		}
		if code, b := h.getAs(macDisk, h.base()+"/ipxe/boot.ipxe?mac="+macDisk+"&arch=bios"); code != 200 || !strings.HasSuffix(string(b), "\nexit 1\n") {
			t.Fatalf("cached disk decision (%d):\n%s", code, b)
		}
		code, b = h.getAs(macNew, h.base()+"/ipxe/boot.ipxe?mac="+macNew+"&arch=bios")
		s = string(b)
		if code != 200 || !strings.Contains(s, "kernel "+h.base()+"/boot/vmlinuz "+h.central.doc.Cmdline+" metal.pixie="+h.base()+" || goto retry") {
			t.Fatalf("document installer for an unknown MAC (%d):\n%s", code, s)
		}
		if code, _ := h.getAs(macIPXE, h.base()+"/v1/boot-token?mac="+macIPXE); code != 503 {
			t.Fatalf("boot token while central is away: %d, want 503", code)
		}
		// The artifacts stay available from the cache.
		if code, b := h.get(h.base() + "/boot/initramfs"); code != 200 || !bytes.Equal(b, h.up.files["/initramfs"]) {
			t.Fatalf("initramfs offline: %d", code)
		}
		files, _ := filepath.Glob(filepath.Join(h.cfg.StateDir, "decisions", "*"))
		for _, f := range files {
			if b, _ := os.ReadFile(f); bytes.Contains(b, []byte("mfb_")) {
				t.Fatalf("%s keeps a boot token on disk", f)
			}
		}
	})

	t.Run("after a restart: same address from the lease file, document from the agent's cache", func(t *testing.T) {
		h.shutdown()
		h.start()
		l := h.dhcp4(macIPXE, dhcpv4.WithUserClass("iPXE", false), dhcpv4.WithOption(dhcpv4.OptClientArch(iana.EFI_X86_64)))
		if got := l.ACK.YourIPAddr.String(); got != addrIPXE || addrIPXE == addrBIOS {
			t.Fatalf("after restart %s got %s, want %s (BIOS client has %s)", macIPXE, got, addrIPXE, addrBIOS)
		}
		if got := h.dhcp4(macBIOS).ACK.YourIPAddr.String(); got != addrBIOS {
			t.Fatalf("after restart %s got %s, want %s", macBIOS, got, addrBIOS)
		}
		// Central is still away: the document comes from the agent's cache,
		// so unknown machines still get the installer.
		waitFor(t, "cached document after restart", func() bool { return h.pixie.Document() != nil })
		if code, b := h.get(h.base() + "/ipxe/boot.ipxe?mac=" + macBIOS + "&arch=bios"); code != 200 || !strings.Contains(string(b), "kernel "+h.base()+"/boot/vmlinuz "+h.central.doc.Cmdline) {
			t.Fatalf("offline start (%d):\n%s", code, b)
		}
	})
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
