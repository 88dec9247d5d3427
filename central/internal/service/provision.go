package service

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/catalog"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// trust is what installers are told to find and trust central by.
func (a *API) trust() catalog.Trust {
	return catalog.Trust{Centrals: a.cfg.Centrals, CAPin: a.cfg.CAPin}
}

// refreshPixies brings the documents of the partition's PXE services (all
// partitions when partition is "") up to date, inside tx. The fleet finds
// the services and changes their documents; what a document holds is
// catalog.PixieDocument's.
func (a *API) refreshPixies(ctx context.Context, tx pgx.Tx, partition string) error {
	if a.fleet == nil {
		return nil
	}
	return a.fleet.RefreshPixies(ctx, tx, partition, func(ctx context.Context, partition string) (*agentv1.PixieDocument, error) {
		part, err := catalog.Partitions.Get(ctx, tx, partition)
		if err != nil {
			return nil, fmt.Errorf("read partition %s: %w", partition, err)
		}
		return catalog.PixieDocument(a.trust(), part), nil
	})
}

// RefreshPixies updates every PXE service's document; central calls it on
// start, as its advertised addresses or CA may have changed.
func (a *API) RefreshPixies(ctx context.Context) error {
	return a.store.Tx(ctx, func(tx pgx.Tx) error { return a.refreshPixies(ctx, tx, "") })
}
