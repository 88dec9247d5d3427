package server_test

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func wantGeneration(t testing.TB, m interface{ GetMeta() *apiv1.Meta }, want uint64) {
	t.Helper()
	meta := m.GetMeta()
	if meta.GetGeneration() != want || meta.GetCreatedAt() == nil || meta.GetUpdatedAt() == nil {
		t.Fatalf("meta = %v, want generation %d with times", meta, want)
	}
}

func TestPartitions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := e.as(t, e.admin)
	api := e.api.Partition
	p := &apiv1.Partition{
		Id: "fra1", Name: "Frankfurt 1", Region: "eu-central",
		Boot:       &apiv1.PartitionBootConfig{KernelUrl: "https://boot.example/vmlinuz", InitramfsUrl: "http://boot.example/initrd", Cmdline: "console=ttyS0"},
		DnsServers: []string{"192.0.2.53", "2001:db8::53"}, NtpServers: []string{"pool.ntp.org"},
		Labels: map[string]string{"dc": "a"},
	}
	created := ok(api.Create(ctx, &apiv1.PartitionServiceCreateRequest{Partition: p}))(t).GetPartition()
	wantGeneration(t, created, 1)
	got := ok(api.Get(ctx, &apiv1.PartitionServiceGetRequest{Id: "fra1"}))(t).GetPartition()
	if got.GetRegion() != "eu-central" || got.GetBoot().GetCmdline() != "console=ttyS0" || len(got.GetDnsServers()) != 2 || got.GetLabels()["dc"] != "a" {
		t.Fatalf("Get = %v", got)
	}
	ok(api.Create(ctx, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "ams1"}}))(t)
	list := ok(api.List(ctx, &apiv1.PartitionServiceListRequest{}))(t).GetPartitions()
	if len(list) != 2 || list[0].GetId() != "ams1" || list[1].GetId() != "fra1" {
		t.Fatalf("List = %v", list)
	}
	// Every authenticated caller may read partitions.
	ok(api.Get(e.as(t, e.p2Editor), &apiv1.PartitionServiceGetRequest{Id: "fra1"}))(t)

	p.Region = "eu-west"
	upd := ok(api.Update(ctx, &apiv1.PartitionServiceUpdateRequest{Partition: p}))(t).GetPartition()
	wantGeneration(t, upd, 2)
	if upd.GetRegion() != "eu-west" {
		t.Fatalf("Update = %v", upd)
	}

	// A network in fra1 keeps it from being deleted.
	ok(e.api.Network.Create(ctx, &apiv1.NetworkServiceCreateRequest{Network: &apiv1.Network{
		Id: "fra1-underlay", Type: apiv1.NetworkType_NETWORK_TYPE_UNDERLAY, PartitionId: "fra1", Prefixes: []string{"10.0.0.0/24"},
	}}))(t)

	e.rejectAll(t, e.admin, []reject{
		{name: "create nil", field: "partition", call: call(api.Create, &apiv1.PartitionServiceCreateRequest{})},
		{name: "create bad id", field: "partition.id", call: call(api.Create, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "Fra 1"}})},
		{name: "create no id", field: "partition.id", call: call(api.Create, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Name: "x"}})},
		{name: "create bad kernel url", field: "partition.boot.kernel_url", call: call(api.Create, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "x1", Boot: &apiv1.PartitionBootConfig{KernelUrl: "ftp://boot/vmlinuz"}}})},
		{name: "create bad dns", field: "partition.dns_servers[1]", call: call(api.Create, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "x1", DnsServers: []string{"192.0.2.1", "dns.example"}}})},
		{name: "create long region", field: "partition.region", call: call(api.Create, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "x1", Region: strings.Repeat("r", 64)}})},
		{name: "create duplicate", code: codes.AlreadyExists, call: call(api.Create, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "fra1"}})},
		{name: "get missing", code: codes.NotFound, call: call(api.Get, &apiv1.PartitionServiceGetRequest{Id: "nope"})},
		{name: "update missing", code: codes.NotFound, call: call(api.Update, &apiv1.PartitionServiceUpdateRequest{Partition: &apiv1.Partition{Id: "nope"}})},
		{name: "update invalid", field: "partition.boot.initramfs_url", call: call(api.Update, &apiv1.PartitionServiceUpdateRequest{Partition: &apiv1.Partition{Id: "fra1", Boot: &apiv1.PartitionBootConfig{InitramfsUrl: "initrd"}}})},
		{name: "delete missing", code: codes.NotFound, call: call(api.Delete, &apiv1.PartitionServiceDeleteRequest{Id: "nope"})},
		{name: "delete in use", code: codes.FailedPrecondition, call: call(api.Delete, &apiv1.PartitionServiceDeleteRequest{Id: "fra1"})},
	})

	ok(e.api.Network.Delete(ctx, &apiv1.NetworkServiceDeleteRequest{Id: "fra1-underlay"}))(t)
	del := ok(api.Delete(ctx, &apiv1.PartitionServiceDeleteRequest{Id: "fra1"}))(t).GetPartition()
	if del.GetId() != "fra1" {
		t.Fatalf("Delete = %v", del)
	}
	_, err := api.Get(ctx, &apiv1.PartitionServiceGetRequest{Id: "fra1"})
	wantCode(t, err, codes.NotFound)
}

