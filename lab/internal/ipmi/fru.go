package ipmi

import (
	"errors"
	"fmt"
	"strings"
)

// FRU is what the BMC's FRU device 0 says about the machine, the
// inventory ipmitool's "fru print 0" shows and metal-bmc reports as the
// machine's vendor, model and serial. Every field is printable ASCII of at
// most 63 bytes, and may be empty.
type FRU struct {
	// Manufacturer is the Board Mfg and the Product Manufacturer.
	Manufacturer string
	// Product is the Board Product and the Product Name (the model).
	Product string
	// Serial is the Board Serial and the Product Serial.
	Serial string
	// PartNumber is the Board Part Number and the Product Part/Model
	// Number.
	PartNumber string
	// Version is the Product Version; AssetTag the Product Asset Tag.
	Version, AssetTag string
	// FileID is both areas' FRU File ID.
	FileID string
}

// The FRU Information Storage Definition v1.0's numbers.
const (
	fruFormat = 0x01 // common header and area format version
	// fruEnglish is the language code 0: English. It makes type 11b
	// fields 8-bit ASCII + Latin 1 (in any other language they would be
	// 16-bit Unicode).
	fruEnglish = 0x00
	// fruASCII8 is type 11b in a type/length byte; its low 6 bits are the
	// field's length, so a field holds at most 63 bytes.
	fruASCII8   = 0xc0
	fruASCII6   = 0x80 // type 10b: 6-bit packed ASCII
	fruEnd      = 0xc1 // type 11b, length 1: the end-of-fields marker
	fruMaxField = 0x3f
)

// Encode returns f as a FRU Information Storage Definition v1.0 image: the
// common header, a Board Info Area and a Product Info Area. Encode refuses
// a field that the image cannot hold as it is rather than writing an image
// that ipmitool would print wrong.
func (f FRU) Encode() ([]byte, error) {
	// mfg date/time (3 bytes of minutes since 1996): 0, unspecified.
	board, err := fruArea("board", []byte{fruFormat, 0, fruEnglish, 0, 0, 0},
		[]fruField{{"manufacturer", f.Manufacturer}, {"product", f.Product}, {"serial", f.Serial},
			{"part number", f.PartNumber}, {"file id", f.FileID}})
	if err != nil {
		return nil, err
	}
	product, err := fruArea("product", []byte{fruFormat, 0, fruEnglish},
		[]fruField{{"manufacturer", f.Manufacturer}, {"product", f.Product}, {"part number", f.PartNumber},
			{"version", f.Version}, {"serial", f.Serial}, {"asset tag", f.AssetTag}, {"file id", f.FileID}})
	if err != nil {
		return nil, err
	}
	// The header's offsets count 8-byte units from the start of the
	// image: the header itself is unit 0, the board area follows it.
	boardAt, productAt := 1, 1+len(board)/8
	if productAt > 0xff {
		return nil, errors.New("ipmi: FRU image too long for the header's offsets")
	}
	// Internal use, chassis and multi-record areas: none (offset 0).
	header := []byte{fruFormat, 0, 0, byte(boardAt), byte(productAt), 0, 0, 0}
	header[7] = fruChecksum(header[:7])
	img := append(header, board...)
	return append(img, product...), nil
}

type fruField struct{ what, value string }

// fruArea lays out one info area: its fixed bytes (the second is the
// length, filled in here), the fields, the end-of-fields marker, zero
// padding to a multiple of 8 bytes (areas are placed and sized in 8-byte
// units) and the zero checksum as the last byte.
func fruArea(name string, fixed []byte, fields []fruField) ([]byte, error) {
	b := append([]byte(nil), fixed...)
	for _, f := range fields {
		var err error
		if b, err = appendFRUField(b, f.value); err != nil {
			return nil, fmt.Errorf("ipmi: FRU %s %s: %w", name, f.what, err)
		}
	}
	b = append(b, fruEnd)
	for (len(b)+1)%8 != 0 {
		b = append(b, 0)
	}
	b = append(b, 0)
	if len(b)/8 > 0xff {
		return nil, fmt.Errorf("ipmi: FRU %s area is %d bytes, more than its length byte counts", name, len(b))
	}
	b[1] = byte(len(b) / 8)
	b[len(b)-1] = fruChecksum(b[:len(b)-1])
	return b, nil
}

// appendFRUField appends s with its type/length byte.
func appendFRUField(b []byte, s string) ([]byte, error) {
	if len(s) > fruMaxField {
		return nil, fmt.Errorf("%q is %d bytes; a FRU field holds at most %d", s, len(s), fruMaxField)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return nil, fmt.Errorf("%q: only printable ASCII goes into a FRU field", s)
		}
	}
	switch len(s) {
	case 0:
		return append(b, fruASCII8), nil
	case 1:
		// 8-bit ASCII needs at least two bytes (length 1 is C1h, the end
		// of the fields): one character goes as 6-bit ASCII, which holds
		// 0x20-0x5f (no lower case) packed from the low bits up; readers
		// print it with trailing blanks (6-bit 0 is a space).
		if s[0] > 0x5f {
			return nil, fmt.Errorf("%q: a one-character FRU field must be a digit, upper case or punctuation (6-bit ASCII); use two or more", s)
		}
		return append(b, fruASCII6|1, s[0]-0x20), nil
	}
	b = append(b, fruASCII8|byte(len(s)))
	return append(b, s...), nil
}

// fruChecksum is the byte that makes b and it sum to 0 modulo 256.
func fruChecksum(b []byte) byte {
	var sum byte
	for _, c := range b {
		sum += c
	}
	return -sum
}

// fruEmuCommand is the ipmi_sim command (ipmi_sim_cmd(5)) that gives MC
// 0x20 the image as its FRU device 0, broken into lines of 16 bytes.
func fruEmuCommand(img []byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "mc_add_fru_data 0x20 0 %d data", len(img))
	for i, c := range img {
		if i%16 == 0 {
			b.WriteString(" \\\n ")
		}
		fmt.Fprintf(&b, " 0x%02x", c)
	}
	b.WriteString("\n")
	return b.String()
}
