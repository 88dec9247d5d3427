// Package catalog is the catalogue of what machines are made of and from:
// partitions, sizes, size reservations, images and filesystem layouts. It
// is the only writer of their tables, and it decides what a valid object
// of each is: every create and update checks the object first and answers
// InvalidArgument naming every bad field, as the people API reports them.
// Beside the writes it answers the catalogue questions other parts ask:
// which size facts belong to (MatchSize, SizeOf), which image is usable or
// latest (UsableImage, LatestImage), which layout a machine gets
// (ChooseLayout) and whether a partition exists (PartitionExists).
//
// Domain refusals are gRPC statuses (NotFound, FailedPrecondition); store
// errors come back as they are, for the caller to map.
package catalog

import (
	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/field"
)

// violations collects the bad fields of one object, clipped and quoted as
// the people API's request validation does: an object's fields arrive in
// a request, and its violations must read the same.
func violations() field.Violations {
	return field.Violations{Clip: auth.ClipEcho, Quote: auth.Quote}
}
