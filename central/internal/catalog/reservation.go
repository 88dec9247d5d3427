package catalog

import (
	"context"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// SizeReservations reads size reservations as stored; only this package
// writes them (the machine aggregate counts them when it picks).
var SizeReservations = store.Table[*apiv1.SizeReservation]{Name: "size_reservations", New: func() *apiv1.SizeReservation { return &apiv1.SizeReservation{} }}

// maxReservationAmount bounds a reservation's machine count: more than any
// partition holds, and far inside the amount column's INT.
const maxReservationAmount = 100000

func validateSizeReservation(r *apiv1.SizeReservation, create bool) error {
	v := violations()
	if r == nil {
		v.Add("size_reservation", "required")
		return v.Err("")
	}
	if create {
		v.OptionalID("size_reservation.id", r.GetId())
	} else {
		// Ids are client-chosen or server-made UUIDs; both match the id pattern.
		v.ID("size_reservation.id", r.GetId())
	}
	v.ID("size_reservation.size_id", r.GetSizeId())
	v.ID("size_reservation.partition_id", r.GetPartitionId())
	v.UUID("size_reservation.project_id", r.GetProjectId())
	if r.GetAmount() == 0 || r.GetAmount() > maxReservationAmount {
		v.Add("size_reservation.amount", "must be 1-%d", maxReservationAmount)
	}
	v.Text("size_reservation.description", r.GetDescription(), 1024)
	v.Labels("size_reservation.labels", r.GetLabels())
	return v.Err("")
}

// reservationCols are the columns the machine aggregate counts
// reservations by.
func reservationCols(r *apiv1.SizeReservation) []store.Col {
	return []store.Col{{Name: "size_id", Val: r.GetSizeId()}, {Name: "partition_id", Val: r.GetPartitionId()}, {Name: "project_id", Val: r.GetProjectId()}, {Name: "amount", Val: int64(r.GetAmount())}}
}

// CreateSizeReservation checks r, gives it a UUID when it has no id and
// stores it with its audit row, which names its project.
func CreateSizeReservation(ctx context.Context, st *store.Store, r *apiv1.SizeReservation) (*apiv1.SizeReservation, error) {
	if err := validateSizeReservation(r, true); err != nil {
		return nil, err
	}
	if r.GetId() == "" {
		r.Id = uuid.NewString()
	}
	return SizeReservations.Create(ctx, st, r.GetId(), r.GetProjectId(), r, reservationCols(r)...)
}

// UpdateSizeReservation checks r and replaces the stored reservation of
// its id, with its audit row.
func UpdateSizeReservation(ctx context.Context, st *store.Store, r *apiv1.SizeReservation) (*apiv1.SizeReservation, error) {
	if err := validateSizeReservation(r, false); err != nil {
		return nil, err
	}
	return SizeReservations.Replace(ctx, st, r.GetId(), r.GetProjectId(), r, reservationCols(r)...)
}

// DeleteSizeReservation deletes the reservation with its audit row, which
// names the project the reservation belonged to.
func DeleteSizeReservation(ctx context.Context, st *store.Store, id string) (*apiv1.SizeReservation, error) {
	var out *apiv1.SizeReservation
	err := st.Tx(ctx, func(tx pgx.Tx) error {
		var err error
		if out, err = SizeReservations.Delete(ctx, tx, id); err != nil {
			return err
		}
		return store.Audit(ctx, tx, SizeReservations.Kind()+"/"+id, out.GetProjectId())
	})
	return out, err
}

// ListSizeReservations reads the reservations of project, of every
// project when it is "", by id.
func ListSizeReservations(ctx context.Context, db store.Querier, project string) ([]*apiv1.SizeReservation, error) {
	return SizeReservations.List(ctx, db, "($1 = '' OR project_id = $1)", project)
}
