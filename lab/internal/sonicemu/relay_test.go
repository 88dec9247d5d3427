package sonicemu

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestParseDHCPServers(t *testing.T) {
	for _, tc := range []struct {
		name         string
		v4, v6       string
		want4, want6 []string
		errs         []string
	}{
		{name: "none"},
		{name: "one each", v4: "10.1.0.2", v6: "fd00::2", want4: []string{"10.1.0.2"}, want6: []string{"fd00::2"}},
		{name: "lists, spaces, duplicates", v4: "10.1.0.2, 10.1.0.3,10.1.0.2,", v6: "fd00::2,fd00::3",
			want4: []string{"10.1.0.2", "10.1.0.3"}, want6: []string{"fd00::2", "fd00::3"}},
		{name: "garbled entries are reported, the rest kept", v4: "10.1.0.2,bogus,fd00::9,255.255.255.255", v6: "10.0.0.1,fe80::1%eth0,fd00::2,ff02::1:2",
			want4: []string{"10.1.0.2"}, want6: []string{"fd00::2"},
			errs: []string{`"bogus" is not an address`, `"fd00::9" is not IPv4`, `"255.255.255.255" is not a unicast`,
				`"10.0.0.1" is not IPv6`, `"fe80::1%eth0": no zone`, `"ff02::1:2" is not a unicast`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, bad := Parse(map[string]map[string]string{
				"VLAN|Vlan4000": {"vlanid": "4000", "dhcp_servers@": tc.v4, "dhcpv6_servers@": tc.v6},
				// Another VLAN is not touched by the first one's errors.
				"VLAN|Vlan4001": {"dhcp_servers@": "10.9.0.1"},
			}, "|")
			str := func(as []netip.Addr) []string {
				var out []string
				for _, a := range as {
					out = append(out, a.String())
				}
				return out
			}
			v := s.VLANs[4000]
			if !slices.Equal(str(v.DHCPServers), tc.want4) || !slices.Equal(str(v.DHCPv6Servers), tc.want6) {
				t.Errorf("servers %v %v, want %v %v", v.DHCPServers, v.DHCPv6Servers, tc.want4, tc.want6)
			}
			if got := str(s.VLANs[4001].DHCPServers); !slices.Equal(got, []string{"10.9.0.1"}) {
				t.Errorf("Vlan4001 servers %v", got)
			}
			if len(bad) != len(tc.errs) {
				t.Fatalf("errors %v, want %d: %v", bad, len(tc.errs), tc.errs)
			}
			for i, e := range tc.errs {
				if !strings.Contains(bad[i].Error(), e) || !strings.HasPrefix(bad[i].Error(), "VLAN|Vlan4000: dhcp") {
					t.Errorf("error %d = %q, want it to name the row and %q", i, bad[i], e)
				}
			}
		})
	}
}

// routes is an Upstreams from a table: server → interfaces.
type routes map[string][]string

func (r routes) Upstream(_ context.Context, a netip.Addr) ([]string, error) {
	if a.String() == "10.66.0.1" {
		return nil, errors.New("netlink broke")
	}
	return r[a.String()], nil
}

