package cli

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func TestMachineGolden(t *testing.T) {
	t.Parallel()
	_, addr := startFake(t)
	for _, tc := range []struct {
		golden string
		args   []string
	}{
		{"machine_list_json", []string{"machine", "list", "-o", "json"}},
		{"machine_list_yaml", []string{"machine", "list", "-o", "yaml"}},
		{"machine_list_noheaders", []string{"machine", "list", "--no-headers", "--partition", "fra-1"}},
		{"machine_describe_json", []string{"machine", "describe", "m4", "-o", "json"}},
		{"machine_describe_wide", []string{"machine", "describe", "m2", "-o", "wide"}},
		{"machine_issues_table", []string{"machine", "issues"}},
		{"machine_issues_json", []string{"machine", "issues", "--partition", "lab", "-o", "json"}},
		{"machine_delete", []string{"machine", "delete", "m2"}},
		{"machine_reinstall", []string{"machine", "reinstall", "m2", "--image", "ubuntu-24.04", "-o", "wide"}},
		{"machine_lock", []string{"machine", "lock", "m1", "--reason", "bad fan"}},
		{"machine_unlock_yaml", []string{"machine", "unlock", "m4", "-o", "yaml"}},
		{"machine_reserve", []string{"machine", "reserve", "m1", "--reason", "for ci"}},
		{"machine_unreserve", []string{"machine", "unreserve", "m2"}},
		{"machine_logs", []string{"machine", "logs", "m1"}},
		{"machine_logs_limit", []string{"machine", "logs", "m1", "--limit", "2"}},
		{"machine_logs_json", []string{"machine", "logs", "m1", "--limit", "2", "-o", "json"}},
		{"machine_logs_yaml", []string{"machine", "logs", "m1", "--limit", "2", "-o", "yaml"}},
		{"machine_create", []string{"machine", "create", "--project", testProjectID, "--partition", "lab", "--size", "s1", "--image", "debian-12", "--hostname", "web-1", "--networks", "n1"}},
		{"machine_create_json", []string{"machine", "create", "--project", testProjectID, "--partition", "lab", "--size", "s1", "--image", "debian-12", "--hostname", "web-1", "-o", "json"}},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			t.Parallel()
			r := runAt(t, addr, tc.args...)
			mustSucceed(t, r)
			checkGolden(t, tc.golden, r.stdout)
		})
	}
}

