package fleetsim

import (
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// TestSmallFleet runs the simulator end to end with a handful of agents:
// every change is delivered, central restarts and every agent comes back.
func TestSmallFleet(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs metal-central")
	}
	bin := filepath.Join(t.TempDir(), "metal-central")
	if out, err := exec.Command("go", "build", "-o", bin, "../../../central/cmd/metal-central").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	res, err := Run(t.Context(), Config{
		CentralBin: bin, CentralArgs: []string{"--durable=false"},
		Agents: 20, Kind: agentv1.Kind_KIND_BMC, Rate: 20, Duration: time.Second, Restart: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.Agents != 20 || res.Changes != 20 || res.Delivered != res.Changes {
		t.Fatalf("agents %d, changes %d, delivered %d: want 20, 20, 20", res.Agents, res.Changes, res.Delivered)
	}
	if res.P50 <= 0 || res.P99 < res.P50 || res.Max < res.P99 {
		t.Fatalf("latencies p50 %v p99 %v max %v are not ordered", res.P50, res.P99, res.Max)
	}
	if res.GaveUp != 0 || res.Down <= 0 || res.Converge < res.Down {
		t.Fatalf("restart: gave up %d, down %v, converge %v", res.GaveUp, res.Down, res.Converge)
	}
	// The cold connect does full handshakes; the return after the restart
	// resumes every session (central's ticket keys outlive the process).
	if res.ConnectTLS.Full != 20 || res.ConnectTLS.Resumed != 0 {
		t.Errorf("cold connect handshakes %+v, want 20 full", res.ConnectTLS)
	}
	if res.ReturnTLS.Resumed != 20 || res.ReturnTLS.Full != 0 || res.ResumedShare() != 1 {
		t.Errorf("return handshakes %+v, want 20 resumed and no full one", res.ReturnTLS)
	}
	if res.ReturnRatio() <= 0 || res.Return() != res.Converge-res.Down {
		t.Errorf("return %v, ratio %v", res.Return(), res.ReturnRatio())
	}
	if res.RSSIdle <= 0 || res.RSSConnected <= 0 {
		t.Fatalf("RSS idle %d connected %d", res.RSSIdle, res.RSSConnected)
	}
}
