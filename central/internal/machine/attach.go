package machine

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// IssueSingleAttach is the issue of a machine that is not linked to two
// switches of its partition: registered, but not allocatable.
const IssueSingleAttach = "not-dual-attached"

// dualAttached: a machine is allocatable only when LLDP on its NICs sees
// two different switches of its partition (DESIGN.md §5; metal-stack:
// "servers cannot be allocated until they are dual attached"), unless the
// partition allows single attachment.
func dualAttached(ctx context.Context, tx pgx.Tx, c Candidate) error {
	m := c.Machine
	var names []string
	for _, n := range m.GetHardware().GetNics() {
		for _, nb := range n.GetNeighbours() {
			names = append(names, nb.GetSystemName())
		}
	}
	// One round trip per candidate: the partition's setting (the catalog's
	// spec, as stored) and which of the neighbours are its switches.
	var single bool
	var switches []string
	if err := tx.QueryRow(ctx, `SELECT
			COALESCE((SELECT (spec->>'allowSingleAttach')::bool FROM partitions WHERE id = $1), false),
			ARRAY(SELECT id FROM switches WHERE partition_id = $1 AND id = ANY($2))`,
		m.GetPartitionId(), names).Scan(&single, &switches); err != nil {
		return fmt.Errorf("dual attachment of %s: %w", m.GetId(), err)
	}
	a := attachment{switches: map[string]string{}, single: map[string]bool{m.GetPartitionId(): single}}
	for _, sw := range switches {
		a.switches[sw] = m.GetPartitionId()
	}
	if msg := a.issue(m); msg != "" {
		return errors.New(msg)
	}
	return nil
}

// attachment is what the dual-attach rule needs to know of partitions:
// the switches of each, and whether it allows single attachment.
type attachment struct {
	switches map[string]string // switch id → partition
	single   map[string]bool   // partition → allows single attachment
}

// readAttachment reads the switches and settings of partition ("" : all).
func readAttachment(ctx context.Context, db store.Querier, partition string) (attachment, error) {
	a := attachment{switches: map[string]string{}, single: map[string]bool{}}
	rows, err := db.Query(ctx, `SELECT id, COALESCE(partition_id, '') FROM switches WHERE ($1 = '' OR partition_id = $1)`, partition)
	if err != nil {
		return a, fmt.Errorf("read switches: %w", err)
	}
	for rows.Next() {
		var id, p string
		if err := rows.Scan(&id, &p); err != nil {
			rows.Close()
			return a, err
		}
		a.switches[id] = p
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return a, fmt.Errorf("read switches: %w", err)
	}
	parts, err := catalog.Partitions.List(ctx, db, "($1 = '' OR id = $1)", partition)
	if err != nil {
		return a, fmt.Errorf("read partitions: %w", err)
	}
	for _, p := range parts {
		a.single[p.GetId()] = p.GetAllowSingleAttach()
	}
	return a, nil
}

// issue says why m is not dual attached; "" when it is, when its
// partition allows single attachment, or before it reported hardware.
func (a attachment) issue(m *apiv1.Machine) string {
	if m.GetHardware() == nil || a.single[m.GetPartitionId()] {
		return ""
	}
	seen := map[string][]string{} // switch → "nic port"
	var unlinked []string
	for _, n := range m.GetHardware().GetNics() {
		linked := false
		for _, nb := range n.GetNeighbours() {
			sw := nb.GetSystemName()
			if p, ok := a.switches[sw]; ok && p == m.GetPartitionId() {
				seen[sw] = append(seen[sw], n.GetName()+"→"+nb.GetPortId())
				linked = true
			}
		}
		if !linked {
			unlinked = append(unlinked, n.GetName())
		}
	}
	if len(seen) >= 2 {
		return ""
	}
	var links []string
	for sw, via := range seen {
		links = append(links, sw+" ("+strings.Join(via, ", ")+")")
	}
	slices.Sort(links)
	have := "no switch of partition " + m.GetPartitionId()
	if len(links) > 0 {
		have = "only " + strings.Join(links, ", ")
	}
	missing := "no NIC without a switch link is left to carry the second link"
	if len(unlinked) > 0 {
		missing = "LLDP shows no switch of the partition on " + strings.Join(unlinked, ", ")
	}
	return fmt.Sprintf("not dual attached: linked to %s; a machine needs links to two different switches: %s", have, missing)
}