func TestRelaySpecs(t *testing.T) {
	up := routes{
		"10.1.0.2": {"Ethernet120"}, "10.1.0.3": {"Ethernet120", "Ethernet124"}, // ECMP
		"fd00::2":  {"Ethernet124", "Ethernet120"},
		"10.2.0.1": {"Vlan4000"}, // routed back into the VLAN: not an upstream
	}
	pxe := func(servers, v6 string, addrs ...string) string {
		return fmt.Sprintf("VLAN|Vlan4000 dhcp_servers@=%s dhcpv6_servers@=%s addrs=%s", servers, v6, strings.Join(addrs, ","))
	}
	for _, tc := range []struct {
		name  string
		rows  string
		want  []string // Name: args
		errs  []string
		addrs []string
	}{
		{name: "no servers", rows: pxe("", "", "10.255.0.1/24")},
		{name: "v4", rows: pxe("10.1.0.2", "", "10.255.0.1/24"),
			want: []string{"Vlan4000-v4: -d -4 --no-pid -id Vlan4000 -iu Ethernet120 10.1.0.2"}},
		{name: "v4 over ECMP: every uplink listens", rows: pxe("10.1.0.2,10.1.0.3", "", "10.255.0.1/24"),
			want: []string{"Vlan4000-v4: -d -4 --no-pid -id Vlan4000 -iu Ethernet120 -iu Ethernet124 10.1.0.2 10.1.0.3"}},
		{name: "v4 without an IPv4 address on the SVI", rows: pxe("10.1.0.2", "", "fd00:ff::1/64"),
			errs: []string{"Vlan4000: dhcp_servers@ set but the VLAN has no IPv4 address"}},
		{name: "no route", rows: pxe("10.9.9.9", "", "10.255.0.1/24"), errs: []string{"10.9.9.9: no route"}},
		{name: "route through the VLAN itself", rows: pxe("10.2.0.1", "", "10.255.0.1/24"), errs: []string{"10.2.0.1: no route"}},
		{name: "one server unroutable, the other relayed", rows: pxe("10.66.0.1,10.1.0.2", "", "10.255.0.1/24"),
			want: []string{"Vlan4000-v4: -d -4 --no-pid -id Vlan4000 -iu Ethernet120 10.66.0.1 10.1.0.2"},
			errs: []string{"10.66.0.1: netlink broke"}},
		{name: "v6 through the first uplink", rows: pxe("", "fd00::2", "10.255.0.1/24"),
			want: []string{"Vlan4000-v6: -d -6 --no-pid -l Vlan4000 -u fd00::2%Ethernet120"}},
		{name: "both", rows: pxe("10.1.0.2", "fd00::2", "10.255.0.1/24", "fd00:ff::1/64"),
			want: []string{"Vlan4000-v4: -d -4 --no-pid -id Vlan4000 -iu Ethernet120 10.1.0.2", "Vlan4000-v6: -d -6 --no-pid -l Vlan4000 -u fd00::2%Ethernet120"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := strings.Fields(tc.rows)
			row := map[string]string{}
			for _, kv := range f[1:] {
				k, v, _ := strings.Cut(kv, "=")
				row[k] = v
			}
			rows := map[string]map[string]string{"VLAN|Vlan4000": {"dhcp_servers@": row["dhcp_servers@"], "dhcpv6_servers@": row["dhcpv6_servers@"]}}
			for _, a := range strings.Split(row["addrs"], ",") {
				rows["VLAN_INTERFACE|Vlan4000|"+a] = map[string]string{}
			}
			s, bad := Parse(rows, "|")
			if len(bad) > 0 {
				t.Fatal(bad)
			}
			specs, errs := RelaySpecs(context.Background(), s, up)
			var got []string
			for _, sp := range specs {
				got = append(got, sp.Name+": "+strings.Join(sp.Args, " "))
				if !slices.Equal(sp.Addrs, s.Routed["Vlan4000"].Addrs) {
					t.Errorf("%s: addrs %v", sp.Name, sp.Addrs)
				}
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("specs\n got %q\nwant %q", got, tc.want)
			}
			if len(errs) != len(tc.errs) {
				t.Fatalf("errors %v, want %q", errs, tc.errs)
			}
			for i, e := range tc.errs {
				if !strings.Contains(errs[i].Error(), e) {
					t.Errorf("error %q, want %q", errs[i], e)
				}
			}
		})
	}
}

// fakeStarter records starts and stops; the test kills processes.
type fakeStarter struct {
	mu     sync.Mutex
	events []string
	procs  map[string]*fakeProc
	fail   int // fail the next n starts
}

type fakeProc struct {
	done    chan error
	stopped chan struct{}
	s       *fakeStarter
	name    string
}

func (p *fakeProc) Done() <-chan error { return p.done }
func (p *fakeProc) Stop() {
	p.s.record("stop " + p.name)
	close(p.stopped)
}

func (f *fakeStarter) record(e string) {
	f.mu.Lock()
	f.events = append(f.events, e)
	f.mu.Unlock()
}

func (f *fakeStarter) Start(s RelaySpec) (Process, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail > 0 {
		f.fail--
		f.events = append(f.events, "fail "+s.Name)
		return nil, errors.New("exec: dhcrelay: not found")
	}
	p := &fakeProc{done: make(chan error, 1), stopped: make(chan struct{}), s: f, name: s.Name}
	f.procs[s.Name] = p
	f.events = append(f.events, "start "+s.Name+" "+strings.Join(s.Args, " ")+" "+strings.Join(s.Addrs, ","))
	return p, nil
}

func (f *fakeStarter) kill(name string) {
	f.mu.Lock()
	p := f.procs[name]
	f.mu.Unlock()
	p.done <- errors.New("exit status 1")
}

