package frr

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/metalfleet/metalfleet/agents/metalcore/internal/spec"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// neighborsCommand asks bgpd for every neighbour of every VRF. With BGP
// unnumbered a neighbour's key is its interface, so no mapping from
// addresses to ports is needed.
const neighborsCommand = "show bgp vrf all neighbors json"

// maxNeighborsJSON bounds what is parsed: a leaf has a few hundred
// sessions at most, each a few KiB.
const maxNeighborsJSON = 64 << 20

// BGP reads bgpd's sessions live: over bgpd's vty socket, as vtysh
// itself asks, and through vtysh when the socket cannot be reached (FRR
// in another container or namespace, VTY.Dir "").
type BGP struct {
	VTY    VTY
	Vtysh  string // default "vtysh"
	Runner Runner
}

// Sessions reads the BGP sessions from FRR now; via says how ("vty" or
// "vtysh").
func (b BGP) Sessions(ctx context.Context) (sessions []*agentv1.BgpSessionFact, via string, err error) {
	var unreachable error
	if b.VTY.Dir != "" {
		out, err := b.VTY.Query(ctx, "bgpd", neighborsCommand, maxNeighborsJSON)
		if err == nil {
			s, err := ParseNeighbors(out)
			return s, "vty", err
		}
		if !errors.Is(err, ErrVTYUnavailable) || b.Runner == nil {
			return nil, "vty", fmt.Errorf("bgp sessions: %w", err)
		}
		unreachable = err
	}
	vtysh := cmp.Or(b.Vtysh, "vtysh")
	out, err := b.Runner.Run(ctx, vtysh, "-c", neighborsCommand)
	if err != nil {
		return nil, "vtysh", fmt.Errorf("bgp sessions: %w", errors.Join(unreachable, err))
	}
	s, err := ParseNeighbors(out)
	return s, "vtysh", err
}

// neighbor is what is read of one neighbour of FRR's JSON.
type neighbor struct {
	RemoteAs          json.Number                `json:"remoteAs"`
	Hostname          string                     `json:"hostname"`
	PeerGroup         string                     `json:"peerGroup"`
	BgpState          string                     `json:"bgpState"`
	EstablishedEpoch  json.Number                `json:"bgpTimerUpEstablishedEpoch"`
	AddressFamilyInfo map[string]json.RawMessage `json:"addressFamilyInfo"`
}

type familyInfo struct {
	Accepted json.Number `json:"acceptedPrefixCounter"`
	Sent     json.Number `json:"sentPrefixCounter"`
}

// states maps FRR's state names (bgp_status_msg) to the proto's.
func state(s string) agentv1.BgpState {
	switch s {
	case "Idle":
		return agentv1.BgpState_BGP_STATE_IDLE
	case "Connect":
		return agentv1.BgpState_BGP_STATE_CONNECT
	case "Active":
		return agentv1.BgpState_BGP_STATE_ACTIVE
	case "OpenSent":
		return agentv1.BgpState_BGP_STATE_OPEN_SENT
	case "OpenConfirm":
		return agentv1.BgpState_BGP_STATE_OPEN_CONFIRM
	case "Established":
		return agentv1.BgpState_BGP_STATE_ESTABLISHED
	}
	return agentv1.BgpState_BGP_STATE_UNSPECIFIED
}

// ParseNeighbors reads the output of "show bgp vrf all neighbors json":
// {vrf: {vrfId, vrfName, <neighbour>: {…}}}. Entries that are not
// neighbours are skipped; the sessions come sorted by VRF and port.
func ParseNeighbors(b []byte) ([]*agentv1.BgpSessionFact, error) {
	if len(b) > maxNeighborsJSON {
		return nil, fmt.Errorf("bgp neighbours: %d bytes, more than %d", len(b), maxNeighborsJSON)
	}
	b = bytes.TrimSpace(b)
	if len(b) == 0 {
		// bgpd without any instance answers nothing.
		return nil, nil
	}
	var vrfs map[string]map[string]json.RawMessage
	if err := json.Unmarshal(b, &vrfs); err != nil {
		return nil, fmt.Errorf("bgp neighbours: %w", err)
	}
	var out []*agentv1.BgpSessionFact
	for vrfKey, entries := range vrfs {
		vrf := vrfKey
		if raw, ok := entries["vrfName"]; ok {
			var name string
			if json.Unmarshal(raw, &name) == nil && name != "" {
				vrf = name
			}
		}
		if vrf == "" {
			continue
		}
		for key, raw := range entries {
			if key == "" || key == "vrfId" || key == "vrfName" || len(raw) == 0 || raw[0] != '{' {
				continue
			}
			var n neighbor
			if err := json.Unmarshal(raw, &n); err != nil {
				return nil, fmt.Errorf("bgp neighbours: vrf %s neighbour %s: %w", vrf, key, err)
			}
			s := &agentv1.BgpSessionFact{Port: key, Vrf: vrf, PeerGroup: n.PeerGroup, State: state(n.BgpState),
				RemoteAs: uint32Of(n.RemoteAs), RemoteHostname: n.Hostname}
			if s.State == agentv1.BgpState_BGP_STATE_ESTABLISHED {
				if e, err := n.EstablishedEpoch.Int64(); err == nil && e > 0 && e < math.MaxInt32*4 {
					s.EstablishedSince = timestamppb.New(time.Unix(e, 0))
				}
			}
			for _, fam := range slices.Sorted(mapKeys(n.AddressFamilyInfo)) {
				var fi familyInfo
				if err := json.Unmarshal(n.AddressFamilyInfo[fam], &fi); err != nil {
					continue
				}
				s.AddressFamilies = append(s.AddressFamilies, &agentv1.BgpAddressFamilyFact{
					Name: fam, PrefixesSent: uint64Of(fi.Sent), PrefixesAccepted: uint64Of(fi.Accepted),
				})
			}
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b *agentv1.BgpSessionFact) int {
		if c := cmp.Compare(a.Vrf, b.Vrf); c != 0 {
			return c
		}
		return spec.ComparePorts(a.Port, b.Port)
	})
	return out, nil
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func uint32Of(n json.Number) uint32 {
	v, err := n.Int64()
	if err != nil || v < 0 || v > math.MaxUint32 {
		return 0
	}
	return uint32(v)
}

func uint64Of(n json.Number) uint64 {
	v, err := n.Int64()
	if err != nil || v < 0 {
		return 0
	}
	return uint64(v)
}
