package catalog

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func TestLatest(t *testing.T) {
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	image := func(id, version string, edit ...func(*apiv1.Image)) *apiv1.Image {
		im := &apiv1.Image{Id: id, Os: "debian", Version: version}
		for _, e := range edit {
			e(im)
		}
		return im
	}
	expired := func(im *apiv1.Image) { im.ExpiresAt = timestamppb.New(now.Add(-time.Hour)) }
	expiring := func(im *apiv1.Image) { im.ExpiresAt = timestamppb.New(now.Add(time.Hour)) }
	deprecated := func(im *apiv1.Image) {
		im.Classification = apiv1.ImageClassification_IMAGE_CLASSIFICATION_DEPRECATED
	}
	tests := []struct {
		name       string
		all        []*apiv1.Image
		deprecated bool
		want       string // "" for none
	}{
		{"none", nil, false, ""},
		{"highest version, not the last listed", []*apiv1.Image{image("a", "12.10.0"), image("b", "12.9.0"), image("c", "12.2.0")}, false, "a"},
		{"major before minor", []*apiv1.Image{image("a", "9.99.99"), image("b", "10.0.0")}, false, "b"},
		{"release above its pre-release", []*apiv1.Image{image("a", "13.0.0"), image("b", "13.0.0-rc.1")}, false, "a"},
		{"pre-release above the release before", []*apiv1.Image{image("a", "12.0.0"), image("b", "13.0.0-rc.1")}, false, "b"},
		{"expired left out", []*apiv1.Image{image("a", "12.0.0"), image("b", "13.0.0", expired)}, false, "a"},
		{"not yet expired kept", []*apiv1.Image{image("a", "12.0.0"), image("b", "13.0.0", expiring)}, false, "b"},
		{"only expired", []*apiv1.Image{image("a", "12.0.0", expired)}, false, ""},
		{"deprecated left out", []*apiv1.Image{image("a", "12.0.0"), image("b", "13.0.0", deprecated)}, false, "a"},
		{"deprecated when asked", []*apiv1.Image{image("a", "12.0.0"), image("b", "13.0.0", deprecated)}, true, "b"},
		{"unparsable versions left out", []*apiv1.Image{image("a", "latest"), image("b", "1.0.0")}, false, "b"},
		{"equal versions keep the first", []*apiv1.Image{image("a", "1.0.0"), image("b", "v1.0.0+rebuild")}, false, "a"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := latest(tt.all, tt.deprecated, now).GetId(); got != tt.want {
				t.Fatalf("latest = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestValidateImage(t *testing.T) {
	good := func() *apiv1.Image {
		return &apiv1.Image{Id: "debian-12", Os: "debian", Version: "12.0.0", Url: "https://images.example/debian.tar.zst", Sha256: strings.Repeat("ab", 32)}
	}
	tests := []struct {
		name  string
		edit  func(*apiv1.Image)
		field string // "" for valid
	}{
		{"valid", func(*apiv1.Image) {}, ""},
		{"bad version", func(im *apiv1.Image) { im.Version = "twelve" }, "image.version"},
		{"ftp url", func(im *apiv1.Image) { im.Url = "ftp://images.example/debian" }, "image.url"},
		{"upper-case sha256", func(im *apiv1.Image) { im.Sha256 = strings.Repeat("AB", 32) }, "image.sha256"},
		{"short sha256", func(im *apiv1.Image) { im.Sha256 = "abcd" }, "image.sha256"},
		{"bad os", func(im *apiv1.Image) { im.Os = "Debian" }, "image.os"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			im := good()
			tt.edit(im)
			err := validateImage(im)
			if tt.field == "" {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), "rpc error: code = InvalidArgument desc = "+tt.field+":") {
				t.Fatalf("error %v does not name %s first", err, tt.field)
			}
		})
	}
}