const gib = 1 << 30

func cores(lo, hi uint64) *apiv1.SizeConstraint {
	return &apiv1.SizeConstraint{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, Min: lo, Max: hi}
}

func TestSizes(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := e.as(t, e.admin)
	api := e.api.Size
	small := &apiv1.Size{Id: "c1-small", Name: "small", Constraints: []*apiv1.SizeConstraint{
		cores(1, 8), {Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY, Min: 1 * gib, Max: 64 * gib},
	}}
	big := &apiv1.Size{Id: "c1-big", Constraints: []*apiv1.SizeConstraint{
		cores(9, 256), {Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_STORAGE, Min: 1000 * gib, Max: 100000 * gib},
	}}
	gpu := &apiv1.Size{Id: "g1-h100", Constraints: []*apiv1.SizeConstraint{
		cores(9, 256), {Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU, Identifier: "H100*", Min: 1, Max: 8},
	}}
	for _, s := range []*apiv1.Size{small, big} {
		wantGeneration(t, ok(api.Create(ctx, &apiv1.SizeServiceCreateRequest{Size: s}))(t).GetSize(), 1)
	}
	if got := ok(api.Get(ctx, &apiv1.SizeServiceGetRequest{Id: "c1-small"}))(t).GetSize(); len(got.GetConstraints()) != 2 || got.GetName() != "small" {
		t.Fatalf("Get = %v", got)
	}
	if got := ok(api.List(e.as(t, e.p1Viewer), &apiv1.SizeServiceListRequest{}))(t).GetSizes(); len(got) != 2 {
		t.Fatalf("List = %v", got)
	}

	disks := func(sizes ...uint64) []*agentv1.DiskFact {
		var out []*agentv1.DiskFact
		for i, s := range sizes {
			out = append(out, &agentv1.DiskFact{Name: "sd" + string(rune('a'+i)), SizeBytes: s})
		}
		return out
	}
	matches := []struct {
		name  string
		facts *agentv1.MachineFacts
		want  string // size id, or "" for NotFound
	}{
		{"small", &agentv1.MachineFacts{Cores: 4, MemoryBytes: 16 * gib}, "c1-small"},
		{"small at the edges", &agentv1.MachineFacts{Cores: 8, MemoryBytes: 64 * gib}, "c1-small"},
		{"big by summed disks", &agentv1.MachineFacts{Cores: 32, Disks: disks(600*gib, 600*gib)}, "c1-big"},
		{"big lacks storage", &agentv1.MachineFacts{Cores: 32, Disks: disks(600 * gib)}, ""},
		{"too much memory", &agentv1.MachineFacts{Cores: 4, MemoryBytes: 65 * gib}, ""},
		{"zero facts", &agentv1.MachineFacts{}, ""},
	}
	for _, m := range matches {
		t.Run("match "+m.name, func(t *testing.T) {
			resp, err := api.Match(e.as(t, e.p2Editor), &apiv1.SizeServiceMatchRequest{Facts: m.facts})
			if m.want == "" {
				wantCode(t, err, codes.NotFound)
				return
			}
			if err != nil || resp.GetSize().GetId() != m.want {
				t.Fatalf("Match = %v, %v; want %s", resp, err, m.want)
			}
		})
	}
	// A GPU size overlapping c1-big makes GPU machines ambiguous.
	ok(api.Create(ctx, &apiv1.SizeServiceCreateRequest{Size: gpu}))(t)
	h100 := &agentv1.MachineFacts{Cores: 32, Disks: disks(2000 * gib), Gpus: []*agentv1.GPUFact{{Vendor: "nvidia", Model: "H100 SXM"}}}
	_, err := api.Match(ctx, &apiv1.SizeServiceMatchRequest{Facts: h100})
	wantCode(t, err, codes.FailedPrecondition)
	// Without the disks only the GPU size fits.
	h100.Disks = nil
	if got := ok(api.Match(ctx, &apiv1.SizeServiceMatchRequest{Facts: h100}))(t).GetSize().GetId(); got != "g1-h100" {
		t.Fatalf("Match(gpu) = %s", got)
	}
	// An A100 is not an H100*.
	h100.Gpus[0].Model = "A100"
	_, err = api.Match(ctx, &apiv1.SizeServiceMatchRequest{Facts: h100})
	wantCode(t, err, codes.NotFound)

	big.Name = "big one"
	wantGeneration(t, ok(api.Update(ctx, &apiv1.SizeServiceUpdateRequest{Size: big}))(t).GetSize(), 2)

	// A reservation keeps its size from being deleted.
	ok(e.api.Partition.Create(ctx, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "fra1"}}))(t)
	ok(e.api.SizeReservation.Create(ctx, &apiv1.SizeReservationServiceCreateRequest{SizeReservation: &apiv1.SizeReservation{
		Id: "keep", SizeId: "c1-big", PartitionId: "fra1", ProjectId: e.p1, Amount: 1,
	}}))(t)

	sz := func(cs ...*apiv1.SizeConstraint) *apiv1.SizeServiceCreateRequest {
		return &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: "bad", Constraints: cs}}
	}
	e.rejectAll(t, e.admin, []reject{
		{name: "create nil", field: "size", call: call(api.Create, &apiv1.SizeServiceCreateRequest{})},
		{name: "create bad id", field: "size.id", call: call(api.Create, &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: "-x", Constraints: []*apiv1.SizeConstraint{cores(1, 2)}}})},
		{name: "create no constraints", field: "size.constraints", call: call(api.Create, sz())},
		{name: "create min > max", field: "size.constraints[0]", call: call(api.Create, sz(cores(8, 4)))},
		{name: "create no type", field: "size.constraints[1].type", call: call(api.Create, sz(cores(1, 2), &apiv1.SizeConstraint{Max: 1}))},
		{name: "create identifier on cores", field: "size.constraints[0].identifier", call: call(api.Create, sz(&apiv1.SizeConstraint{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, Identifier: "x", Max: 1}))},
		{name: "create bad glob", field: "size.constraints[0].identifier", call: call(api.Create, sz(&apiv1.SizeConstraint{Type: apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU, Identifier: "[", Max: 1}))},
		{name: "create duplicate constraint", field: "size.constraints[1]", call: call(api.Create, sz(cores(1, 2), cores(3, 4)))},
		{name: "create duplicate", code: codes.AlreadyExists, call: call(api.Create, &apiv1.SizeServiceCreateRequest{Size: small})},
		{name: "get missing", code: codes.NotFound, call: call(api.Get, &apiv1.SizeServiceGetRequest{Id: "nope"})},
		{name: "update missing", code: codes.NotFound, call: call(api.Update, &apiv1.SizeServiceUpdateRequest{Size: &apiv1.Size{Id: "nope", Constraints: []*apiv1.SizeConstraint{cores(1, 2)}}})},
		{name: "update invalid", field: "size.constraints", call: call(api.Update, &apiv1.SizeServiceUpdateRequest{Size: &apiv1.Size{Id: "c1-small"}})},
		{name: "delete missing", code: codes.NotFound, call: call(api.Delete, &apiv1.SizeServiceDeleteRequest{Id: "nope"})},
		{name: "delete reserved", code: codes.FailedPrecondition, call: call(api.Delete, &apiv1.SizeServiceDeleteRequest{Id: "c1-big"})},
		{name: "match without facts", field: "facts", call: call(api.Match, &apiv1.SizeServiceMatchRequest{})},
	})

	ok(api.Delete(ctx, &apiv1.SizeServiceDeleteRequest{Id: "c1-small"}))(t)
	_, err = api.Get(ctx, &apiv1.SizeServiceGetRequest{Id: "c1-small"})
	wantCode(t, err, codes.NotFound)
}

