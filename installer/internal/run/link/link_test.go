package link

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/dhcpv4/server4"
)

// The test runs a real DHCP exchange between two network namespaces it
// creates: a DHCP server in one, Up in the other (each a child process of
// the test binary, so that every thread of it is in its namespace).

const helperEnv = "METAL_LINK_TEST_ROLE"

func TestLinkHelperProcess(t *testing.T) {
	switch os.Getenv(helperEnv) {
	case "server":
		serve()
	case "client":
		client()
	}
}

func serve() {
	srvIP := net.IPv4(192, 0, 2, 1)
	h := func(conn net.PacketConn, peer net.Addr, m *dhcpv4.DHCPv4) {
		var mt dhcpv4.MessageType
		switch m.MessageType() {
		case dhcpv4.MessageTypeDiscover:
			mt = dhcpv4.MessageTypeOffer
		case dhcpv4.MessageTypeRequest:
			mt = dhcpv4.MessageTypeAck
			fmt.Printf("CLASS %s\n", m.ClassIdentifier())
		default:
			return
		}
		reply, err := dhcpv4.NewReplyFromRequest(m, dhcpv4.WithMessageType(mt), dhcpv4.WithYourIP(net.IPv4(192, 0, 2, 50)),
			dhcpv4.WithNetmask(net.CIDRMask(24, 32)), dhcpv4.WithRouter(srvIP), dhcpv4.WithDNS(net.IPv4(192, 0, 2, 53)),
			dhcpv4.WithLeaseTime(3600), dhcpv4.WithOption(dhcpv4.OptServerIdentifier(srvIP)))
		if err != nil {
			return
		}
		dst := peer
		if u, ok := peer.(*net.UDPAddr); ok && u.IP.IsUnspecified() {
			dst = &net.UDPAddr{IP: net.IPv4bcast, Port: dhcpv4.ClientPort}
		}
		conn.WriteTo(reply.ToBytes(), dst)
	}
	s, err := server4.NewServer(os.Getenv("METAL_LINK_IF"), &net.UDPAddr{IP: net.IPv4zero, Port: dhcpv4.ServerPort}, h)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Println("READY")
	s.Serve()
	os.Exit(0)
}

func client() {
	want := strings.Split(os.Getenv("METAL_LINK_IF"), ",")
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	l, err := Up(context.Background(), Options{
		Filter:      func(n string) bool { return n == want[0] || n == want[1] },
		CarrierWait: 5 * time.Second, Timeout: 60 * time.Second,
		ResolvConf: os.Getenv("METAL_LINK_RESOLV"), Log: log,
	})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Printf("LEASE %s %s %s %v %s\n", l.Interface, l.Address, l.Router, l.DNS, l.MAC)
	os.Exit(0)
}

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%v: %v: %s", args, err, out)
	}
}

func TestUpLeasesOverDHCPInNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs iproute2's ip")
	}
	id := os.Getpid() % 100000
	srvNS, cliNS := fmt.Sprintf("mflink-s%d", id), fmt.Sprintf("mflink-c%d", id)
	sh(t, "ip", "netns", "add", srvNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", srvNS).Run() })
	sh(t, "ip", "netns", "add", cliNS)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", cliNS).Run() })
	// eth0 is cabled to the DHCP server; eth1 has carrier but nobody
	// answers on it: the lease on eth0 must win the race.
	for i, pair := range [][2]string{{"mfls0", "mflc0"}, {"mfls1", "mflc1"}} {
		sh(t, "ip", "-n", srvNS, "link", "add", pair[0], "type", "veth", "peer", "name", pair[1], "netns", cliNS)
		sh(t, "ip", "-n", srvNS, "link", "set", pair[0], "up")
		sh(t, "ip", "-n", cliNS, "link", "set", pair[1], "name", fmt.Sprintf("mfeth%d", i))
	}
	sh(t, "ip", "-n", srvNS, "addr", "add", "192.0.2.1/24", "dev", "mfls0")

	srv := exec.Command("ip", "netns", "exec", srvNS, os.Args[0], "-test.run=^TestLinkHelperProcess$")
	srv.Env = append(os.Environ(), helperEnv+"=server", "METAL_LINK_IF=mfls0")
	out, err := srv.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	lines := bufio.NewScanner(out)
	if !lines.Scan() || lines.Text() != "READY" {
		t.Fatalf("DHCP server: %q", lines.Text())
	}
	classes := make(chan string, 4)
	go func() {
		for lines.Scan() {
			classes <- lines.Text()
		}
	}()

	resolv := filepath.Join(t.TempDir(), "resolv.conf")
	cli := exec.Command("ip", "netns", "exec", cliNS, os.Args[0], "-test.run=^TestLinkHelperProcess$")
	cli.Env = append(os.Environ(), helperEnv+"=client", "METAL_LINK_IF=mfeth0,mfeth1", "METAL_LINK_RESOLV="+resolv)
	var stderr bytes.Buffer
	cli.Stderr = &stderr
	got, err := cli.Output()
	if err != nil {
		t.Fatalf("client: %v\n%s\n%s", err, got, stderr.String())
	}
	t.Logf("client log:\n%s", stderr.String())
	fields := strings.Fields(string(got))
	if len(fields) < 6 || fields[0] != "LEASE" || fields[1] != "mfeth0" || fields[2] != "192.0.2.50/24" || fields[3] != "192.0.2.1" || fields[4] != "[192.0.2.53]" {
		t.Fatalf("lease %q", got)
	}
	select {
	case c := <-classes:
		if c != "CLASS metal-installer" {
			t.Errorf("server saw %q", c)
		}
	case <-time.After(5 * time.Second):
		t.Error("server did not report the request")
	}

	// The address and the default route are in the client's namespace.
	addr, _ := exec.Command("ip", "-n", cliNS, "-4", "addr", "show", "dev", "mfeth0").CombinedOutput()
	if !strings.Contains(string(addr), "inet 192.0.2.50/24") {
		t.Errorf("address not set: %s", addr)
	}
	route, _ := exec.Command("ip", "-n", cliNS, "-4", "route", "show", "default").CombinedOutput()
	if !strings.Contains(string(route), "default via 192.0.2.1 dev mfeth0") {
		t.Errorf("default route not set: %q", route)
	}
	if b, _ := os.ReadFile(resolv); string(b) != "nameserver 192.0.2.53\n" {
		t.Errorf("resolv.conf %q", b)
	}
	for _, l := range []string{"mfeth0", "mfeth1"} {
		st, _ := exec.Command("ip", "-n", cliNS, "-br", "link", "show", l).CombinedOutput()
		if !strings.Contains(string(st), "UP") {
			t.Errorf("%s not up: %s", l, st)
		}
	}
}
