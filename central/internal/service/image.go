package service

import (
	"context"
	"encoding/hex"
	"net/url"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/metalfleet/metalfleet/central/internal/store"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

type imageService struct {
	*API
	apiv1.UnimplementedImageServiceServer
}

var images = store.Table[*apiv1.Image]{Name: "images", New: func() *apiv1.Image { return &apiv1.Image{} }}

func validateImage(im *apiv1.Image) error {
	var v violations
	if im == nil {
		v.add("image", "required")
		return v.err()
	}
	v.id("image.id", im.GetId())
	v.id("image.os", im.GetOs())
	if _, ok := parseSemver(im.GetVersion()); !ok {
		v.add("image.version", "must be a semantic version like 12.0.0")
	}
	if u, err := url.Parse(im.GetUrl()); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		v.add("image.url", "must be an http(s) URL")
	}
	if b, err := hex.DecodeString(im.GetSha256()); err != nil || len(b) != 32 || strings.ToLower(im.GetSha256()) != im.GetSha256() {
		v.add("image.sha256", "must be 64 lower-case hex digits")
	}
	v.text("image.name", im.GetName(), 128)
	v.text("image.description", im.GetDescription(), 1024)
	v.labels("image.labels", im.GetLabels())
	return v.err()
}

func imageCols(im *apiv1.Image) []store.Col {
	return []store.Col{{Name: "os", Val: im.GetOs()}, {Name: "version", Val: im.GetVersion()}}
}

// defaults fill what a caller may leave out.
func imageDefaults(im *apiv1.Image) {
	if im.GetClassification() == apiv1.ImageClassification_IMAGE_CLASSIFICATION_UNSPECIFIED {
		im.Classification = apiv1.ImageClassification_IMAGE_CLASSIFICATION_PREVIEW
	}
	if len(im.GetFeatures()) == 0 {
		im.Features = []apiv1.ImageFeature{apiv1.ImageFeature_IMAGE_FEATURE_MACHINE}
	}
}

func (s *imageService) Create(ctx context.Context, req *apiv1.ImageServiceCreateRequest) (*apiv1.ImageServiceCreateResponse, error) {
	if err := validateImage(req.GetImage()); err != nil {
		return nil, err
	}
	imageDefaults(req.GetImage())
	out, err := create(ctx, s.API, images, req.GetImage().GetId(), "", req.GetImage(), imageCols(req.GetImage())...)
	if err != nil {
		return nil, err
	}
	return &apiv1.ImageServiceCreateResponse{Image: out}, nil
}

func (s *imageService) Get(ctx context.Context, req *apiv1.ImageServiceGetRequest) (*apiv1.ImageServiceGetResponse, error) {
	out, err := fetch(ctx, s.API, images, req.GetId())
	if err != nil {
		return nil, err
	}
	return &apiv1.ImageServiceGetResponse{Image: out}, nil
}

func (s *imageService) List(ctx context.Context, req *apiv1.ImageServiceListRequest) (*apiv1.ImageServiceListResponse, error) {
	out, err := images.List(ctx, s.store.Pool(), "($1 = '' OR os = $1)", req.GetOs())
	if err != nil {
		return nil, toStatus(err, "images")
	}
	return &apiv1.ImageServiceListResponse{Images: out}, nil
}

func (s *imageService) Update(ctx context.Context, req *apiv1.ImageServiceUpdateRequest) (*apiv1.ImageServiceUpdateResponse, error) {
	if err := validateImage(req.GetImage()); err != nil {
		return nil, err
	}
	imageDefaults(req.GetImage())
	out, err := replace(ctx, s.API, images, req.GetImage().GetId(), "", req.GetImage(), imageCols(req.GetImage())...)
	if err != nil {
		return nil, err
	}
	return &apiv1.ImageServiceUpdateResponse{Image: out}, nil
}

func (s *imageService) Delete(ctx context.Context, req *apiv1.ImageServiceDeleteRequest) (*apiv1.ImageServiceDeleteResponse, error) {
	out, err := remove(ctx, s.API, images, req.GetId(), "")
	if err != nil {
		return nil, err
	}
	return &apiv1.ImageServiceDeleteResponse{Image: out}, nil
}

// Latest picks the highest version of the OS that has not expired, leaving
// deprecated images out unless asked.
func (s *imageService) Latest(ctx context.Context, req *apiv1.ImageServiceLatestRequest) (*apiv1.ImageServiceLatestResponse, error) {
	if req.GetOs() == "" {
		var v violations
		v.add("os", "required")
		return nil, v.err()
	}
	all, err := images.List(ctx, s.store.Pool(), "os = $1", req.GetOs())
	if err != nil {
		return nil, toStatus(err, "images")
	}
	now := time.Now()
	var best *apiv1.Image
	var bestV semver
	for _, im := range all {
		if im.GetExpiresAt() != nil && im.GetExpiresAt().AsTime().Before(now) {
			continue
		}
		if im.GetClassification() == apiv1.ImageClassification_IMAGE_CLASSIFICATION_DEPRECATED && !req.GetIncludeDeprecated() {
			continue
		}
		v, ok := parseSemver(im.GetVersion())
		if ok && (best == nil || bestV.less(v)) {
			best, bestV = im, v
		}
	}
	if best == nil {
		return nil, status.Errorf(codes.NotFound, "no usable image of os %s", quote(req.GetOs()))
	}
	return &apiv1.ImageServiceLatestResponse{Image: best}, nil
}

// semver is major.minor.patch with an optional pre-release, which sorts first.
type semver struct {
	major, minor, patch uint64
	pre                 string
}

func parseSemver(s string) (semver, bool) {
	s = strings.TrimPrefix(s, "v")
	// Build metadata goes first: it may contain '-' and is not a pre-release.
	s, _, _ = strings.Cut(s, "+")
	core, pre, _ := strings.Cut(s, "-")
	parts := strings.Split(core, ".")
	if len(parts) < 1 || len(parts) > 3 {
		return semver{}, false
	}
	var n [3]uint64
	for i, p := range parts {
		v, err := strconv.ParseUint(p, 10, 64)
		if err != nil || (len(p) > 1 && p[0] == '0') {
			return semver{}, false
		}
		n[i] = v
	}
	return semver{n[0], n[1], n[2], pre}, true
}

func (a semver) less(b semver) bool {
	if a.major != b.major {
		return a.major < b.major
	}
	if a.minor != b.minor {
		return a.minor < b.minor
	}
	if a.patch != b.patch {
		return a.patch < b.patch
	}
	switch {
	case a.pre == b.pre:
		return false
	case a.pre == "":
		return false
	case b.pre == "":
		return true
	}
	return preLess(a.pre, b.pre)
}

// preLess orders pre-releases as semver does: identifier by identifier,
// numeric ones as numbers and below alphanumeric ones, a prefix first.
func preLess(a, b string) bool {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(as) && i < len(bs); i++ {
		if as[i] == bs[i] {
			continue
		}
		an, aErr := strconv.ParseUint(as[i], 10, 64)
		bn, bErr := strconv.ParseUint(bs[i], 10, 64)
		switch {
		case aErr == nil && bErr == nil:
			return an < bn
		case aErr == nil || bErr == nil:
			return aErr == nil
		}
		return as[i] < bs[i]
	}
	return len(as) < len(bs)
}