const sha = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func image(id, os, version string) *apiv1.Image {
	return &apiv1.Image{Id: id, Os: os, Version: version, Url: "https://images.example/" + id + ".tar.zst", Sha256: sha}
}

func TestImages(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := e.as(t, e.admin)
	api := e.api.Image
	create := func(im *apiv1.Image) *apiv1.Image {
		t.Helper()
		return ok(api.Create(ctx, &apiv1.ImageServiceCreateRequest{Image: im}))(t).GetImage()
	}
	latest := func(os string, deprecated bool) string {
		t.Helper()
		return ok(api.Latest(e.as(t, e.p1Viewer), &apiv1.ImageServiceLatestRequest{Os: os, IncludeDeprecated: deprecated}))(t).GetImage().GetVersion()
	}

	first := create(image("debian-12.9", "debian", "12.9.0"))
	wantGeneration(t, first, 1)
	if first.GetClassification() != apiv1.ImageClassification_IMAGE_CLASSIFICATION_PREVIEW ||
		len(first.GetFeatures()) != 1 || first.GetFeatures()[0] != apiv1.ImageFeature_IMAGE_FEATURE_MACHINE {
		t.Fatalf("defaults not applied: %v", first)
	}
	create(image("ubuntu-99", "ubuntu", "99.0.0"))
	// Semantic, not lexical, ordering: 12.10 > 12.9.
	create(image("debian-12.10", "debian", "12.10.0"))
	if got := latest("debian", false); got != "12.10.0" {
		t.Fatalf("Latest = %s, want 12.10.0", got)
	}
	// Pre-releases rank above the previous release and below their own;
	// numeric identifiers compare as numbers (rc.10 > rc.2).
	create(image("debian-12.10.1-rc.2", "debian", "12.10.1-rc.2"))
	create(image("debian-12.10.1-rc.10", "debian", "12.10.1-rc.10"))
	if got := latest("debian", false); got != "12.10.1-rc.10" {
		t.Fatalf("Latest = %s, want 12.10.1-rc.10", got)
	}
	// Build metadata (even with a hyphen) is not a pre-release.
	create(image("debian-12.10.1", "debian", "12.10.1+ci-3"))
	if got := latest("debian", false); got != "12.10.1+ci-3" {
		t.Fatalf("Latest = %s, want 12.10.1+ci-3", got)
	}
	// Expired images never count; deprecated ones only when asked for.
	expired := image("debian-13", "debian", "13.0.0")
	expired.ExpiresAt = timestamppb.New(time.Now().Add(-time.Hour))
	create(expired)
	deprecated := image("debian-12.11", "debian", "12.11.0")
	deprecated.Classification = apiv1.ImageClassification_IMAGE_CLASSIFICATION_DEPRECATED
	create(deprecated)
	future := image("debian-12.10.2", "debian", "12.10.2")
	future.ExpiresAt = timestamppb.New(time.Now().Add(time.Hour))
	future.Classification = apiv1.ImageClassification_IMAGE_CLASSIFICATION_SUPPORTED
	create(future)
	if got := latest("debian", false); got != "12.10.2" {
		t.Fatalf("Latest = %s, want 12.10.2 (13.0.0 expired, 12.11.0 deprecated)", got)
	}
	if got := latest("debian", true); got != "12.11.0" {
		t.Fatalf("Latest(include deprecated) = %s, want 12.11.0", got)
	}
	// Deprecating the newest usable one falls back to the next.
	future.Classification = apiv1.ImageClassification_IMAGE_CLASSIFICATION_DEPRECATED
	wantGeneration(t, ok(api.Update(ctx, &apiv1.ImageServiceUpdateRequest{Image: future}))(t).GetImage(), 2)
	if got := latest("debian", false); got != "12.10.1+ci-3" {
		t.Fatalf("Latest after deprecation = %s", got)
	}
	if got := ok(api.List(ctx, &apiv1.ImageServiceListRequest{Os: "debian"}))(t).GetImages(); len(got) != 8 {
		t.Fatalf("List(debian) = %d images, want 8", len(got))
	}
	if got := ok(api.List(ctx, &apiv1.ImageServiceListRequest{}))(t).GetImages(); len(got) != 9 {
		t.Fatalf("List = %d images, want 9", len(got))
	}
	if got := ok(api.Get(ctx, &apiv1.ImageServiceGetRequest{Id: "debian-13"}))(t).GetImage(); !got.GetExpiresAt().AsTime().Before(time.Now()) {
		t.Fatalf("Get = %v", got)
	}

	mod := func(f func(*apiv1.Image)) *apiv1.ImageServiceCreateRequest {
		im := image("new", "debian", "14.0.0")
		f(im)
		return &apiv1.ImageServiceCreateRequest{Image: im}
	}
	e.rejectAll(t, e.admin, []reject{
		{name: "create nil", field: "image", call: call(api.Create, &apiv1.ImageServiceCreateRequest{})},
		{name: "create bad id", field: "image.id", call: call(api.Create, mod(func(im *apiv1.Image) { im.Id = "New" }))},
		{name: "create no os", field: "image.os", call: call(api.Create, mod(func(im *apiv1.Image) { im.Os = "" }))},
		{name: "create bad version", field: "image.version", call: call(api.Create, mod(func(im *apiv1.Image) { im.Version = "fourteen" }))},
		{name: "create leading zero", field: "image.version", call: call(api.Create, mod(func(im *apiv1.Image) { im.Version = "14.01.0" }))},
		{name: "create bad url", field: "image.url", call: call(api.Create, mod(func(im *apiv1.Image) { im.Url = "file:///tmp/x.tar" }))},
		{name: "create upper-case sha", field: "image.sha256", call: call(api.Create, mod(func(im *apiv1.Image) { im.Sha256 = strings.ToUpper(sha) }))},
		{name: "create short sha", field: "image.sha256", call: call(api.Create, mod(func(im *apiv1.Image) { im.Sha256 = sha[:10] }))},
		{name: "create duplicate id", code: codes.AlreadyExists, call: call(api.Create, mod(func(im *apiv1.Image) { im.Id = "debian-12.9" }))},
		{name: "create duplicate version", code: codes.AlreadyExists, call: call(api.Create, mod(func(im *apiv1.Image) { im.Version = "12.9.0" }))},
		{name: "get missing", code: codes.NotFound, call: call(api.Get, &apiv1.ImageServiceGetRequest{Id: "nope"})},
		{name: "update missing", code: codes.NotFound, call: call(api.Update, &apiv1.ImageServiceUpdateRequest{Image: image("nope", "debian", "1.0.0")})},
		{name: "update invalid", field: "image.url", call: call(api.Update, &apiv1.ImageServiceUpdateRequest{Image: &apiv1.Image{Id: "debian-12.9", Os: "debian", Version: "12.9.0", Sha256: sha}})},
		{name: "delete missing", code: codes.NotFound, call: call(api.Delete, &apiv1.ImageServiceDeleteRequest{Id: "nope"})},
		{name: "latest without os", field: "os", call: call(api.Latest, &apiv1.ImageServiceLatestRequest{})},
		{name: "latest unknown os", code: codes.NotFound, call: call(api.Latest, &apiv1.ImageServiceLatestRequest{Os: "plan9"})},
	})

	// An OS whose only image expired has no latest one.
	old := image("centos-7", "centos", "7.9.0")
	old.ExpiresAt = timestamppb.New(time.Now().Add(-time.Minute))
	create(old)
	_, err := api.Latest(ctx, &apiv1.ImageServiceLatestRequest{Os: "centos", IncludeDeprecated: true})
	wantCode(t, err, codes.NotFound)

	ok(api.Delete(ctx, &apiv1.ImageServiceDeleteRequest{Id: "debian-12.10.1"}))(t)
	if got := latest("debian", false); got != "12.10.1-rc.10" {
		t.Fatalf("Latest after delete = %s", got)
	}
}

