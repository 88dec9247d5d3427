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
	enr, err := agents.Enroll(ctx, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_BMC, Identity: "bmc-p1", PartitionId: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "metal-bmc")
	if b, err := exec.Command("go", "build", "-o", bin, "../../agents/metalbmc/cmd/metal-bmc").CombinedOutput(); err != nil {
		t.Fatalf("go build metal-bmc: %v\n%s", err, b)
	}
	leases := filepath.Join(dir, "leases.json")
	// A BMC address nothing listens on (port 443 of a loopback address).
	lease := fmt.Sprintf(`{"version":1,"leases":[{"key":"v4:01","mac":"aa:bb:cc:00:00:01","addr":"127.0.0.9","expires":%q}]}`,
		time.Now().Add(time.Hour).UTC().Format(time.RFC3339))
	if err := os.WriteFile(leases, []byte(lease), 0o600); err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(enr.GetSecret()), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--name", "bmc-p1", "--central", f.listen, "--ca", filepath.Join(f.dir, "ca.crt"), "--token-file", tokenFile,
		"--state-dir", filepath.Join(dir, "state"), "--lease-file", leases, "--metrics-listen", "", "--min-backoff", "1s", "--bmc-timeout", "5s")
	var logs strings.Builder
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("metal-bmc:\n%s", logs.String())
		}
	})
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
	if strings.Contains(logs.String(), "e2e-secret") {
		t.Error("metal-bmc logged the BMC password")
	}
}
