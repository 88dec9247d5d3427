package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/agents/metalcore/redistest"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// leaf is a switch for the test: a real redis-server holding its
// CONFIG_DB and APPL_DB, and the real metal-core binary on it.
type leaf struct {
	name  string
	redis *redistest.Server
}

func fabricMAC(machine, nic int) string {
	return net.HardwareAddr{0x52, 0x54, 0x00, 0xfa, byte(machine), byte(nic)}.String()
}

func fabricPort(machine int) string { return "Ethernet" + strconv.Itoa(4*machine) }

// startLeaf seeds the switch's base configuration (what the operator's
// config writes: ports, the PXE VLAN, the VTEP) and LLDP as SONiC's
// lldp_syncd would (machine i's NIC on port 4i, the spine on the uplink),
// then runs metal-core against central.
func startLeaf(t *testing.T, f *fleetCentral, core, name string, nic, machines int) *leaf {
	t.Helper()
	l := &leaf{name: name, redis: redistest.Start(t)}
	uplink := fabricPort(machines) // after the machines' ports
	cfg := map[string]map[string]string{
		"DEVICE_METADATA|localhost": {"hostname": name, "docker_routing_config_mode": "split"},
		"VLAN|Vlan4000":             {"vlanid": "4000"},
		"VXLAN_TUNNEL|vtep":         {"src_ip": "10.255.0.1"},
		"PORT|" + uplink:            {"alias": "Uplink1", "mtu": "9216", "admin_status": "up", "speed": "100000", "lanes": "1000"},
	}
	appl := map[string]map[string]string{
		"PORT_TABLE:" + uplink:       {"oper_status": "up"},
		"LLDP_ENTRY_TABLE:" + uplink: {"lldp_rem_sys_name": "spine01", "lldp_rem_port_id": "swp1", "lldp_rem_chassis_id": "aa:bb:cc:dd:ee:01"},
	}
	for i := range machines {
		p := fabricPort(i)
		cfg["PORT|"+p] = map[string]string{"alias": fmt.Sprintf("Eth%d/1", i+1), "mtu": "9100", "admin_status": "up", "speed": "25000", "lanes": strconv.Itoa(4 * i)}
		appl["PORT_TABLE:"+p] = map[string]string{"oper_status": "up"}
		m := fabricMAC(i, nic)
		appl["LLDP_ENTRY_TABLE:"+p] = map[string]string{"lldp_rem_chassis_id": m, "lldp_rem_port_id": m, "lldp_rem_sys_name": "machine"}
	}
	l.redis.Load(t, "CONFIG_DB", cfg)
	l.redis.Load(t, "APPL_DB", appl)

	enr, err := apiv1.NewAgentServiceClient(f.cc).Enroll(t.Context(), &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_SWITCH, Identity: name, PartitionId: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tok := filepath.Join(dir, "token")
	if err := os.WriteFile(tok, []byte(enr.GetSecret()), 0o600); err != nil {
		t.Fatal(err)
	}
	// FRR's reload is left out ("true"): this is about central and
	// CONFIG_DB; frr.conf is rendered and written as on a switch.
	cmd := exec.Command(core, "--name", name, "--central", f.listen, "--ca", filepath.Join(f.dir, "ca.crt"), "--token-file", tok,
		"--state-dir", filepath.Join(dir, "state"), "--db-config", l.redis.DBConfig, "--naming-schema", "name",
		"--frr-conf", filepath.Join(dir, "frr", "frr.conf"), "--frr-validate", "true", "--frr-reload", "true", "--vtysh", "true",
		"--bgp-poll", "1h", "--facts-poll", "1s", "--sonic-version-file", filepath.Join(dir, "none"),
		"--metrics-listen", "", "--relay-port", "0", "--uplinks", uplink, "--rack", "r1", "--log-level", "debug")
	logf, err := os.Create(filepath.Join(dir, "metal-core.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logf.Name())
			t.Logf("%s's metal-core log:\n%s", name, b)
		}
	})
	return l
}

// vrfOf is the VRF CONFIG_DB routes port in ("" when it is not routed),
// and whether the port is in the PXE VLAN.
func (l *leaf) portState(t *testing.T, port string) (vrf string, pxe bool) {
	t.Helper()
	c := l.redis.Client(t, "CONFIG_DB")
	ctx := context.Background()
	vrf, _ = c.HGet(ctx, "INTERFACE|"+port, "vrf_name").Result()
	n, _ := c.Exists(ctx, "VLAN_MEMBER|Vlan4000|"+port).Result()
	return vrf, n == 1
}

