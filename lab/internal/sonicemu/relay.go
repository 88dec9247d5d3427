package sonicemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"
)

// RelaySpec is one DHCP relay process: what SONiC's dhcp_relay container
// runs per VLAN and address family (isc-dhcp-relay's dhcrelay).
type RelaySpec struct {
	// Name is "Vlan<id>-v4" or "Vlan<id>-v6".
	Name string
	// Args are dhcrelay's arguments.
	Args []string
	// Addrs are the SVI's addresses: dhcrelay takes the address it relays
	// from (giaddr, the link address) when it starts, so a change of them
	// restarts it although its arguments stay the same.
	Addrs []string
}

func (s RelaySpec) equal(o RelaySpec) bool {
	return s.Name == o.Name && slices.Equal(s.Args, o.Args) && slices.Equal(s.Addrs, o.Addrs)
}

// Upstreams finds the interfaces a server's packets leave through.
type Upstreams interface {
	// Upstream returns the interfaces of the route to server (several for
	// an ECMP route); none when there is no route.
	Upstream(ctx context.Context, server netip.Addr) ([]string, error)
}

// RelaySpecs derives the relays CONFIG_DB asks for from s: per VLAN with
// dhcp_servers@, `dhcrelay -d -4 --no-pid -id Vlan<id> -iu <up>… <servers>`;
// per VLAN with dhcpv6_servers@, `dhcrelay -d -6 --no-pid -l Vlan<id> -u
// <server>%<up>…`.
//
// The upstream interfaces are those the routes to the servers leave
// through, every next hop of an ECMP route, as on a leaf the route to
// the DHCP server is the fabric's. dhcrelay (v4) listens for the
// servers' answers on its upstream interfaces only, and an answer comes
// back on whichever uplink the fabric picks, so all of them must be
// there. A v6 server is relayed through the first of its route's
// interfaces (dhcrelay -6 sends a server's packets out of one).
//
// A VLAN whose relay cannot run yet — no IPv4 address on its SVI (v4: it
// is the giaddr), no route to a server — gets no relay and an error; the
// next Update tries again. --no-pid: several dhcrelay run at once and
// would share /var/run/dhcrelay.pid.
func RelaySpecs(ctx context.Context, s State, up Upstreams) ([]RelaySpec, []error) {
	var specs []RelaySpec
	var errs []error
	for _, vid := range sorted(s.VLANs) {
		v := s.VLANs[vid]
		dev := VLANDevice(vid)
		addrs := s.Routed[dev].Addrs
		upstream := func(server netip.Addr) []string {
			ifs, err := up.Upstream(ctx, server)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: DHCP server %s: %w", dev, server, err))
				return nil
			}
			ifs = slices.DeleteFunc(slices.Clone(ifs), func(i string) bool { return i == dev })
			if len(ifs) == 0 {
				errs = append(errs, fmt.Errorf("%s: DHCP server %s: no route (other than through the VLAN itself)", dev, server))
			}
			return ifs
		}
		if len(v.DHCPServers) > 0 {
			has4 := slices.ContainsFunc(addrs, func(p string) bool { return !strings.Contains(p, ":") })
			var ups []string
			for _, srv := range v.DHCPServers {
				for _, i := range upstream(srv) {
					if !slices.Contains(ups, i) {
						ups = append(ups, i)
					}
				}
			}
			slices.Sort(ups)
			switch {
			case !has4:
				errs = append(errs, fmt.Errorf("%s: dhcp_servers@ set but the VLAN has no IPv4 address to relay from", dev))
			case len(ups) == 0:
			default:
				args := []string{"-d", "-4", "--no-pid", "-id", dev}
				for _, i := range ups {
					args = append(args, "-iu", i)
				}
				for _, srv := range v.DHCPServers {
					args = append(args, srv.String())
				}
				specs = append(specs, RelaySpec{Name: dev + "-v4", Args: args, Addrs: addrs})
			}
		}
		if len(v.DHCPv6Servers) > 0 {
			args := []string{"-d", "-6", "--no-pid", "-l", dev}
			for _, srv := range v.DHCPv6Servers {
				if ups := upstream(srv); len(ups) > 0 {
					slices.Sort(ups)
					args = append(args, "-u", srv.String()+"%"+ups[0])
				}
			}
			if len(args) > 5 {
				specs = append(specs, RelaySpec{Name: dev + "-v6", Args: args, Addrs: addrs})
			}
		}
	}
	return specs, errs
}