// raidLVM is a mirrored-boot-disk layout: EFI on both disks, a RAID1 of the
// second partitions, LVM on the array, root and var as logical volumes.
func raidLVM(id string) *apiv1.FilesystemLayout {
	disk := func(dev string) *agentv1.Disk {
		return &agentv1.Disk{Device: dev, WipeOnReinstall: true, Partitions: []*agentv1.DiskPartition{
			{Number: 1, Label: "efi", SizeBytes: 512 << 20, GptType: "ef00"},
			{Number: 2, Label: "raid", GptType: "fd00"},
		}}
	}
	return &apiv1.FilesystemLayout{
		Id: id, Name: "raid1 lvm", Description: "mirrored",
		Constraints:    &apiv1.FilesystemLayoutConstraints{Sizes: []string{"c1-small"}, Images: map[string]string{"debian": ">= 12.0"}},
		Disks:          []*agentv1.Disk{disk("/dev/sda"), disk("/dev/nvme0n1")},
		Raids:          []*agentv1.Raid{{Name: "md0", Level: "1", Devices: []string{"/dev/sda2", "/dev/nvme0n1p2"}}},
		VolumeGroups:   []*agentv1.VolumeGroup{{Name: "vg0", Devices: []string{"/dev/md/md0"}}},
		LogicalVolumes: []*agentv1.LogicalVolume{{Name: "root", VolumeGroup: "vg0", SizeBytes: 50 * gib, LvmType: "linear"}, {Name: "var", VolumeGroup: "vg0"}},
		Filesystems: []*agentv1.Filesystem{
			{Path: "/", Device: "/dev/vg0/root", Format: "ext4", Label: "root", MountOptions: []string{"noatime"}},
			{Path: "/var", Device: "/dev/vg0/var", Format: "xfs"},
			{Path: "/boot/efi", Device: "/dev/sda1", Format: "vfat"},
			{Path: "/tmp", Device: "tmpfs", Format: "tmpfs"},
		},
	}
}