// TestFabricWithMetalCore: two leaves, each the real metal-core on a real
// CONFIG_DB, register with central and report their ports; machines
// register linked to both and get their rack; a single-linked machine is
// refused with an issue naming the missing link; an allocated machine's
// ports stay in the PXE VLAN while it installs, move into its tenant VRF
// on both leaves when the installer reports the install done, and go back
// when it is freed. With METALFLEET_FABRIC_MACHINES=N it measures the
// install-done → both ports in the VRF latency over N machines.
func TestFabricWithMetalCore(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	machines := 3
	if n, err := strconv.Atoi(os.Getenv("METALFLEET_FABRIC_MACHINES")); err == nil && n > 0 {
		machines = n
	}
	f := startFleetCentral(t, "")
	ctx := t.Context()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	core := filepath.Join(t.TempDir(), "metal-core")
	if out, err := exec.Command("go", "build", "-o", core, "../../agents/metalcore/cmd/metal-core").CombinedOutput(); err != nil {
		t.Fatalf("build metal-core: %v\n%s", err, out)
	}
	_, err := apiv1.NewPartitionServiceClient(f.cc).Update(ctx, &apiv1.PartitionServiceUpdateRequest{Partition: &apiv1.Partition{Id: "p1"}})
	must(err)
	_, err = apiv1.NewSizeServiceClient(f.cc).Create(ctx, &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: "s1", Constraints: []*apiv1.SizeConstraint{
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, Min: 1, Max: 64}}}})
	must(err)
	_, err = apiv1.NewImageServiceClient(f.cc).Create(ctx, &apiv1.ImageServiceCreateRequest{Image: &apiv1.Image{
		Id: "debian-12", Os: "debian", Version: "12.0.0", Url: "http://images.example/debian-12.tar.zst", Sha256: strings.Repeat("ab", 32)}})
	must(err)
	_, err = apiv1.NewTenantServiceClient(f.cc).Create(ctx, &apiv1.TenantServiceCreateRequest{Tenant: &apiv1.Tenant{Id: "t1"}})
	must(err)
	proj, err := apiv1.NewProjectServiceClient(f.cc).Create(ctx, &apiv1.ProjectServiceCreateRequest{Project: &apiv1.Project{TenantId: "t1", Name: "tenant"}})
	must(err)
	nets := apiv1.NewNetworkServiceClient(f.cc)
	_, err = nets.Create(ctx, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{Id: "super", Type: apiv1.NetworkType_NETWORK_TYPE_SUPER,
		PartitionId: "p1", Prefixes: []string{"10.128.0.0/16"}, ChildPrefixLengthIpv4: 24}})
	must(err)
	child, err := nets.Allocate(ctx, &apiv1.NetworkServiceAllocateRequest{ProjectId: proj.GetProject().GetId(), PartitionId: "p1", Name: "tenant"})
	must(err)
	vrf := fmt.Sprintf("Vrf%d", child.GetNetwork().GetVrf())

	// One machine more than measured: the single-linked one.
	leaves := []*leaf{startLeaf(t, f, core, "leaf01", 0, machines+1), startLeaf(t, f, core, "leaf02", 1, machines+1)}
	switches := apiv1.NewSwitchServiceClient(f.cc)
	waitFor(t, "both leaves registered with their ports", func() bool {
		for _, l := range leaves {
			s, err := switches.Get(ctx, &apiv1.SwitchServiceGetRequest{Id: l.name})
			if err != nil || len(s.GetSwitch().GetPorts()) != machines+2 || s.GetSwitch().GetSync().GetAppliedRevision() == 0 {
				return false
			}
		}
		return true
	})

	pix, err := apiv1.NewAgentServiceClient(f.cc).Enroll(ctx, &apiv1.AgentServiceEnrollRequest{Kind: agentv1.Kind_KIND_PIXIE, Identity: "pixie-p1", PartitionId: "p1"})
	must(err)
	asPixie := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+pix.GetSecret())
	type machine struct {
		id   string
		inst *rawInstaller
	}
	ms := make([]machine, machines+1)
	for i := range ms {
		id := uuid.NewString()
		boot, err := agentv1.NewAgentServiceClient(f.cc).Boot(asPixie, &agentv1.BootRequest{Mac: fabricMAC(i, 0), Arch: "efi"})
		must(err)
		inst, err := f.sync(t, installerHello(id, bootCred(boot.GetBootToken()), fabricMAC(i, 0), fabricMAC(i, 1)))
		must(err)
		hw := &agentv1.MachineFacts{Uuid: id, Cores: 2, MemoryBytes: 2 << 30, Disks: []*agentv1.DiskFact{{Name: "vda", SizeBytes: 8 << 30}},
			Nics: []*agentv1.NICFact{
				{Name: "eth0", Mac: fabricMAC(i, 0), Neighbours: []*agentv1.LLDPNeighbour{{SystemName: "leaf01", PortId: fabricPort(i)}}},
				{Name: "eth1", Mac: fabricMAC(i, 1), Neighbours: []*agentv1.LLDPNeighbour{{SystemName: "leaf02", PortId: fabricPort(i)}}},
			}}
		if i == machines {
			hw.Nics[1].Neighbours = nil // the single-linked machine
		}
		inst.report(nil, "Preparing")
		inst.report(hw, "Registering")
		inst.await("machine id", func(d *agentv1.Desired) bool { return d.GetMachine().GetMachineId() == id })
		inst.report(nil, "Waiting")
		ms[i] = machine{id: id, inst: inst}
	}
	mc := apiv1.NewMachineServiceClient(f.cc)
	for i, m := range ms {
		waitFor(t, "machine waiting, alive, in its rack", func() bool {
			got, err := mc.Get(ctx, &apiv1.MachineServiceGetRequest{Id: m.id})
			return err == nil && got.GetMachine().GetProvisioning() == apiv1.ProvisioningState_PROVISIONING_STATE_WAITING &&
				got.GetMachine().GetLiveliness() == apiv1.Liveliness_LIVELINESS_ALIVE && got.GetMachine().GetRack() == "r1"
		})
		for _, l := range leaves {
			if vrf, pxe := l.portState(t, fabricPort(i)); vrf != "" || !pxe {
				t.Fatalf("%s %s of a waiting machine: vrf %q, pxe %v; want the PXE VLAN", l.name, fabricPort(i), vrf, pxe)
			}
		}
	}

	// The single-linked machine is refused, saying which link is missing.
	single := ms[machines]
	_, err = mc.Create(ctx, &apiv1.MachineServiceCreateRequest{Id: single.id, ProjectId: proj.GetProject().GetId(), ImageId: "debian-12",
		Networks: []string{child.GetNetwork().GetId()}})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "eth1") || !strings.Contains(err.Error(), "leaf01") {
		t.Fatalf("allocating the single-linked machine: %v, want FailedPrecondition naming leaf01 and eth1", err)
	}
	issues, err := mc.Issues(ctx, &apiv1.MachineServiceIssuesRequest{PartitionId: "p1"})
	must(err)
	if !slices.ContainsFunc(issues.GetIssues(), func(is *apiv1.MachineIssue) bool {
		return is.GetMachineId() == single.id && is.GetId() == "not-dual-attached"
	}) {
		t.Fatalf("issues %v: want not-dual-attached for %s", issues.GetIssues(), single.id)
	}

	// Allocate, install, install done: both ports move into the VRF.
	var lat []time.Duration
	for i, m := range ms[:machines] {
		_, err := mc.Create(ctx, &apiv1.MachineServiceCreateRequest{Id: m.id, ProjectId: proj.GetProject().GetId(), ImageId: "debian-12",
			Networks: []string{child.GetNetwork().GetId()}})
		must(err)
		m.inst.await("allocation", func(d *agentv1.Desired) bool { return d.GetMachine().GetAllocation() != nil })
		m.inst.report(nil, "Installing")
		time.Sleep(200 * time.Millisecond)
		for _, l := range leaves {
			if v, pxe := l.portState(t, fabricPort(i)); v != "" || !pxe {
				t.Fatalf("%s %s while installing: vrf %q, pxe %v; want the PXE VLAN", l.name, fabricPort(i), v, pxe)
			}
		}
		start := time.Now()
		m.inst.report(nil, "Booting New Kernel")
		for {
			in := 0
			for _, l := range leaves {
				if v, pxe := l.portState(t, fabricPort(i)); v == vrf && !pxe {
					in++
				}
			}
			if in == len(leaves) {
				break
			}
			if time.Since(start) > 30*time.Second {
				t.Fatalf("machine %d: ports not in %s on both leaves 30 s after the install done", i, vrf)
			}
			time.Sleep(time.Millisecond)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	t.Logf("install done → both leaf ports in %s over %d machines: p50 %s p99 %s max %s", vrf, len(lat),
		lat[len(lat)/2], lat[min(len(lat)-1, len(lat)*99/100)], lat[len(lat)-1])

	// Free: the ports go back to the PXE VLAN.
	_, err = mc.Delete(ctx, &apiv1.MachineServiceDeleteRequest{Id: ms[0].id})
	must(err)
	waitFor(t, "the freed machine's ports back in the PXE VLAN", func() bool {
		for _, l := range leaves {
			if v, pxe := l.portState(t, fabricPort(0)); v != "" || !pxe {
				return false
			}
		}
		return true
	})
	// The switch as the API shows it: the machine on each port.
	s, err := switches.Get(ctx, &apiv1.SwitchServiceGetRequest{Id: "leaf02"})
	must(err)
	for _, p := range s.GetSwitch().GetPorts() {
		if p.GetName() == fabricPort(1) && (p.GetMachineId() != ms[1].id || p.GetMachineNic() != "eth1" || p.GetRole() != "tenant") {
			t.Fatalf("leaf02 %s: %v", p.GetName(), p)
		}
	}
}
