package redfish

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/metalfleet/metalfleet/agents/metalbmc/oob"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// BenchmarkPollRedfish measures how many BMCs one metal-bmc reads in its
// report interval (BENCHMARKS.md, "Out-of-band control"): metal-bmc's
// library with its real driver (HTTP Basic, one TLS connection per
// poll, the system, manager and chassis power read, logout) and its poll
// bound, against N of the lab's Redfish BMCs served in this process, each
// with its own listener, certificate and fake system. One op is one round:
// from Run until every BMC has been read once, as after a start or at
// every poll interval.
//
// The lab's BMCs answer at once, so this measures what metal-bmc's own
// work allows (it shares the cores with the BMCs); MF_BENCH_BMC_DELAY
// (e.g. 50ms) adds that much to every answer to stand in for a real BMC's
// answer time, which is where the poll bound matters.
func BenchmarkPollRedfish(b *testing.B) {
	var delay time.Duration
	if v := os.Getenv("MF_BENCH_BMC_DELAY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			b.Fatalf("MF_BENCH_BMC_DELAY: %v", err)
		}
		delay = d
	}
	for _, n := range []int{100, 2000} {
		b.Run(fmt.Sprintf("bmcs=%d", n), func(b *testing.B) {
			bmcs := startBMCs(b, n, delay)
			// metal-stack's metal-bmc reads 20 BMCs at a time.
			for _, parallel := range []int{oob.DefaultParallel, 20} {
				b.Run(fmt.Sprintf("parallel=%d", parallel), func(b *testing.B) { benchPoll(b, bmcs, parallel) })
			}
		})
	}
}

// benchBMCs are the BMCs a poll benchmark reads.
type benchBMCs struct {
	doc      *agentv1.BmcDocument
	uuids    map[string]string // machine UUID by address
	requests atomic.Int64
	conns    atomic.Int64
}

// startBMCs serves n lab BMCs on loopback with a certificate made the
// way the lab's BMCs make theirs; delay is added to every answer.
func startBMCs(b testing.TB, n int, delay time.Duration) *benchBMCs {
	b.Helper()
	dir := b.TempDir()
	cert, err := LoadOrCreateCert(filepath.Join(dir, "bmc.crt"), filepath.Join(dir, "bmc.key"), []string{"127.0.0.1"})
	if err != nil {
		b.Fatal(err)
	}
	bs := &benchBMCs{
		doc:   &agentv1.BmcDocument{PartitionId: "bench", Credentials: &agentv1.BmcCredentials{User: user, Password: pass}},
		uuids: map[string]string{},
	}
	for i := range n {
		id := uuid.NewString()
		s, err := New(Config{UUID: id, Name: fmt.Sprintf("m%04d", i), SerialNumber: fmt.Sprintf("SN%04d", i), User: user, Password: pass}, newFake())
		if err != nil {
			b.Fatal(err)
		}
		hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			bs.requests.Add(1)
			if delay > 0 {
				time.Sleep(delay)
			}
			s.ServeHTTP(w, r)
		}))
		hs.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		hs.Config.ConnState = func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				bs.conns.Add(1)
			}
		}
		hs.StartTLS()
		b.Cleanup(hs.Close)
		addr := strings.TrimPrefix(hs.URL, "https://")
		bs.uuids[addr] = id
		bs.doc.StaticBmcs = append(bs.doc.StaticBmcs, &agentv1.BmcEndpoint{Address: addr, Protocol: agentv1.BmcProtocol_BMC_PROTOCOL_REDFISH})
	}
	return bs
}

