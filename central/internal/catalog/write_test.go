package catalog_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/catalog"
	"github.com/metalfleet/metalfleet/central/internal/store"
	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// audits are the audit rows written so far, "target project" each, oldest first.
func audits(ctx context.Context, t *testing.T, st *store.Store) []string {
	t.Helper()
	rows, err := st.Pool().Query(ctx, `SELECT target, COALESCE(project_id, '') FROM audit ORDER BY at, id`)
	if err != nil {
		t.Fatal(err)
	}
	pairs, err := store.TextPairs(rows)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range pairs {
		out = append(out, strings.TrimSpace(p[0]+" "+p[1]))
	}
	return out
}

func TestCatalogueWrites(t *testing.T) {
	ctx, st := newStore(t)

	// Invalid objects are refused before anything is stored.
	if _, err := catalog.CreatePartition(ctx, st, &apiv1.Partition{Id: "Fra 1"}); status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(err.Error(), "partition.id") {
		t.Fatalf("CreatePartition(bad id) = %v, want InvalidArgument naming partition.id", err)
	}
	if _, err := catalog.CreateSize(ctx, st, &apiv1.Size{Id: "s1"}); status.Code(err) != codes.InvalidArgument ||
		!strings.Contains(err.Error(), "size.constraints") {
		t.Fatalf("CreateSize(no constraints) = %v, want InvalidArgument naming size.constraints", err)
	}
	if got := audits(ctx, t, st); len(got) != 0 {
		t.Fatalf("refused writes left audit rows %v", got)
	}

	if _, err := catalog.CreatePartition(ctx, st, &apiv1.Partition{Id: "p1"}); err != nil {
		t.Fatal(err)
	}
	if err := catalog.PartitionExists(ctx, st.Pool(), "partition_id", "p1"); err != nil {
		t.Fatalf("PartitionExists(p1) = %v", err)
	}
	err := catalog.PartitionExists(ctx, st.Pool(), "partition_id", "nope")
	if status.Code(err) != codes.NotFound || status.Convert(err).Message() != `partition_id: partition "nope" not found` {
		t.Fatalf("PartitionExists(nope) = %v", err)
	}

	if _, err := catalog.CreateSize(ctx, st, &apiv1.Size{Id: "s1", Constraints: []*apiv1.SizeConstraint{
		{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, Min: 1, Max: 8}}}); err != nil {
		t.Fatal(err)
	}
	if id, err := catalog.MatchSize(ctx, st.Pool(), &agentv1.MachineFacts{Cores: 4}); err != nil || id != "s1" {
		t.Fatalf("MatchSize = %q, %v; want s1", id, err)
	}

	// Images get their defaults.
	im, err := catalog.CreateImage(ctx, st, &apiv1.Image{Id: "debian-12", Os: "debian", Version: "12.0.0",
		Url: "https://images.example/debian.tar.zst", Sha256: strings.Repeat("0", 64)})
	if err != nil {
		t.Fatal(err)
	}
	if im.GetClassification() != apiv1.ImageClassification_IMAGE_CLASSIFICATION_PREVIEW ||
		!slices.Equal(im.GetFeatures(), []apiv1.ImageFeature{apiv1.ImageFeature_IMAGE_FEATURE_MACHINE}) {
		t.Fatalf("image defaults: %v", im)
	}
	if err := st.Tx(ctx, func(tx pgx.Tx) error {
		_, err := catalog.UsableImage(ctx, tx, "debian-12")
		return err
	}); err != nil {
		t.Fatalf("UsableImage = %v", err)
	}
	if got, err := catalog.LatestImage(ctx, st.Pool(), "debian", false); err != nil || got.GetId() != "debian-12" {
		t.Fatalf("LatestImage = %v, %v", got, err)
	}
	if _, err := catalog.LatestImage(ctx, st.Pool(), "alpine", false); status.Code(err) != codes.NotFound {
		t.Fatalf("LatestImage(alpine) = %v, want NotFound", err)
	}

	// A reservation's audit rows name its project, the delete's too.
	project := uuid.NewString()
	for _, q := range []string{`INSERT INTO tenants (id, spec) VALUES ('t1', '{}')`,
		`INSERT INTO projects (id, tenant_id, name, spec) VALUES ('` + project + `', 't1', 'p', '{}')`} {
		if _, err := st.Pool().Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	r, err := catalog.CreateSizeReservation(ctx, st, &apiv1.SizeReservation{SizeId: "s1", PartitionId: "p1", ProjectId: project, Amount: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := uuid.Parse(r.GetId()); err != nil {
		t.Fatalf("reservation without an id got %q, want a UUID", r.GetId())
	}
	del, err := catalog.DeleteSizeReservation(ctx, st, r.GetId())
	if err != nil || del.GetAmount() != 2 {
		t.Fatalf("DeleteSizeReservation = %v, %v", del, err)
	}
	if _, err := catalog.DeleteSizeReservation(ctx, st, r.GetId()); !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("second DeleteSizeReservation = %v, want no rows", err)
	}
	want := []string{"partition/p1", "size/s1", "image/debian-12", "size-reservation/" + r.GetId() + " " + project, "size-reservation/" + r.GetId() + " " + project}
	if got := audits(ctx, t, st); !slices.Equal(got, want) {
		t.Fatalf("audit rows\n%q\nwant\n%q", got, want)
	}
}
