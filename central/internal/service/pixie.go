package service

import (
	"context"
	"fmt"

	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// The documents of the partitions' PXE services: the fleet finds the
// services and changes their documents in its transaction; what a
// document holds is catalog.PixieDocument's.

// trust is what installers are told to find and trust central by.
func (a *API) trust() catalog.Trust {
	return catalog.Trust{Centrals: a.cfg.Centrals, CAPin: a.cfg.CAPin}
}

// pixieDocument is the fleet.PixieDocument of partition, read in q.
func (a *API) pixieDocument(ctx context.Context, q store.Querier, partition string) (*agentv1.PixieDocument, error) {
	part, err := catalog.Partitions.Get(ctx, q, partition)
	if err != nil {
		return nil, fmt.Errorf("read partition %s: %w", partition, err)
	}
	return catalog.PixieDocument(a.trust(), part), nil
}

// refreshPixies brings the documents of the partition's PXE services (all
// partitions when partition is "") up to date.
func (a *API) refreshPixies(ctx context.Context, partition string) error {
	if a.fleet == nil {
		return nil
	}
	return a.fleet.RefreshPixies(ctx, partition, a.pixieDocument)
}

// RefreshPixies updates every PXE service's document; central calls it on
// start, as its advertised addresses or CA may have changed.
func (a *API) RefreshPixies(ctx context.Context) error { return a.refreshPixies(ctx, "") }
