package redfish

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"

	"github.com/metalfleet/metalfleet/agents/agent/nettest"
	"github.com/metalfleet/metalfleet/lab/internal/vm"
)

// TestServeDHCP: a BMC on a BMC network without a fixed address gets one
// by DHCP, makes its certificate for it, serves Redfish there and writes
// its lease file. A DHCP server on the other end of a veth pair hands out
// one address; the BMC runs in the pair's namespace.
func TestServeDHCP(t *testing.T) {
	nettest.Skip(t)
	b := make([]byte, 1)
	_, _ = rand.Read(b)
	n := int(b[0])%250 + 1
	srvIP, bmcIP := fmt.Sprintf("198.18.%d.1", n), fmt.Sprintf("198.18.%d.77", n)
	link := nettest.NewLink(t, []string{srvIP + "/24"}, nil)
	s, err := server4.NewServer(link.Host, &net.UDPAddr{IP: net.IPv4zero, Port: dhcpv4.ServerPort}, func(conn net.PacketConn, _ net.Addr, m *dhcpv4.DHCPv4) {
		mt := dhcpv4.MessageTypeOffer
		if m.MessageType() == dhcpv4.MessageTypeRequest {
			mt = dhcpv4.MessageTypeAck
		}
		resp, err := dhcpv4.NewReplyFromRequest(m, dhcpv4.WithMessageType(mt), dhcpv4.WithYourIP(net.ParseIP(bmcIP)),
			dhcpv4.WithNetmask(net.CIDRMask(24, 32)), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(net.ParseIP(srvIP))),
			dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(time.Hour)))
		if err == nil {
			_, _ = conn.WriteTo(resp.ToBytes(), &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort})
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = s.Serve() }()
	t.Cleanup(func() { s.Close() })

	dir := t.TempDir()
	leaseFile := filepath.Join(dir, "bmc-lease.json")
	cfg := ServeConfig{
		Machine: vm.Spec{Name: "m1", UUID: "5c1f7a52-3f9e-4bb1-9d55-0d7c2c1a0002", MemoryMiB: 256, Firmware: "bios",
			Disk: filepath.Join(dir, "disk.raw"), DiskSize: 16 << 20, Dir: dir, ShutdownTimeout: time.Second},
		BMC:    Config{User: user, Password: pass},
		Listen: ":0", TLSCert: filepath.Join(dir, "bmc.crt"), TLSKey: filepath.Join(dir, "bmc.key"),
		DHCP: link.Peer, LeaseFile: leaseFile,
	}

	bad := cfg
	bad.Listen = bmcIP + ":443"
	if err := link.Do(func() error { return Serve(t.Context(), bad) }); err == nil || !strings.Contains(err.Error(), "give the port only") {
		t.Fatalf("a fixed --listen address with DHCP: %v", err)
	}

	ready := make(chan net.Addr, 1)
	cfg.Ready = func(r, _ net.Addr) { ready <- r }
	ctx, stop := context.WithCancel(t.Context())
	done := make(chan error, 1)
	// Serve's sockets (DHCP, netlink, the listeners) are made on its own
	// goroutine's thread, which Do keeps in the namespace.
	go func() { done <- link.Do(func() error { return Serve(ctx, cfg) }) }()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("Serve: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("the BMC did not serve within a minute")
	}
	port := addr.(*net.TCPAddr).Port

	pem, err := os.ReadFile(cfg.TLSCert)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	var status int
	if err := link.Do(func() error {
		// The pinned certificate verifies for the leased address.
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, DisableKeepAlives: true}}
		resp, err := hc.Get(fmt.Sprintf("https://%s:%d/redfish/v1", bmcIP, port))
		if err != nil {
			return err
		}
		resp.Body.Close()
		status = resp.StatusCode
		return nil
	}); err != nil || status != http.StatusOK {
		t.Fatalf("GET https://%s/redfish/v1 on the leased address: %d, %v", bmcIP, status, err)
	}
	var info LeaseInfo
	if b, err := os.ReadFile(leaseFile); err != nil || json.Unmarshal(b, &info) != nil {
		t.Fatalf("lease file: %s, %v", b, err)
	}
	if info.Interface != link.Peer || info.Address != bmcIP+"/24" || info.Server != srvIP || time.Until(info.Expires) < 50*time.Minute {
		t.Fatalf("lease file %+v", info)
	}
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