func benchPoll(b *testing.B, bs *benchBMCs, parallel int) {
	n := len(bs.doc.GetStaticBmcs())
	dir := b.TempDir()
	var polling time.Duration
	reqs, conns := bs.requests.Load(), bs.conns.Load()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		// A new metal-bmc per round: its next polls would wait for the
		// poll interval, and a round from a start is the same work.
		reg := prometheus.NewRegistry()
		svc, err := oob.New(oob.Config{StateDir: dir, Parallel: parallel, Metrics: reg, Report: func(*agentv1.Facts, ...*agentv1.Event) {}})
		if err != nil {
			b.Fatal(err)
		}
		if err := svc.Apply(b.Context(), &agentv1.Desired{Revision: 1, Bmc: bs.doc}); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(b.Context())
		done := make(chan error, 1)
		b.StartTimer()
		start := time.Now()
		go func() { done <- svc.Run(ctx) }()
		ok, failed := awaitPolls(b, reg, n)
		polling += time.Since(start)
		b.StopTimer()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		_ = svc.Close()
		if failed > 0 || ok != n {
			b.Fatalf("%d polls ok, %d failed, want %d ok: %v", ok, failed, n, firstError(svc.Facts()))
		}
		for _, f := range svc.Facts().GetBmcs() {
			if !f.GetReachable() || f.GetMachineUuid() != bs.uuids[f.GetAddress()] || f.GetPowerSupplies() == nil {
				b.Fatalf("fact %v", f)
			}
		}
		b.StartTimer()
	}
	b.StopTimer()
	rate := float64(n*b.N) / polling.Seconds()
	b.ReportMetric(rate, "BMCs/s")
	b.ReportMetric(rate*60, "BMCs/60s")
	b.ReportMetric(float64(bs.requests.Load()-reqs)/float64(n*b.N), "requests/poll")
	b.ReportMetric(float64(bs.conns.Load()-conns)/float64(n*b.N), "conns/poll")
}

// awaitPolls waits until metal-bmc counted n finished polls.
func awaitPolls(b testing.TB, reg *prometheus.Registry, n int) (ok, failed int) {
	deadline := time.Now().Add(10 * time.Minute)
	for {
		mfs, err := reg.Gather()
		if err != nil {
			b.Fatal(err)
		}
		ok, failed = 0, 0
		for _, mf := range mfs {
			if mf.GetName() != "metalfleet_bmc_polls_total" {
				continue
			}
			for _, m := range mf.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() != "result" {
						continue
					}
					if l.GetValue() == "ok" {
						ok += int(m.GetCounter().GetValue())
					} else {
						failed += int(m.GetCounter().GetValue())
					}
				}
			}
		}
		if ok+failed >= n {
			return ok, failed
		}
		if time.Now().After(deadline) {
			b.Fatalf("%d of %d polls after 10 minutes", ok+failed, n)
		}
		// Short against a round (about a second for 100 BMCs), cheap for the cores.
		time.Sleep(2 * time.Millisecond)
	}
}

func firstError(f *agentv1.BmcFacts) string {
	for _, b := range f.GetBmcs() {
		if e := b.GetLastError(); e != "" {
			return b.GetAddress() + ": " + e
		}
	}
	return "no error reported"
}

// TestPollKeepsItsConnection: a poll reads a BMC over one TLS connection
// (gofish would close it after every request), and logs out of it.
func TestPollKeepsItsConnection(t *testing.T) {
	bs := startBMCs(t, 1, 0)
	reg := prometheus.NewRegistry()
	svc, err := oob.New(oob.Config{StateDir: t.TempDir(), Metrics: reg, Report: func(*agentv1.Facts, ...*agentv1.Event) {}})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	if err := svc.Apply(t.Context(), &agentv1.Desired{Revision: 1, Bmc: bs.doc}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	ok, failed := awaitPolls(t, reg, 1)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ok != 1 || failed != 0 {
		t.Fatalf("%d polls ok, %d failed: %s", ok, failed, firstError(svc.Facts()))
	}
	if reqs, conns := bs.requests.Load(), bs.conns.Load(); reqs < 4 || conns != 1 {
		t.Fatalf("%d requests over %d connections, want at least 4 over one", reqs, conns)
	}
}