func TestMachineRequests(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	keyFile := filepath.Join(dir, "keys.pub")
	if err := os.WriteFile(keyFile, []byte("# team keys\nssh-ed25519 AAAAC3 alice@laptop\n\nssh-rsa AAAAB3 bob@desk\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	userData := filepath.Join(dir, "cloud-init.yaml")
	if err := os.WriteFile(userData, []byte("#cloud-config\nruncmd: [echo hi]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		args   []string
		method string
		want   proto.Message
	}{
		{
			name: "create with every flag",
			args: []string{"machine", "create", "--project", "P", "--partition", "lab", "--size", "s1", "--image", "debian-12",
				"--networks", "n1,internet", "--networks", "underlay", "--hostname", "web-1",
				"--sshpublickey", "ssh-ed25519 AAAAC3 carol@home", "--sshpublickey", "@" + keyFile, "--userdata", "@" + userData,
				"--id", "m1", "--filesystem-layout", "raid1", "--label", "role=web"},
			method: "MachineService/Create",
			want: &apiv1.MachineServiceCreateRequest{
				ProjectId: "P", PartitionId: "lab", SizeId: "s1", ImageId: "debian-12", Networks: []string{"n1", "internet", "underlay"},
				Hostname:      "web-1",
				SshPublicKeys: []string{"ssh-ed25519 AAAAC3 carol@home", "ssh-ed25519 AAAAC3 alice@laptop", "ssh-rsa AAAAB3 bob@desk"},
				UserData:      "#cloud-config\nruncmd: [echo hi]\n", Id: "m1", FilesystemLayoutId: "raid1", Labels: map[string]string{"role": "web"},
			},
		},
		{
			name:   "create a specific machine without size",
			args:   []string{"machine", "create", "--project", "P", "--partition", "lab", "--image", "debian-12", "--id", "m1", "--userdata", "plain"},
			method: "MachineService/Create",
			want:   &apiv1.MachineServiceCreateRequest{ProjectId: "P", PartitionId: "lab", ImageId: "debian-12", Id: "m1", UserData: "plain"},
		},
		{
			name:   "list filters",
			args:   []string{"machine", "list", "--partition", "lab", "--project", "P", "--size", "s1"},
			method: "MachineService/List",
			want:   &apiv1.MachineServiceListRequest{PartitionId: "lab", ProjectId: "P", SizeId: "s1"},
		},
		{
			name:   "free is delete",
			args:   []string{"machine", "free", "m2"},
			method: "MachineService/Delete",
			want:   &apiv1.MachineServiceDeleteRequest{Id: "m2"},
		},
		{
			name:   "reinstall current image",
			args:   []string{"machine", "reinstall", "m2"},
			method: "MachineService/Reinstall",
			want:   &apiv1.MachineServiceReinstallRequest{Id: "m2"},
		},
		{
			name:   "lock",
			args:   []string{"machine", "lock", "m1", "--reason", "bad fan"},
			method: "MachineService/SetState",
			want:   &apiv1.MachineServiceSetStateRequest{Id: "m1", State: apiv1.MachineState_MACHINE_STATE_LOCKED, Reason: "bad fan"},
		},
		{
			name:   "unlock",
			args:   []string{"machine", "unlock", "m4"},
			method: "MachineService/SetState",
			want:   &apiv1.MachineServiceSetStateRequest{Id: "m4", State: apiv1.MachineState_MACHINE_STATE_AVAILABLE},
		},
		{
			name:   "reserve",
			args:   []string{"machine", "reserve", "m1", "--reason", "ci"},
			method: "MachineService/SetState",
			want:   &apiv1.MachineServiceSetStateRequest{Id: "m1", State: apiv1.MachineState_MACHINE_STATE_RESERVED, Reason: "ci"},
		},
		{
			name:   "unreserve",
			args:   []string{"machine", "unreserve", "m2"},
			method: "MachineService/SetState",
			want:   &apiv1.MachineServiceSetStateRequest{Id: "m2", State: apiv1.MachineState_MACHINE_STATE_AVAILABLE},
		},
		{
			name:   "issues of a partition",
			args:   []string{"machine", "issues", "--partition", "lab"},
			method: "MachineService/Issues",
			want:   &apiv1.MachineServiceIssuesRequest{PartitionId: "lab"},
		},
		{
			name:   "power cycle",
			args:   []string{"machine", "power", "cycle", "m1"},
			method: "MachineService/Power",
			want:   &apiv1.MachineServicePowerRequest{Id: "m1", Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_CYCLE},
		},
		{
			name:   "power off",
			args:   []string{"machine", "power", "off", "m1"},
			method: "MachineService/Power",
			want:   &apiv1.MachineServicePowerRequest{Id: "m1", Action: agentv1.BmcPowerAction_BMC_POWER_ACTION_OFF},
		},
		{
			name:   "boot bios",
			args:   []string{"machine", "boot", "bios", "m2"},
			method: "MachineService/Boot",
			want:   &apiv1.MachineServiceBootRequest{Id: "m2", Device: agentv1.BmcBootDevice_BMC_BOOT_DEVICE_BIOS},
		},
		{
			name:   "identify on",
			args:   []string{"machine", "identify", "on", "m1"},
			method: "MachineService/Identify",
			want:   &apiv1.MachineServiceIdentifyRequest{Id: "m1", On: true},
		},
		{
			name:   "update bmc firmware",
			args:   []string{"machine", "update-firmware", "bmc", "m1", "--url", "https://fw.example/bmc.bin", "--sha256", "ab"},
			method: "MachineService/UpdateFirmware",
			want: &apiv1.MachineServiceUpdateFirmwareRequest{Id: "m1", Component: agentv1.BmcFirmwareComponent_BMC_FIRMWARE_COMPONENT_BMC,
				Url: "https://fw.example/bmc.bin", Sha256: "ab"},
		},
		{
			name:   "logs limit",
			args:   []string{"machine", "logs", "m1", "--limit", "3"},
			method: "MachineService/Events",
			want:   &apiv1.MachineServiceEventsRequest{Id: "m1", Limit: 3},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, addr := startFake(t)
			r := runAt(t, addr, tc.args...)
			mustSucceed(t, r)
			checkRequest(t, onlyCall(t, f, tc.method), tc.want)
		})
	}
}

// TestMachineUsageErrors: bad flags fail with a message naming the flag,
// before anything reaches central.
func TestMachineUsageErrors(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	create := []string{"machine", "create", "--project", "P", "--partition", "lab", "--size", "s1", "--image", "debian-12"}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"create without anything", []string{"machine", "create"}, "--project, --partition, --image and --size (or --id) are required"},
		{"create without image", []string{"machine", "create", "--project", "P", "--partition", "lab", "--size", "s1"}, "--image is required"},
		{"create without size or id", []string{"machine", "create", "--project", "P", "--partition", "lab", "--image", "i"}, "--size (or --id) is required"},
		{"create key file missing", append(create, "--sshpublickey", "@/nonexistent/key.pub"), "--sshpublickey: open /nonexistent/key.pub"},
		{"create empty key", append(create, "--sshpublickey", " "), "--sshpublickey: empty key"},
		{"create userdata file missing", append(create, "--userdata", "@/nonexistent/ud"), "--userdata: open /nonexistent/ud"},
		{"create bad label", append(create, "--label", "x"), "--label \"x\": want key=value"},
		{"create zero wait timeout", append(create, "--wait", "--wait-timeout", "0s"), "--wait-timeout must be positive"},
		{"create bad output", append(create, "-o", "xml"), "unknown output format"},
		{"lock without reason", []string{"machine", "lock", "m1"}, "--reason is required"},
		{"reserve without reason", []string{"machine", "reserve", "m1", "--reason", " "}, "--reason is required"},
		{"describe without id", []string{"machine", "describe"}, "accepts 1 arg(s)"},
		{"logs without id", []string{"machine", "logs"}, "accepts 1 arg(s)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runAt(t, addr, tc.args...)
			if r.code != 1 || !strings.HasPrefix(r.stderr, "Error: ") || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, tc.want)
			}
		})
	}
	if calls := methods(f); len(calls) != 0 {
		t.Errorf("calls made despite bad flags: %v", calls)
	}
}

