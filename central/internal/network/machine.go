package network

import (
	"context"
	"errors"
	"fmt"
	"github.com/jackc/pgx/v5"
	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
	"math/big"
	"net/netip"
	"slices"
)

// MachineIPs is one machine's share of an allocation's addresses: the
// networks it joins; the take fills in its addresses and, per network,
// what the installer is told.
type MachineIPs struct {
	Machine  string
	Hostname string
	Nets     []*apiv1.Network

	IPs  []string
	Docs []*agentv1.MachineNetwork
}

// ErrShort says a pool had fewer addresses than a batch of allocations
// wants from it: the calls then take addresses one by one.
var ErrShort = errors.New("a pool ran short of addresses for the batch")

func machineNetwork(n *apiv1.Network) *agentv1.MachineNetwork {
	return &agentv1.MachineNetwork{NetworkId: n.GetId(), Prefixes: n.GetPrefixes(), Vrf: n.GetVrf(),
		Private: n.GetType() == apiv1.NetworkType_NETWORK_TYPE_CHILD, Underlay: n.GetType() == apiv1.NetworkType_NETWORK_TYPE_UNDERLAY}
}

// TakeMachineIPs takes one address per address family of every network
// for the machine, inside the allocation's transaction, from any of a
// network's prefixes, and describes the networks for the installer.
func TakeMachineIPs(ctx context.Context, tx pgx.Tx, project string, m *MachineIPs) error {
	machine := m.Machine
	for _, n := range m.Nets {
		prefixes, err := Prefixes(ctx, tx, n)
		if err != nil {
			return err
		}
		mn := machineNetwork(n)
		for _, fam := range []int{4, 6} {
			if !slices.ContainsFunc(prefixes, func(p Prefix) bool { return ipam.Family(p.CIDR) == fam }) {
				continue
			}
			addr, pool, err := takeAddress(ctx, tx, prefixes, netip.Addr{}, fam)
			if err != nil {
				return err
			}
			ip := &apiv1.IP{Ip: addr.String(), NetworkId: n.GetId(), ProjectId: project, Type: apiv1.IPType_IP_TYPE_EPHEMERAL,
				Name: m.Hostname, Description: "machine " + machine}
			if _, err := IPs.Insert(ctx, tx, ip.GetIp(), ip, store.Col{Name: "pool_id", Val: pool}, store.Col{Name: "unit", Val: ipam.AddrUnit(addr).String()},
				store.Col{Name: "network_id", Val: n.GetId()}, store.Col{Name: "project_id", Val: project}, store.Col{Name: "type", Val: "ephemeral"}, store.Col{Name: "machine_id", Val: machine}); err != nil {
				return err
			}
			mn.Ips = append(mn.Ips, ip.GetIp())
			m.IPs = append(m.IPs, ip.GetIp())
		}
		m.Docs = append(m.Docs, mn)
	}
	return nil
}

// ReleaseMachineIPs gives a freed machine's ephemeral IPs back to their
// pools; static ones stay with the project, detached.
func ReleaseMachineIPs(ctx context.Context, tx pgx.Tx, machine string) error {
	rows, err := tx.Query(ctx, `DELETE FROM ips WHERE machine_id = $1 AND type = 'ephemeral' RETURNING pool_id, unit::TEXT`, machine)
	if err != nil {
		return fmt.Errorf("release ips: %w", err)
	}
	units, err := store.TextPairs(rows)
	if err != nil {
		return fmt.Errorf("release ips: %w", err)
	}
	for _, u := range units {
		if err := ipam.Release(ctx, tx, u[0], mustUnit(u[1])); err != nil {
			return fmt.Errorf("release ip unit: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, `UPDATE ips SET machine_id = NULL, updated_at = now() WHERE machine_id = $1`, machine); err != nil {
		return fmt.Errorf("detach static ips: %w", err)
	}
	return nil
}

// TakeBatchIPs takes one address per network and family for every machine,
// all of a pool in one statement, and writes all IP rows in one statement.
// Only each family's first prefix is used: when it runs short the batch
// is rolled back and the calls take the single path, which moves on to a
// network's other prefixes.
func TakeBatchIPs(ctx context.Context, tx pgx.Tx, project string, items []*MachineIPs) error {
	type want struct {
		pool string
		v4   bool
		n    int
	}
	prefixesOf := map[string][]Prefix{}
	wants := map[string]*want{}
	var order []string
	for _, it := range items {
		for _, n := range it.Nets {
			ps, ok := prefixesOf[n.GetId()]
			if !ok {
				var err error
				if ps, err = Prefixes(ctx, tx, n); err != nil {
					return err
				}
				prefixesOf[n.GetId()] = ps
			}
			for _, fam := range []int{4, 6} {
				i := slices.IndexFunc(ps, func(p Prefix) bool { return ipam.Family(p.CIDR) == fam })
				if i < 0 {
					continue
				}
				w := wants[ps[i].IPPool]
				if w == nil {
					w = &want{pool: ps[i].IPPool, v4: fam == 4}
					wants[w.pool] = w
					order = append(order, w.pool)
				}
				w.n++
			}
		}
	}
	units := map[string][]string{}
	slices.Sort(order) // pools locked in one order by every batch
	for _, pool := range order {
		w := wants[pool]
		got, err := ipam.AcquireMany(ctx, tx, pool, w.n)
		if err != nil {
			return err
		}
		if len(got) < w.n {
			return ErrShort
		}
		for _, u := range got {
			units[pool] = append(units[pool], ipam.UnitAddr(u, w.v4).String()+"|"+u.String())
		}
	}
	var ips, specs, pools, unitCol, nets, machines []string
	for _, it := range items {
		for _, n := range it.Nets {
			ps := prefixesOf[n.GetId()]
			mn := machineNetwork(n)
			for _, fam := range []int{4, 6} {
				i := slices.IndexFunc(ps, func(p Prefix) bool { return ipam.Family(p.CIDR) == fam })
				if i < 0 {
					continue
				}
				pool := ps[i].IPPool
				addr, unit, _ := cutLast(units[pool][0])
				units[pool] = units[pool][1:]
				ip := &apiv1.IP{Ip: addr, NetworkId: n.GetId(), ProjectId: project, Type: apiv1.IPType_IP_TYPE_EPHEMERAL,
					Name: it.Hostname, Description: "machine " + it.Machine}
				spec, err := store.EncodeSpec(ip)
				if err != nil {
					return err
				}
				ips, specs, pools, unitCol = append(ips, addr), append(specs, string(spec)), append(pools, pool), append(unitCol, unit)
				nets, machines = append(nets, n.GetId()), append(machines, it.Machine)
				mn.Ips = append(mn.Ips, addr)
				it.IPs = append(it.IPs, addr)
			}
			it.Docs = append(it.Docs, mn)
		}
	}
	if len(ips) == 0 {
		return nil
	}
	if _, err := tx.Exec(ctx, `INSERT INTO ips (ip, spec, pool_id, unit, network_id, project_id, type, machine_id)
		SELECT ip, spec::JSONB, pool, unit::NUMERIC, network, $7, 'ephemeral', machine
		FROM unnest($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[]) AS x (ip, spec, pool, unit, network, machine)`,
		ips, specs, pools, unitCol, nets, machines, project); err != nil {
		return fmt.Errorf("store machine ips: %w", err)
	}
	return nil
}

// cutLast splits "a|b" at its last '|'.
func cutLast(s string) (string, string, bool) {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '|' {
			return s[:i], s[i+1:], true
		}
	}
	return s, "", false
}

func mustUnit(s string) *big.Int {
	u, _ := new(big.Int).SetString(s, 10)
	return u
}