// Process is a started relay.
type Process interface {
	// Done delivers the process's exit (once).
	Done() <-chan error
	// Stop ends the process and returns once it has.
	Stop()
}

// Starter starts relay processes (ExecStarter: dhcrelay; a fake in tests).
type Starter interface {
	Start(spec RelaySpec) (Process, error)
}

// Relays runs and supervises the DHCP relays CONFIG_DB asks for: started
// when a VLAN gets servers, restarted when its servers, its upstream
// interfaces or its SVI's addresses change, stopped when the servers go,
// and started again after a growing pause (Backoff, doubling up to
// MaxBackoff) when one dies.
type Relays struct {
	Starter   Starter
	Upstreams Upstreams
	// Backoff is the first pause before a dead relay is restarted (0: 1 s),
	// MaxBackoff the longest (0: 30 s); a relay that ran MaxBackoff
	// starts from Backoff again.
	Backoff, MaxBackoff time.Duration
	Log                 *slog.Logger

	mu      sync.Mutex
	running map[string]*supervised
	lastErr string
}

type supervised struct {
	spec RelaySpec
	stop chan struct{}
	done chan struct{}
}

// Update makes the running relays those s asks for.
func (r *Relays) Update(ctx context.Context, s State) {
	specs, errs := RelaySpecs(ctx, s, r.Upstreams)
	// The same reasons every few seconds are logged once.
	if msg := errors.Join(errs...); msg != nil && msg.Error() != r.lastErr {
		r.log().Warn("DHCP relay not started", "err", msg)
		r.lastErr = msg.Error()
	} else if msg == nil {
		r.lastErr = ""
	}
	r.Reconcile(specs)
}

// Reconcile stops the relays not in specs or changed, and starts the new
// and changed ones.
func (r *Relays) Reconcile(specs []RelaySpec) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.running == nil {
		r.running = map[string]*supervised{}
	}
	want := map[string]RelaySpec{}
	for _, s := range specs {
		want[s.Name] = s
	}
	for _, name := range slices.Sorted(maps.Keys(r.running)) {
		sv := r.running[name]
		if s, ok := want[name]; ok && s.equal(sv.spec) {
			continue
		}
		r.log().Info("DHCP relay stop", "relay", name)
		close(sv.stop)
		<-sv.done
		delete(r.running, name)
	}
	for _, s := range specs {
		if _, ok := r.running[s.Name]; ok {
			continue
		}
		sv := &supervised{spec: s, stop: make(chan struct{}), done: make(chan struct{})}
		r.running[s.Name] = sv
		go r.supervise(sv)
	}
}

// Running returns the specs of the relays being supervised.
func (r *Relays) Running() []RelaySpec {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []RelaySpec
	for _, name := range slices.Sorted(maps.Keys(r.running)) {
		out = append(out, r.running[name].spec)
	}
	return out
}

// Close stops every relay.
func (r *Relays) Close() { r.Reconcile(nil) }

func (r *Relays) supervise(sv *supervised) {
	defer close(sv.done)
	first, most := r.Backoff, r.MaxBackoff
	if first <= 0 {
		first = time.Second
	}
	if most <= 0 {
		most = 30 * time.Second
	}
	pause := first
	log := r.log().With("relay", sv.spec.Name)
	for {
		started := time.Now()
		p, err := r.Starter.Start(sv.spec)
		if err != nil {
			log.Error("DHCP relay start", "err", err, "again in", pause)
		} else {
			log.Info("DHCP relay started", "args", strings.Join(sv.spec.Args, " "))
			select {
			case <-sv.stop:
				p.Stop()
				return
			case err := <-p.Done():
				if time.Since(started) >= most {
					pause = first
				}
				log.Error("DHCP relay exited", "err", err, "again in", pause)
			}
		}
		select {
		case <-sv.stop:
			return
		case <-time.After(pause):
		}
		pause = min(2*pause, most)
	}
}

func (r *Relays) log() *slog.Logger {
	if r.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return r.Log
}