// take waits until n events (after the first skip) were recorded.
func (f *fakeStarter) take(t *testing.T, skip, n int) []string {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		f.mu.Lock()
		if len(f.events) >= skip+n {
			out := slices.Clone(f.events[skip : skip+n])
			f.mu.Unlock()
			return out
		}
		f.mu.Unlock()
		time.Sleep(2 * time.Millisecond)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t.Fatalf("want %d events after %d, have %q", n, skip, f.events)
	return nil
}

func TestRelaysSupervise(t *testing.T) {
	st := &fakeStarter{procs: map[string]*fakeProc{}}
	up := routes{"10.1.0.2": {"Ethernet120"}, "10.1.0.3": {"Ethernet120"}, "fd00::2": {"Ethernet120"}}
	r := &Relays{Starter: st, Upstreams: up, Backoff: 20 * time.Millisecond, MaxBackoff: 80 * time.Millisecond}
	defer r.Close()
	ctx := context.Background()
	state := func(rows map[string]map[string]string) State {
		s, bad := Parse(rows, "|")
		if len(bad) > 0 {
			t.Fatal(bad)
		}
		return s
	}
	base := func(v4 string, addr string) map[string]map[string]string {
		return map[string]map[string]string{
			"VLAN|Vlan4000":                   {"dhcp_servers@": v4},
			"VLAN_INTERFACE|Vlan4000|" + addr: {},
			"VLAN|Vlan1001":                   {"dhcpv6_servers@": "fd00::2"},
		}
	}
	n := 0
	expect := func(want ...string) {
		t.Helper()
		got := st.take(t, n, len(want))
		n += len(want)
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Fatalf("events\n got %q\nwant %q", got, want)
		}
	}
	v4 := func(servers, addr string) string {
		return "start Vlan4000-v4 -d -4 --no-pid -id Vlan4000 -iu Ethernet120 " + servers + " " + addr
	}
	v6 := "start Vlan1001-v6 -d -6 --no-pid -l Vlan1001 -u fd00::2%Ethernet120 "

	r.Update(ctx, state(base("10.1.0.2", "10.255.0.1/24")))
	expect(v4("10.1.0.2", "10.255.0.1/24"), v6)
	// The same again: nothing restarts.
	r.Update(ctx, state(base("10.1.0.2", "10.255.0.1/24")))
	// Servers change: Vlan4000's relay restarts, Vlan1001's stays.
	r.Update(ctx, state(base("10.1.0.2,10.1.0.3", "10.255.0.1/24")))
	expect("stop Vlan4000-v4", v4("10.1.0.2 10.1.0.3", "10.255.0.1/24"))
	// The SVI's address changes: restart (dhcrelay read its giaddr at start).
	r.Update(ctx, state(base("10.1.0.2,10.1.0.3", "10.255.1.1/24")))
	expect("stop Vlan4000-v4", v4("10.1.0.2 10.1.0.3", "10.255.1.1/24"))
	// It dies: started again after the backoff, then again after twice it.
	start := time.Now()
	st.kill("Vlan4000-v4")
	expect(v4("10.1.0.2 10.1.0.3", "10.255.1.1/24"))
	first := time.Since(start)
	start = time.Now()
	st.kill("Vlan4000-v4")
	expect(v4("10.1.0.2 10.1.0.3", "10.255.1.1/24"))
	second := time.Since(start)
	if first < 20*time.Millisecond || second < 40*time.Millisecond {
		t.Errorf("restarted after %v and %v, want ≥ 20 ms and ≥ 40 ms (backoff)", first, second)
	}
	// dhcrelay cannot even start: retried.
	st.mu.Lock()
	st.fail = 1
	st.mu.Unlock()
	st.kill("Vlan4000-v4")
	expect("fail Vlan4000-v4", v4("10.1.0.2 10.1.0.3", "10.255.1.1/24"))
	// The field goes: stopped; the other VLAN's relay runs on.
	r.Update(ctx, state(base("", "10.255.1.1/24")))
	expect("stop Vlan4000-v4")
	if got := r.Running(); len(got) != 1 || got[0].Name != "Vlan1001-v6" {
		t.Fatalf("running %v, want Vlan1001-v6 only", got)
	}
	// The row goes: stopped.
	r.Update(ctx, State{})
	expect("stop Vlan1001-v6")
	if got := r.Running(); len(got) != 0 {
		t.Fatalf("running %v", got)
	}
}
