package catalog

import (
	"context"
	"encoding/hex"
	"errors"
	"net/url"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/auth"
	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

// Images reads images as stored; only this package writes them.
var Images = store.Table[*apiv1.Image]{Name: "images", New: func() *apiv1.Image { return &apiv1.Image{} }}

func validateImage(im *apiv1.Image) error {
	v := violations()
	if im == nil {
		v.Add("image", "required")
		return v.Err("")
	}
	v.ID("image.id", im.GetId())
	v.ID("image.os", im.GetOs())
	if _, ok := parseSemver(im.GetVersion()); !ok {
		v.Add("image.version", "must be a semantic version like 12.0.0")
	}
	if u, err := url.Parse(im.GetUrl()); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		v.Add("image.url", "must be an http(s) URL")
	}
	if b, err := hex.DecodeString(im.GetSha256()); err != nil || len(b) != 32 || strings.ToLower(im.GetSha256()) != im.GetSha256() {
		v.Add("image.sha256", "must be 64 lower-case hex digits")
	}
	v.Text("image.name", im.GetName(), 128)
	v.Text("image.description", im.GetDescription(), 1024)
	v.Labels("image.labels", im.GetLabels())
	return v.Err("")
}

// imageCols are the columns images are listed by.
func imageCols(im *apiv1.Image) []store.Col {
	return []store.Col{{Name: "os", Val: im.GetOs()}, {Name: "version", Val: im.GetVersion()}}
}

// imageDefaults fill what a caller may leave out.
func imageDefaults(im *apiv1.Image) {
	if im.GetClassification() == apiv1.ImageClassification_IMAGE_CLASSIFICATION_UNSPECIFIED {
		im.Classification = apiv1.ImageClassification_IMAGE_CLASSIFICATION_PREVIEW
	}
	if len(im.GetFeatures()) == 0 {
		im.Features = []apiv1.ImageFeature{apiv1.ImageFeature_IMAGE_FEATURE_MACHINE}
	}
}

// CreateImage checks im, fills its defaults (preview, for machines) and
// stores it with its audit row.
func CreateImage(ctx context.Context, st *store.Store, im *apiv1.Image) (*apiv1.Image, error) {
	if err := validateImage(im); err != nil {
		return nil, err
	}
	imageDefaults(im)
	return Images.Create(ctx, st, im.GetId(), "", im, imageCols(im)...)
}

// UpdateImage checks im, fills its defaults and replaces the stored image
// of its id, with its audit row.
func UpdateImage(ctx context.Context, st *store.Store, im *apiv1.Image) (*apiv1.Image, error) {
	if err := validateImage(im); err != nil {
		return nil, err
	}
	imageDefaults(im)
	return Images.Replace(ctx, st, im.GetId(), "", im, imageCols(im)...)
}

// DeleteImage deletes the image with its audit row.
func DeleteImage(ctx context.Context, st *store.Store, id string) (*apiv1.Image, error) {
	return Images.Remove(ctx, st, id, "")
}

// ListImages reads the images of os, of every os when it is "", by id.
func ListImages(ctx context.Context, db store.Querier, os string) ([]*apiv1.Image, error) {
	return Images.List(ctx, db, "($1 = '' OR os = $1)", os)
}

// LatestImage is the highest version of os that has not expired, leaving
// deprecated images out unless asked; NotFound when there is none.
func LatestImage(ctx context.Context, db store.Querier, os string, includeDeprecated bool) (*apiv1.Image, error) {
	all, err := Images.List(ctx, db, "os = $1", os)
	if err != nil {
		return nil, err
	}
	best := latest(all, includeDeprecated, time.Now())
	if best == nil {
		return nil, status.Errorf(codes.NotFound, "no usable image of os %s", auth.Quote(os))
	}
	return best, nil
}

// latest is LatestImage over all at now; nil when no image qualifies.
func latest(all []*apiv1.Image, includeDeprecated bool, now time.Time) *apiv1.Image {
	var best *apiv1.Image
	var bestV semver
	for _, im := range all {
		if im.GetExpiresAt() != nil && im.GetExpiresAt().AsTime().Before(now) {
			continue
		}
		if im.GetClassification() == apiv1.ImageClassification_IMAGE_CLASSIFICATION_DEPRECATED && !includeDeprecated {
			continue
		}
		v, ok := parseSemver(im.GetVersion())
		if ok && (best == nil || bestV.less(v)) {
			best, bestV = im, v
		}
	}
	return best
}

// UsableImage reads an image new machines may get: it exists, has not
// expired and names where to fetch it and its checksum. Machine's
// allocation and reinstall read it inside their transaction.
func UsableImage(ctx context.Context, tx pgx.Tx, id string) (*apiv1.Image, error) {
	img, err := Images.Get(ctx, tx, id)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "image %s not found", auth.Quote(id))
	}
	if err != nil {
		return nil, err
	}
	if e := img.GetExpiresAt(); e != nil && e.AsTime().Before(time.Now()) {
		return nil, status.Errorf(codes.FailedPrecondition, "image %q expired on %s", id, e.AsTime().Format(time.DateOnly))
	}
	if img.GetUrl() == "" || img.GetSha256() == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "image %q has no url or sha256", id)
	}
	return img, nil
}
