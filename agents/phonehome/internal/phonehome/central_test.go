package phonehome

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// testCA makes a CA and a serving certificate for 127.0.0.1 signed by it.
func testCA(t testing.TB) (caPEM string, serving tls.Certificate) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test central CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "central"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})),
		tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// event is what the fake central got.
type event struct {
	typ, msg string
}

// central is a fake metal-central agent endpoint over TLS: it checks the
// credential, sends the current document on connect and whenever push
// changes it, and records hellos, events and applied revisions.
type central struct {
	agentv1.UnimplementedAgentServiceServer
	token string
	addr  string
	caPEM string

	mu      sync.Mutex
	doc     *agentv1.Desired
	stream  agentv1.AgentService_SyncServer
	hellos  []*agentv1.Hello
	events  []event
	applied uint64
}

func startCentral(t *testing.T, token string) *central {
	t.Helper()
	caPEM, cert := testCA(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &central{token: token, addr: lis.Addr().String(), caPEM: caPEM}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})))
	agentv1.RegisterAgentServiceServer(srv, c)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return c
}

func (c *central) Sync(s agentv1.AgentService_SyncServer) error {
	m, err := s.Recv()
	if err != nil {
		return err
	}
	h := m.GetHello()
	c.mu.Lock()
	c.hellos = append(c.hellos, proto.Clone(h).(*agentv1.Hello))
	c.mu.Unlock()
	if h.GetCredential().GetToken() != c.token {
		return status.Error(codes.Unauthenticated, "bad credential")
	}
	c.mu.Lock()
	err = s.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Welcome{Welcome: &agentv1.Welcome{AgentId: "ph", HeartbeatInterval: durationpb.New(time.Hour)}}})
	if err == nil && c.doc != nil {
		err = s.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Desired{Desired: c.doc}})
	}
	c.stream = s
	c.mu.Unlock()
	if err != nil {
		return err
	}
	for {
		m, err := s.Recv()
		if err != nil {
			c.mu.Lock()
			if c.stream == s {
				c.stream = nil
			}
			c.mu.Unlock()
			return err
		}
		r := m.GetReport()
		if r == nil {
			continue
		}
		c.mu.Lock()
		for _, e := range r.GetEvents() {
			c.events = append(c.events, event{typ: e.GetType(), msg: e.GetMessage()})
		}
		c.applied = max(c.applied, r.GetAppliedRevision())
		c.mu.Unlock()
	}
}

// push makes d the document and sends it on the open stream, if any.
func (c *central) push(t *testing.T, d *agentv1.Desired) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.doc = d
	if c.stream != nil {
		if err := c.stream.Send(&agentv1.SyncResponse{Msg: &agentv1.SyncResponse_Desired{Desired: d}}); err != nil {
			t.Logf("push: %v", err)
		}
	}
}

func (c *central) count(typ string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, e := range c.events {
		if e.typ == typ {
			n++
		}
	}
	return n
}

func (c *central) messages(typ string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, e := range c.events {
		if e.typ == typ {
			out = append(out, e.msg)
		}
	}
	return out
}

func (c *central) appliedRevision() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applied
}

func (c *central) firstHello() *agentv1.Hello {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.hellos) == 0 {
		return nil
	}
	return c.hellos[0]
}

// machineDoc is revision rev of a machine document.
func machineDoc(rev uint64, allocation string, rebootGen uint64) *agentv1.Desired {
	md := &agentv1.MachineDocument{MachineId: testMachineID, RebootGeneration: rebootGen}
	if allocation != "" {
		md.Allocation = &agentv1.MachineAllocation{Id: allocation, Hostname: "web-0"}
	}
	return &agentv1.Desired{Revision: rev, Machine: md}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
