package ipmi

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// decodeFRUArea reads the fields of the info area at byte off of img as
// the spec lays them out, checking its length and checksum: skip is the
// number of fixed bytes before the first field.
func decodeFRUArea(t *testing.T, img []byte, off, skip int) []string {
	t.Helper()
	if off+2 > len(img) || img[off] != fruFormat {
		t.Fatalf("area at %d: no format version 1 there", off)
	}
	n := int(img[off+1]) * 8
	if n == 0 || off+n > len(img) {
		t.Fatalf("area at %d: length %d bytes beyond the image's %d", off, n, len(img))
	}
	area := img[off : off+n]
	if sum := sumBytes(area); sum != 0 {
		t.Errorf("area at %d: checksum sums to %#x, want 0", off, sum)
	}
	if area[2] != fruEnglish {
		t.Errorf("area at %d: language %d, want English (0)", off, area[2])
	}
	var fields []string
	for i := skip; ; {
		if i >= n-1 {
			t.Fatalf("area at %d: no end-of-fields marker", off)
		}
		tl := area[i]
		if tl == fruEnd {
			for _, c := range area[i+1 : n-1] {
				if c != 0 {
					t.Errorf("area at %d: padding % x, want zeros", off, area[i+1:n-1])
					break
				}
			}
			return fields
		}
		l := int(tl & 0x3f)
		data := area[i+1 : i+1+l]
		switch tl >> 6 {
		case 3:
			fields = append(fields, string(data))
		case 2: // 6-bit packed ASCII, one character per test value
			if l != 1 {
				t.Fatalf("area at %d: 6-bit field of %d bytes", off, l)
			}
			fields = append(fields, string(rune(data[0]&0x3f+0x20)))
		default:
			t.Fatalf("area at %d: field type %d", off, tl>>6)
		}
		i += 1 + l
	}
}

func sumBytes(b []byte) byte {
	var s byte
	for _, c := range b {
		s += c
	}
	return s
}

// TestFRUEncode: the image ipmi_sim serves is one that a reader of the
// spec takes apart into what went in.
func TestFRUEncode(t *testing.T) {
	long := strings.Repeat("x", 63)
	for _, c := range []struct {
		name string
		fru  FRU
	}{
		{"lab machine", FRU{Manufacturer: "Metalfleet", Product: "QEMU lab machine", Serial: "machine01"}},
		{"every field", FRU{Manufacturer: "Metalfleet", Product: "QEMU lab machine", Serial: "SN-0001",
			PartNumber: "MF-1", Version: "rev 2", AssetTag: "rack 3 slot 7", FileID: "lab.fru"}},
		{"longest fields", FRU{Manufacturer: long, Product: long, Serial: long, PartNumber: long, Version: long, AssetTag: long, FileID: long}},
		{"one character", FRU{Manufacturer: "M", Version: "2", Serial: "ab"}},
		{"empty", FRU{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			img, err := c.fru.Encode()
			if err != nil {
				t.Fatal(err)
			}
			if len(img) < 8 || img[0] != fruFormat {
				t.Fatalf("header % x", img)
			}
			if sum := sumBytes(img[:8]); sum != 0 {
				t.Errorf("header checksum sums to %#x, want 0", sum)
			}
			// No internal use, chassis or multi-record area; the board
			// area right after the header, the product area after it.
			if img[1] != 0 || img[2] != 0 || img[5] != 0 || img[6] != 0 {
				t.Errorf("header % x: offsets of areas that are not there", img[:8])
			}
			boardAt, productAt := int(img[3])*8, int(img[4])*8
			if boardAt != 8 {
				t.Errorf("board area at %d, want 8", boardAt)
			}
			if boardLen := int(img[boardAt+1]) * 8; productAt != boardAt+boardLen {
				t.Errorf("product area at %d, want %d (after the board's %d bytes)", productAt, boardAt+boardLen, boardLen)
			}
			if productLen := int(img[productAt+1]) * 8; len(img) != productAt+productLen {
				t.Errorf("image of %d bytes, want it to end with the product area at %d", len(img), productAt+productLen)
			}
			if !slices.Equal(img[boardAt+3:boardAt+6], []byte{0, 0, 0}) {
				t.Errorf("board mfg date % x, want 0 (unspecified)", img[boardAt+3:boardAt+6])
			}
			f := c.fru
			board := decodeFRUArea(t, img, boardAt, 6)
			if want := []string{f.Manufacturer, f.Product, f.Serial, f.PartNumber, f.FileID}; !slices.Equal(board, want) {
				t.Errorf("board fields %q, want %q", board, want)
			}
			product := decodeFRUArea(t, img, productAt, 3)
			if want := []string{f.Manufacturer, f.Product, f.PartNumber, f.Version, f.Serial, f.AssetTag, f.FileID}; !slices.Equal(product, want) {
				t.Errorf("product fields %q, want %q", product, want)
			}
		})
	}
}

// TestFRUEncodeRefuses: what a field cannot hold is an error, not an
// image that reads as something else.
func TestFRUEncodeRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		fru  FRU
		want string
	}{
		{"64 bytes", FRU{Serial: strings.Repeat("x", 64)}, "FRU board serial: " + fmt.Sprintf("%q", strings.Repeat("x", 64)) + " is 64 bytes; a FRU field holds at most 63"},
		{"non-ASCII", FRU{Manufacturer: "Métalfleet"}, "only printable ASCII"},
		{"control character", FRU{Product: "QEMU\nlab"}, "only printable ASCII"},
		{"DEL", FRU{AssetTag: "tag\x7f"}, "FRU product asset tag"},
		{"one lower-case character", FRU{Serial: "a"}, "one-character FRU field"},
	} {
		t.Run(c.name, func(t *testing.T) {
			img, err := c.fru.Encode()
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Encode: % x, %v; want an error with %q", img, err, c.want)
			}
		})
	}
}

// TestFRUEmuCommand: ipmi_sim reads the image from one command, its
// lines continued with a backslash after a blank.
func TestFRUEmuCommand(t *testing.T) {
	img := make([]byte, 20)
	for i := range img {
		img[i] = byte(i * 13)
	}
	got := fruEmuCommand(img)
	joined := strings.ReplaceAll(got, "\\\n", "")
	if strings.Count(joined, "\n") != 1 || !strings.HasSuffix(joined, "\n") {
		t.Fatalf("command %q: not one command line once continued", got)
	}
	words := strings.Fields(joined)
	if want := []string{"mc_add_fru_data", "0x20", "0", "20", "data"}; !slices.Equal(words[:5], want) {
		t.Fatalf("command starts %q, want %q", words[:5], want)
	}
	var back []byte
	for _, w := range words[5:] {
		var c byte
		if _, err := fmt.Sscanf(w, "0x%02x", &c); err != nil {
			t.Fatalf("byte %q: %v", w, err)
		}
		back = append(back, c)
	}
	if !slices.Equal(back, img) {
		t.Fatalf("bytes % x, want % x", back, img)
	}
}
