package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// TestMetalBMCAgainstCentral runs the metal-bmc binary as an enrolled
// agent of kind bmc against the real metal-central: it connects, and the
// BMCs it finds in a pixie lease file reach central as facts (nothing
// listens at the leased address, so the BMC is reported unreachable); the
// partition's BMC settings then reach metal-bmc in its document, which it
// applies (its applied revision catches up, its health stays OK).
func TestMetalBMCAgainstCentral(t *testing.T) {
	f := startFleetCentral(t, "")
	ctx := t.Context()
	agents := apiv1.NewAgentServiceClient(f.cc)
	leases := filepath.Join(t.TempDir(), "leases.json")
	// A BMC address nothing listens on (port 443 of a loopback address).
	lease := fmt.Sprintf(`{"version":1,"leases":[{"key":"v4:01","mac":"aa:bb:cc:00:00:01","addr":"127.0.0.9","expires":%q}]}`,
		time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	if err := os.WriteFile(leases, []byte(lease), 0o600); err != nil {
		t.Fatal(err)
	}
	bmc := startMetalBMC(t, f, "bmc-p1", "--lease-file", leases, "--min-backoff", "1s", "--bmc-timeout", "5s")
	var fact *agentv1.BmcFact
	waitFor(t, "the BMC's fact at central", func() bool {
		got, err := agents.Get(ctx, &apiv1.AgentServiceGetRequest{Id: "bmc/bmc-p1"})
		if err != nil {
			return false
		}
		b := got.GetAgent().GetFacts().GetBmc().GetBmcs()
		if len(b) == 1 && b[0].GetLastError() != "" {
			fact = b[0]
		}
		return fact != nil && got.GetAgent().GetLiveliness() == apiv1.Liveliness_LIVELINESS_ALIVE
	})
	if fact.GetAddress() != "127.0.0.9" || fact.GetSource() != "lease" || fact.GetMac() != "aa:bb:cc:00:00:01" || fact.GetReachable() {
		t.Errorf("fact at central: %v", fact)
	}

	if _, err := apiv1.NewBMCServiceClient(f.cc).SetSettings(ctx, &apiv1.BMCServiceSetSettingsRequest{Settings: &apiv1.PartitionBMC{
		PartitionId: "p1", User: "metal", Password: "e2e-secret", LeaseCidrs: []string{"127.0.0.0/8"}, PollIntervalSeconds: 5}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "metal-bmc applying its partition's BMC settings", func() bool {
		got, err := agents.Get(ctx, &apiv1.AgentServiceGetRequest{Id: "bmc/bmc-p1"})
		if err != nil {
			return false
		}
		ag := got.GetAgent()
		return ag.GetDesired().GetBmc().GetCredentials().GetUser() == "metal" && ag.GetAppliedRevision() == ag.GetDesiredRevision() &&
			ag.GetHealth() != agentv1.Health_HEALTH_ERROR
	})
	if strings.Contains(bmc.logs.String(), "e2e-secret") {
		t.Error("metal-bmc logged the BMC password")
	}
}

// metalBMC is a running metal-bmc binary, an enrolled agent of kind bmc
// in partition p1.
type metalBMC struct {
	cmd  *exec.Cmd
	logs *syncBuffer
}

// startMetalBMC builds metal-bmc, enrols it as identity and runs it
// against f with a fresh state directory; extra flags come last, so they
// override the defaults here. It is killed when the test ends, and its
// log shown when the test failed.
func startMetalBMC(t testing.TB, f *fleetCentral, identity string, extra ...string) *metalBMC {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "metal-bmc")
	if b, err := exec.Command("go", "build", "-o", bin, "../../agents/metalbmc/cmd/metal-bmc").CombinedOutput(); err != nil {
		t.Fatalf("go build metal-bmc: %v\n%s", err, b)
	}
	enr, err := apiv1.NewAgentServiceClient(f.cc).Enroll(t.Context(), &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_BMC, Identity: identity, PartitionId: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(enr.GetSecret()), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append([]string{"--name", identity, "--central", f.listen, "--ca", filepath.Join(f.dir, "ca.crt"), "--token-file", tokenFile,
		"--state-dir", filepath.Join(dir, "state"), "--metrics-listen", ""}, extra...)
	m := &metalBMC{cmd: exec.Command(bin, args...), logs: &syncBuffer{}}
	m.cmd.Stdout, m.cmd.Stderr = m.logs, m.logs
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = m.cmd.Process.Kill()
		_ = m.cmd.Wait()
		if t.Failed() {
			t.Logf("metal-bmc:\n%s", m.logs.String())
		}
	})
	return m
}