func TestMachineGRPCErrors(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	r := runAt(t, addr, "machine", "describe", "nope")
	if want := "Error: NotFound: machine \"nope\" not found\n"; r.code != 1 || r.stderr != want {
		t.Errorf("describe: exit %d, stderr %q; want 1, %q", r.code, r.stderr, want)
	}
	f.failWith("MachineService/Create", status.Error(codes.ResourceExhausted, "no waiting machine of size s1 in lab"))
	r = runAt(t, addr, "machine", "create", "--project", "P", "--partition", "lab", "--size", "s1", "--image", "debian-12", "--wait")
	if want := "Error: ResourceExhausted: no waiting machine of size s1 in lab\n"; r.code != 1 || r.stderr != want || r.stdout != "" {
		t.Errorf("create: exit %d, stdout %q, stderr %q; want 1, nothing, %q", r.code, r.stdout, r.stderr, want)
	}
	f.failWith("MachineService/Events", status.Error(codes.PermissionDenied, "not your machine"))
	r = runAt(t, addr, "machine", "logs", "m1")
	if want := "Error: events of machine m1: PermissionDenied: not your machine\n"; r.code != 1 || r.stderr != want {
		t.Errorf("logs: exit %d, stderr %q; want 1, %q", r.code, r.stderr, want)
	}
}

// installEvents is a whole installation as central streams it.
func installEvents(id string) []*apiv1.MachineServiceEventsResponse {
	m := newMachine(&apiv1.MachineServiceCreateRequest{Id: id, ProjectId: testProjectID, PartitionId: "lab", ImageId: "debian-12", Hostname: "web-1"})
	return []*apiv1.MachineServiceEventsResponse{
		waitEvent(id, 0, "Allocated", "project "+testProjectID, m),
		waitEvent(id, 2*time.Second, "Waiting", "allocation received", m),
		waitEvent(id, 3*time.Second, "Installing", "layout default", m),
		waitEvent(id, 20*time.Second, "Installing", "image 42%", m),
		waitEvent(id, 40*time.Second, "Installing", "image 100%", m),
		waitEvent(id, 45*time.Second, "Booting New Kernel", "kexec 6.1.0-28-cloud-amd64", m),
		waitEvent(id, 75*time.Second, "Phoned Home", "web-1 up 12s", m),
	}
}

func createWaitArgs(extra ...string) []string {
	return append([]string{"machine", "create", "--project", testProjectID, "--partition", "lab", "--size", "s1",
		"--image", "debian-12", "--hostname", "web-1", "--wait"}, extra...)
}