func TestFilesystemLayouts(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := e.as(t, e.admin)
	api := e.api.FilesystemLayout
	l := raidLVM("raid-lvm")
	wantGeneration(t, ok(api.Create(ctx, &apiv1.FilesystemLayoutServiceCreateRequest{FilesystemLayout: l}))(t).GetFilesystemLayout(), 1)
	got := ok(api.Get(e.as(t, e.t1Viewer), &apiv1.FilesystemLayoutServiceGetRequest{Id: "raid-lvm"}))(t).GetFilesystemLayout()
	if len(got.GetRaids()) != 1 || len(got.GetLogicalVolumes()) != 2 || got.GetConstraints().GetImages()["debian"] != ">= 12.0" {
		t.Fatalf("Get = %v", got)
	}
	ok(api.Create(ctx, &apiv1.FilesystemLayoutServiceCreateRequest{FilesystemLayout: &apiv1.FilesystemLayout{
		Id: "simple", Disks: []*agentv1.Disk{{Device: "/dev/vda", Partitions: []*agentv1.DiskPartition{{Number: 1}}}},
		Filesystems: []*agentv1.Filesystem{{Path: "/", Device: "/dev/vda1", Format: "ext4"}},
	}}))(t)
	if list := ok(api.List(ctx, &apiv1.FilesystemLayoutServiceListRequest{}))(t).GetFilesystemLayouts(); len(list) != 2 {
		t.Fatalf("List = %v", list)
	}
	l.Description = "mirrored, v2"
	wantGeneration(t, ok(api.Update(ctx, &apiv1.FilesystemLayoutServiceUpdateRequest{FilesystemLayout: l}))(t).GetFilesystemLayout(), 2)

	bad := func(f func(*apiv1.FilesystemLayout)) *apiv1.FilesystemLayoutServiceCreateRequest {
		l := raidLVM("bad")
		f(l)
		return &apiv1.FilesystemLayoutServiceCreateRequest{FilesystemLayout: l}
	}
	e.rejectAll(t, e.admin, []reject{
		{name: "nil", field: "filesystem_layout", call: call(api.Create, &apiv1.FilesystemLayoutServiceCreateRequest{})},
		{name: "dangling filesystem device", field: "filesystem_layout.filesystems[1].device", call: call(api.Create, bad(func(l *apiv1.FilesystemLayout) {
			l.Filesystems[1].Device = "/dev/sdc1"
		}))},
		{name: "raid of a missing partition", field: "filesystem_layout.raids[0].devices", call: call(api.Create, bad(func(l *apiv1.FilesystemLayout) {
			l.Raids[0].Devices[1] = "/dev/nvme0n1p3"
		}))},
		{name: "raid of one device", field: "filesystem_layout.raids[0].devices", call: call(api.Create, bad(func(l *apiv1.FilesystemLayout) {
			l.Raids[0].Devices = l.Raids[0].Devices[:1]
		}))},
		{name: "raid level", field: "filesystem_layout.raids[0].level", call: call(api.Create, bad(func(l *apiv1.FilesystemLayout) { l.Raids[0].Level = "4" }))},
		{name: "volume group on a missing device", field: "filesystem_layout.volume_groups[0].devices", call: call(api.Create, bad(func(l *apiv1.FilesystemLayout) {
			l.VolumeGroups[0].Devices = []string{"/dev/md/md1"}
		}))},
		{name: "logical volume in a missing group", field: "filesystem_layout.logical_volumes[1].volume_group", call: call(api.Create, bad(func(l *apiv1.FilesystemLayout) {
			l.LogicalVolumes[1].VolumeGroup = "vg1"
		}))},
		{name: "lvm type", field: "filesystem_layout.logical_volumes[0].lvm_type", call: call(api.Create, bad(func(l *apiv1.FilesystemLayout) { l.LogicalVolumes[0].LvmType = "thin" }))},
		{name: "no root", field: "filesystem_layout.filesystems", call: call(api.Create, bad(func(l *apiv1.FilesystemLayout) { l.Filesystems = l.Filesystems[1:] }))},
		{name: "format", field: "filesystem_layout.filesystems[0].format", call: call(api.Create, bad(func(l *apiv1.FilesystemLayout) { l.Filesystems[0].Format = "zfs" }))},
		{name: "relative path", field: "filesystem_layout.filesystems[1].path", call: call(api.Create, bad(func(l *apiv1.FilesystemLayout) { l.Filesystems[1].Path = "var" }))},
		{name: "disk not in /dev", field: "filesystem_layout.disks[0].device", call: call(api.Create, bad(func(l *apiv1.FilesystemLayout) { l.Disks[0].Device = "sda" }))},
		{name: "disk without device", field: "filesystem_layout.disks[0].device", call: call(api.Create, bad(func(l *apiv1.FilesystemLayout) { l.Disks[0].Device = "" }))},
		{name: "duplicate partition number", field: "filesystem_layout.disks[0].partitions[1].number", call: call(api.Create, bad(func(l *apiv1.FilesystemLayout) { l.Disks[0].Partitions[1].Number = 1 }))},
		{name: "rest-of-disk partition not last", field: "filesystem_layout.disks[0].partitions[0].size_bytes", call: call(api.Create, bad(func(l *apiv1.FilesystemLayout) { l.Disks[0].Partitions[0].SizeBytes = 0 }))},
		{name: "duplicate", code: codes.AlreadyExists, call: call(api.Create, &apiv1.FilesystemLayoutServiceCreateRequest{FilesystemLayout: raidLVM("simple")})},
		{name: "get missing", code: codes.NotFound, call: call(api.Get, &apiv1.FilesystemLayoutServiceGetRequest{Id: "nope"})},
		{name: "update missing", code: codes.NotFound, call: call(api.Update, &apiv1.FilesystemLayoutServiceUpdateRequest{FilesystemLayout: raidLVM("nope")})},
		{name: "update dangling", field: "filesystem_layout.filesystems[0].device", call: call(api.Update, &apiv1.FilesystemLayoutServiceUpdateRequest{FilesystemLayout: func() *apiv1.FilesystemLayout {
			l := raidLVM("raid-lvm")
			l.Filesystems[0].Device = "/dev/vg9/root"
			return l
		}()})},
		{name: "delete missing", code: codes.NotFound, call: call(api.Delete, &apiv1.FilesystemLayoutServiceDeleteRequest{Id: "nope"})},
	})

	ok(api.Delete(ctx, &apiv1.FilesystemLayoutServiceDeleteRequest{Id: "raid-lvm"}))(t)
	_, err := api.Get(ctx, &apiv1.FilesystemLayoutServiceGetRequest{Id: "raid-lvm"})
	wantCode(t, err, codes.NotFound)
}

