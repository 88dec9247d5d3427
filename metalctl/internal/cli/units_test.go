package cli

import (
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"

	apiv1 "github.com/metalfleet/metalfleet/proto/metalfleet/api/v1"
)

func TestParseBytes(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		want    uint64
		wantErr string
	}{
		{in: "0", want: 0},
		{in: "512", want: 512},
		{in: "512B", want: 512},
		{in: "1KB", want: 1000},
		{in: "1KiB", want: 1024},
		{in: "1MB", want: 1e6},
		{in: "1MiB", want: 1 << 20},
		{in: "1GB", want: 1e9},
		{in: "1GiB", want: 1 << 30},
		{in: "1TB", want: 1e12},
		{in: "1TiB", want: 1 << 40},
		{in: "100TiB", want: 100 << 40},
		{in: "2PiB", want: 2 << 50},
		{in: "1.5GiB", want: 3 << 29},
		{in: "1 gib", want: 1 << 30},
		{in: " 64GiB ", want: 64 << 30},
		{in: "", wantErr: "want a number"},
		{in: "GiB", wantErr: "want a number"},
		{in: "1XB", wantErr: "unknown unit \"XB\""},
		{in: "1e9", wantErr: "unknown unit"},
		{in: "-1GiB", wantErr: "want a number"},
		{in: "1.5B", wantErr: "not a whole number of bytes"},
		{in: "1.2.3GB", wantErr: "is not a number"},
		{in: "99999PiB", wantErr: "too large"},
	} {
		got, err := parseBytes(tc.in)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseBytes(%q) error = %v, want it to contain %q", tc.in, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("parseBytes(%q): %v", tc.in, err)
		case got != tc.want:
			t.Errorf("parseBytes(%q) = %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestFormatBytesRoundTrips(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   uint64
		want string
	}{
		{0, "0B"},
		{1, "1B"},
		{1000, "1KB"},
		{1024, "1KiB"},
		{1 << 30, "1GiB"},
		{1 << 40, "1TiB"},
		{100 << 40, "100TiB"},
		{2e12, "2TB"},
		{1536 << 20, "1536MiB"},
		{1234567, "1234567B"},
	} {
		got := formatBytes(tc.in)
		if got != tc.want {
			t.Errorf("formatBytes(%d) = %q, want %q", tc.in, got, tc.want)
		}
		back, err := parseBytes(got)
		if err != nil || back != tc.in {
			t.Errorf("parseBytes(formatBytes(%d)) = %d, %v", tc.in, back, err)
		}
	}
}

func TestParseRange(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in       string
		parse    func(string) (uint64, error)
		min, max uint64
		wantErr  string
	}{
		{in: "1-64", parse: parseCount, min: 1, max: 64},
		{in: "8", parse: parseCount, min: 8, max: 8},
		{in: " 2 - 4 ", parse: parseCount, min: 2, max: 4},
		{in: "1GiB-1TiB", parse: parseBytes, min: 1 << 30, max: 1 << 40},
		{in: "1GiB-100TiB", parse: parseBytes, min: 1 << 30, max: 100 << 40},
		{in: "256GiB", parse: parseBytes, min: 256 << 30, max: 256 << 30},
		{in: "", parse: parseCount, wantErr: "empty value"},
		{in: "64-1", parse: parseCount, wantErr: "minimum is greater than maximum"},
		{in: "1TiB-1GiB", parse: parseBytes, wantErr: "minimum is greater than maximum"},
		{in: "1-", parse: parseCount, wantErr: "not a whole number"},
		{in: "-5", parse: parseCount, wantErr: "not a whole number"},
		{in: "1-2-3", parse: parseCount, wantErr: "not a whole number"},
		{in: "x", parse: parseCount, wantErr: "not a whole number"},
		{in: "1.5", parse: parseCount, wantErr: "not a whole number"},
	} {
		lo, hi, err := parseRange(tc.in, tc.parse)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("parseRange(%q) error = %v, want it to contain %q", tc.in, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("parseRange(%q): %v", tc.in, err)
		case lo != tc.min || hi != tc.max:
			t.Errorf("parseRange(%q) = %d-%d, want %d-%d", tc.in, lo, hi, tc.min, tc.max)
		}
	}
}

func TestSizeConstraints(t *testing.T) {
	t.Parallel()
	c := func(typ apiv1.SizeConstraintType, lo, hi uint64, id string) *apiv1.SizeConstraint {
		return &apiv1.SizeConstraint{Type: typ, Min: lo, Max: hi, Identifier: id}
	}
	for _, tc := range []struct {
		name                   string
		cores, memory, storage string
		gpus                   []string
		want                   []*apiv1.SizeConstraint
		wantErr                string
	}{
		{
			name: "spec example", cores: "1-64", memory: "1GiB-1TiB", storage: "1GiB-100TiB",
			want: []*apiv1.SizeConstraint{
				c(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES, 1, 64, ""),
				c(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY, 1<<30, 1<<40, ""),
				c(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_STORAGE, 1<<30, 100<<40, ""),
			},
		},
		{name: "nothing", want: nil},
		{
			name: "gpus", gpus: []string{"2:H100*", "0-1", "1:A*:x"},
			want: []*apiv1.SizeConstraint{
				c(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU, 2, 2, "H100*"),
				c(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU, 0, 1, ""),
				c(apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU, 1, 1, "A*:x"),
			},
		},
		{name: "bad cores names the flag", cores: "many", wantErr: "--cores: \"many\" is not a whole number"},
		{name: "bad memory names the flag", memory: "1GiB-", wantErr: "--memory:"},
		{name: "bad storage names the flag", storage: "10-1", wantErr: "--storage: \"10-1\": minimum is greater than maximum"},
		{name: "bad gpu count", gpus: []string{":H100"}, wantErr: "--gpus \":H100\""},
		{name: "bad gpu glob", gpus: []string{"1:H100["}, wantErr: "syntax error in pattern"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := sizeConstraints(tc.cores, tc.memory, tc.storage, tc.gpus)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("got %d constraints, want %d: %v", len(got), len(tc.want), got)
			}
			for i := range got {
				if !proto.Equal(got[i], tc.want[i]) {
					t.Errorf("constraint %d = %v, want %v", i, got[i], tc.want[i])
				}
			}
		})
	}
}

func TestFormatConstraint(t *testing.T) {
	t.Parallel()
	cs := sizes()[1].GetConstraints()
	for typ, want := range map[apiv1.SizeConstraintType]string{
		apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_CORES:   "32",
		apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_MEMORY:  "256GiB",
		apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_STORAGE: "2TB-4TB",
		apiv1.SizeConstraintType_SIZE_CONSTRAINT_TYPE_GPU:     "2:H100*",
	} {
		if got := formatConstraint(cs, typ); got != want {
			t.Errorf("formatConstraint(%v) = %q, want %q", typ, got, want)
		}
	}
}