func TestMachineCreateWait(t *testing.T) {
	t.Parallel()
	id := newMachineID
	old := &apiv1.MachineServiceEventsResponse{Event: &apiv1.MachineEvent{Time: tsAt(allocatedAt.Add(-time.Hour)), Event: "Phoned Home", Message: "previous tenant"}}
	crashLoop := newMachine(&apiv1.MachineServiceCreateRequest{Id: id, PartitionId: "lab"})
	crashLoop.Issues = []*apiv1.MachineIssue{{Id: "crash-loop", Description: "crashed 3 times in 10m", MachineId: id}}
	all := installEvents(id)
	for _, tc := range []struct {
		name     string
		attempts []eventAttempt
		extra    []string
		// golden holds stdout on success, the error otherwise.
		golden   string
		wantErr  string
		wantOpen int
	}{
		{
			name:     "phones home",
			attempts: []eventAttempt{{resps: append([]*apiv1.MachineServiceEventsResponse{old}, all...), hold: true}},
			golden:   "machine_create_wait", wantOpen: 1,
		},
		{
			name: "stream breaks and resumes without repeating events",
			attempts: []eventAttempt{
				{resps: all[:4], err: status.Error(codes.Unavailable, "central-0 going away")},
				{err: status.Error(codes.Unavailable, "no central")},
				{resps: append([]*apiv1.MachineServiceEventsResponse{old}, all...), hold: true},
			},
			golden: "machine_create_wait", wantOpen: 3,
		},
		{
			name: "stream ended by central is reopened",
			attempts: []eventAttempt{
				{resps: all[:2]},
				{resps: all, hold: true},
			},
			golden: "machine_create_wait", wantOpen: 2,
		},
		{
			name: "crashed",
			attempts: []eventAttempt{{resps: append(all[:4:4],
				waitEvent(id, 30*time.Second, "Crashed", "image sha256 mismatch: got 9f86d0, want 2c26b4", nil)), hold: true}},
			golden: "machine_create_wait_crashed", wantErr: "machine " + id + " crashed: image sha256 mismatch", wantOpen: 1,
		},
		{
			name:     "crash loop",
			attempts: []eventAttempt{{resps: append(all[:2:2], waitEvent(id, 9*time.Minute, "PXE Booting", "aa:bb:cc:00:00:09", crashLoop)), hold: true}},
			golden:   "machine_create_wait_crashloop", wantErr: "is in a crash loop: crashed 3 times in 10m", wantOpen: 1,
		},
		{
			name:     "timeout",
			attempts: []eventAttempt{{resps: all[:3], hold: true}},
			extra:    []string{"--wait-timeout", "300ms"},
			golden:   "machine_create_wait_timeout", wantErr: "did not phone home within 300ms", wantOpen: 1,
		},
		{
			name:     "stream fails for good",
			attempts: []eventAttempt{{resps: all[:2], err: status.Error(codes.PermissionDenied, "token expired")}},
			wantErr:  "events of machine " + id + ": PermissionDenied: token expired", wantOpen: 1,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f, addr := startFake(t)
			f.scriptEvents(id, tc.attempts...)
			r := runAt(t, addr, createWaitArgs(tc.extra...)...)
			if tc.wantErr == "" {
				mustSucceed(t, r)
				checkGolden(t, tc.golden, r.stdout)
			} else {
				if r.code != 1 || !strings.Contains(r.stderr, tc.wantErr) {
					t.Fatalf("exit %d, stderr %q; want exit 1 and %q", r.code, r.stderr, tc.wantErr)
				}
				if tc.golden != "" {
					checkGolden(t, tc.golden, r.stdout+"--- stderr\n"+stripReconnects(r.stderr))
				}
			}
			var opens int
			for _, c := range f.recorded() {
				if c.method == "MachineService/Events" {
					opens++
					checkRequest(t, c.req, &apiv1.MachineServiceEventsRequest{Id: id, Follow: true})
				}
			}
			if opens != tc.wantOpen {
				t.Errorf("Events opened %d times, want %d", opens, tc.wantOpen)
			}
		})
	}
}

// stripReconnects drops the reconnect notices, whose order against the
// error is what the test is not about.
func stripReconnects(s string) string {
	var out []string
	for l := range strings.Lines(s) {
		if !strings.Contains(l, "reconnecting") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "")
}