func TestSizeReservations(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := e.as(t, e.admin)
	api := e.api.SizeReservation
	ok(e.api.Partition.Create(ctx, &apiv1.PartitionServiceCreateRequest{Partition: &apiv1.Partition{Id: "fra1"}}))(t)
	ok(e.api.Size.Create(ctx, &apiv1.SizeServiceCreateRequest{Size: &apiv1.Size{Id: "c1", Constraints: []*apiv1.SizeConstraint{cores(1, 8)}}}))(t)

	r1 := ok(api.Create(ctx, &apiv1.SizeReservationServiceCreateRequest{SizeReservation: &apiv1.SizeReservation{
		SizeId: "c1", PartitionId: "fra1", ProjectId: e.p1, Amount: 2, Description: "db",
	}}))(t).GetSizeReservation()
	wantGeneration(t, r1, 1)
	if len(r1.GetId()) != 36 {
		t.Fatalf("server-chosen id %q is not a UUID", r1.GetId())
	}
	// A client-chosen id works for create, update and delete alike.
	r2 := ok(api.Create(ctx, &apiv1.SizeReservationServiceCreateRequest{SizeReservation: &apiv1.SizeReservation{
		Id: "p2-gold", SizeId: "c1", PartitionId: "fra1", ProjectId: e.p2, Amount: 1,
	}}))(t).GetSizeReservation()

	if got := ok(api.Get(e.as(t, e.p1Viewer), &apiv1.SizeReservationServiceGetRequest{Id: r1.GetId()}))(t).GetSizeReservation(); got.GetAmount() != 2 || got.GetProjectId() != e.p1 {
		t.Fatalf("Get = %v", got)
	}
	if got := ok(api.List(ctx, &apiv1.SizeReservationServiceListRequest{}))(t).GetSizeReservations(); len(got) != 2 {
		t.Fatalf("List = %v", got)
	}
	if got := ok(api.List(ctx, &apiv1.SizeReservationServiceListRequest{ProjectId: e.p2}))(t).GetSizeReservations(); len(got) != 1 || got[0].GetId() != "p2-gold" {
		t.Fatalf("List(p2) = %v", got)
	}
	if got := ok(api.List(e.as(t, e.p1Owner), &apiv1.SizeReservationServiceListRequest{}))(t).GetSizeReservations(); len(got) != 1 || got[0].GetId() != r1.GetId() {
		t.Fatalf("List as p1 owner = %v", got)
	}
	r1.Amount = 5
	r1.Meta = nil
	upd := ok(api.Update(ctx, &apiv1.SizeReservationServiceUpdateRequest{SizeReservation: r1}))(t).GetSizeReservation()
	wantGeneration(t, upd, 2)
	if upd.GetAmount() != 5 {
		t.Fatalf("Update = %v", upd)
	}
	r2.Amount = 3
	ok(api.Update(ctx, &apiv1.SizeReservationServiceUpdateRequest{SizeReservation: r2}))(t)

	res := func(f func(*apiv1.SizeReservation)) *apiv1.SizeReservation {
		r := &apiv1.SizeReservation{SizeId: "c1", PartitionId: "fra1", ProjectId: e.p1, Amount: 1}
		f(r)
		return r
	}
	cr := func(f func(*apiv1.SizeReservation)) *apiv1.SizeReservationServiceCreateRequest {
		return &apiv1.SizeReservationServiceCreateRequest{SizeReservation: res(f)}
	}
	e.rejectAll(t, e.admin, []reject{
		{name: "create nil", field: "size_reservation", call: call(api.Create, &apiv1.SizeReservationServiceCreateRequest{})},
		{name: "create zero amount", field: "size_reservation.amount", call: call(api.Create, cr(func(r *apiv1.SizeReservation) { r.Amount = 0 }))},
		{name: "create bad project", field: "size_reservation.project_id", call: call(api.Create, cr(func(r *apiv1.SizeReservation) { r.ProjectId = "p1" }))},
		{name: "create no size", field: "size_reservation.size_id", call: call(api.Create, cr(func(r *apiv1.SizeReservation) { r.SizeId = "" }))},
		{name: "create bad id", field: "size_reservation.id", call: call(api.Create, cr(func(r *apiv1.SizeReservation) { r.Id = "Gold!" }))},
		{name: "create unknown size", code: codes.FailedPrecondition, call: call(api.Create, cr(func(r *apiv1.SizeReservation) { r.SizeId = "c9" }))},
		{name: "create unknown project", code: codes.FailedPrecondition, call: call(api.Create, cr(func(r *apiv1.SizeReservation) { r.ProjectId = "00000000-0000-0000-0000-000000000000" }))},
		{name: "create duplicate", code: codes.AlreadyExists, call: call(api.Create, cr(func(r *apiv1.SizeReservation) { r.Id = "p2-gold" }))},
		{name: "get missing", code: codes.NotFound, call: call(api.Get, &apiv1.SizeReservationServiceGetRequest{Id: "nope"})},
		{name: "update without id", field: "size_reservation.id", call: call(api.Update, &apiv1.SizeReservationServiceUpdateRequest{SizeReservation: res(func(*apiv1.SizeReservation) {})})},
		{name: "update missing", code: codes.NotFound, call: call(api.Update, &apiv1.SizeReservationServiceUpdateRequest{SizeReservation: res(func(r *apiv1.SizeReservation) { r.Id = "nope" })})},
		{name: "update zero amount", field: "size_reservation.amount", call: call(api.Update, &apiv1.SizeReservationServiceUpdateRequest{SizeReservation: res(func(r *apiv1.SizeReservation) { r.Id = r1.GetId(); r.Amount = 0 })})},
		{name: "delete missing", code: codes.NotFound, call: call(api.Delete, &apiv1.SizeReservationServiceDeleteRequest{Id: "nope"})},
	})

	for _, id := range []string{r1.GetId(), "p2-gold"} {
		ok(api.Delete(ctx, &apiv1.SizeReservationServiceDeleteRequest{Id: id}))(t)
		_, err := api.Get(ctx, &apiv1.SizeReservationServiceGetRequest{Id: id})
		wantCode(t, err, codes.NotFound)
	}
}