// TestMachineCreateWaitJSON: with -o json stdout is the final machine only;
// the events go to stderr.
func TestMachineCreateWaitJSON(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	f.scriptEvents(newMachineID, eventAttempt{resps: installEvents(newMachineID), hold: true})
	r := runAt(t, addr, createWaitArgs("-o", "json")...)
	mustSucceed(t, r)
	checkGolden(t, "machine_create_wait_json", r.stdout)
	if !strings.Contains(r.stderr, "Booting New Kernel") {
		t.Errorf("stderr lacks the events:\n%s", r.stderr)
	}
}

// syncBuffer is written by the command and read by the test meanwhile.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestMachineLogsFollow: -f shows the log, survives a broken stream without
// repeating events, shows new ones and ends cleanly when interrupted.
func TestMachineLogsFollow(t *testing.T) {
	t.Parallel()
	f, addr := startFake(t)
	evs := installEvents("m1")
	f.scriptEvents("m1",
		eventAttempt{resps: evs[:3], err: status.Error(codes.Unavailable, "replica restarting")},
		eventAttempt{resps: evs[:5], hold: true},
	)
	var out, errOut syncBuffer
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	streams := Streams{Out: &out, Err: &errOut, Now: func() time.Time { return testNow },
		LookupEnv: func(k string) (string, bool) {
			if k == envConfig {
				return filepath.Join(t.TempDir(), "config.yaml"), true
			}
			return "", false
		}}
	done := make(chan int, 1)
	go func() {
		done <- Run(ctx, streams, []string{"--api-url", addr, "--insecure-plaintext", "machine", "logs", "m1", "-f", "--limit", "10"})
	}()
	deadline := time.Now().Add(20 * time.Second)
	for strings.Count(out.String(), "\n") < 5 {
		if time.Now().After(deadline) {
			t.Fatalf("timed out; output so far:\n%s\nstderr:\n%s", out.String(), errOut.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("exit %d after interrupt, stderr:\n%s", code, errOut.String())
	}
	checkGolden(t, "machine_logs_follow", out.String())
	if !strings.Contains(errOut.String(), "reconnecting") {
		t.Errorf("stderr does not tell about the reconnect: %q", errOut.String())
	}
	var reqs []proto.Message
	for _, c := range f.recorded() {
		reqs = append(reqs, c.req)
	}
	if len(reqs) != 2 {
		t.Fatalf("%d calls, want 2 Events calls", len(reqs))
	}
	// The limit is for the first request; after a reconnect the whole log
	// is asked for and the watermark skips what was shown.
	checkRequest(t, reqs[0], &apiv1.MachineServiceEventsRequest{Id: "m1", Follow: true, Limit: 10})
	checkRequest(t, reqs[1], &apiv1.MachineServiceEventsRequest{Id: "m1", Follow: true})
}

func TestEventFollowerSkipsSeen(t *testing.T) {
	t.Parallel()
	at := func(s int) *timestamppb.Timestamp { return tsAt(fixedTime.Add(time.Duration(s) * time.Second)) }
	f := &eventFollower{since: fixedTime}
	for _, tc := range []struct {
		ev   *apiv1.MachineEvent
		want bool
	}{
		{&apiv1.MachineEvent{Time: at(-1), Event: "Phoned Home"}, false}, // before the allocation
		{&apiv1.MachineEvent{Time: at(0), Event: "Allocated"}, true},
		{&apiv1.MachineEvent{Time: at(1), Event: "Waiting"}, true},
		{&apiv1.MachineEvent{Time: at(1), Event: "Waiting"}, false},   // repeated after a reconnect
		{&apiv1.MachineEvent{Time: at(1), Event: "Installing"}, true}, // same time, other event
		{&apiv1.MachineEvent{Time: at(0), Event: "Allocated"}, false},
		{&apiv1.MachineEvent{Time: at(2), Event: "Installing"}, true},
	} {
		if got := f.isNew(tc.ev); got != tc.want {
			t.Errorf("isNew(%s at %s) = %v, want %v", tc.ev.GetEvent(), tc.ev.GetTime().AsTime().Format(time.TimeOnly), got, tc.want)
		}
	}
}

func TestPercentIn(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		msg  string
		want int64
		ok   bool
	}{
		{"image 42%", 42, true},
		{"image 100% (1.2GiB)", 100, true},
		{"7% done", 7, true},
		{"1000%", 0, false},
		{"no percent", 0, false},
		{"%", 0, false},
		{"x%", 0, false},
	} {
		got, ok := percentIn(tc.msg)
		if got != tc.want || ok != tc.ok {
			t.Errorf("percentIn(%q) = %d, %v; want %d, %v", tc.msg, got, ok, tc.want, tc.ok)
		}
	}
}

// openPTY gives a pseudo terminal: the progress bar is drawn only on a
// terminal, so that is what the test gives it.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo terminals here: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	sl, err := os.OpenFile("/dev/pts/"+strconv.Itoa(n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pty: %v", err)
	}
	t.Cleanup(func() { sl.Close() })
	if err := unix.IoctlSetWinsize(int(sl.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 40, Col: 100}); err != nil {
		t.Fatalf("pty size: %v", err)
	}
	return m, sl
}

// TestBarView draws the progress display on a pseudo terminal: it must
// finish on success and on failure, and show the event lines and the bar.
func TestBarView(t *testing.T) {
	t.Parallel()
	for _, ok := range []bool{true, false} {
		master, slave := openPTY(t)
		if !isTerminal(slave) {
			t.Fatal("isTerminal(pty) = false")
		}
		var buf syncBuffer
		copied := make(chan struct{})
		go func() { _, _ = io.Copy(&buf, master); close(copied) }()
		v := newBarView(slave, "m1")
		v.line("03:04:05  Installing          image 42%")
		v.stage("Installing", 142)
		done := make(chan struct{})
		go func() { v.finish(ok); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("finish(%v) hangs", ok)
		}
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(buf.String(), "image 42%") || !strings.Contains(buf.String(), "m1 Installing") {
			if time.Now().After(deadline) {
				t.Fatalf("finish(%v): terminal shows no line or bar:\n%q", ok, buf.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
		slave.Close()
		master.Close()
		<-copied
	}
}

// TestPartitionBMC: "partition bmc set" reads the password from a file,
// never a flag, sends the settings whole, and prints no password.
func TestPartitionBMC(t *testing.T) {
	t.Parallel()
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("s3cr3t\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, addr := startFake(t)
	r := runAt(t, addr, "partition", "bmc", "set", "fra1", "--user", "metal", "--password-file", pw,
		"--static", "10.1.0.5", "--static-ipmi", "10.1.0.6:623", "--lease-cidr", "10.1.0.0/24", "--poll-interval", "1m")
	mustSucceed(t, r)
	checkRequest(t, onlyCall(t, f, "BMCService/SetSettings"), &apiv1.BMCServiceSetSettingsRequest{Settings: &apiv1.PartitionBMC{
		PartitionId: "fra1", User: "metal", Password: "s3cr3t", LeaseCidrs: []string{"10.1.0.0/24"}, PollIntervalSeconds: 60,
		StaticBmcs: []*apiv1.PartitionBMCEndpoint{{Address: "10.1.0.5"}, {Address: "10.1.0.6:623", Ipmi: true}}}})
	if strings.Contains(r.stdout, "s3cr3t") || !strings.Contains(r.stdout, "set") || !strings.Contains(r.stdout, "10.1.0.6:623 (ipmi)") {
		t.Errorf("output:\n%s", r.stdout)
	}
	r = runAt(t, addr, "partition", "bmc", "show", "fra1", "-o", "json")
	mustSucceed(t, r)
	if !strings.Contains(r.stdout, `"passwordSet": true`) && !strings.Contains(r.stdout, `"password_set": true`) {
		t.Errorf("show:\n%s", r.stdout)
	}
}

// TestPartitionBMCStuck: the stuck-machine flags reach the request, and
// the table says what is in effect.
func TestPartitionBMCStuck(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		args []string
		want *apiv1.PartitionBMC
		out  string
	}{
		{"default", nil, &apiv1.PartitionBMC{PartitionId: "fra1"}, "up to 0"},
		{"max", []string{"--stuck-max-cycles", "5"}, &apiv1.PartitionBMC{PartitionId: "fra1", StuckMaxCycles: 5}, "up to 5"},
		{"off", []string{"--no-stuck-cycle"}, &apiv1.PartitionBMC{PartitionId: "fra1", StuckCycleDisabled: true}, "off"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, addr := startFake(t)
			r := runAt(t, addr, append([]string{"partition", "bmc", "set", "fra1"}, tt.args...)...)
			mustSucceed(t, r)
			checkRequest(t, onlyCall(t, f, "BMCService/SetSettings"), &apiv1.BMCServiceSetSettingsRequest{Settings: tt.want})
			if !strings.Contains(r.stdout, tt.out) {
				t.Errorf("output lacks %q:\n%s", tt.out, r.stdout)
			}
		})
	}
}
