package facts

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"unicode/utf8"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// LLDP (IEEE 802.1AB) on the wire.
const (
	lldpEtherType = 0x88cc

	tlvEnd       = 0
	tlvChassisID = 1
	tlvPortID    = 2
	tlvTTL       = 3
	tlvPortDesc  = 4
	tlvSysName   = 5

	// chassis id subtypes 4 and port id subtype 3 are MAC addresses; chassis
	// 5 and port 4 are network addresses (IANA family byte first).
	chassisMAC  = 4
	chassisAddr = 5
	portMAC     = 3
	portAddr    = 4
)

// lldpMulticast reports whether dst is one of the LLDP group addresses
// (nearest bridge, nearest non-TPMR bridge, nearest customer bridge).
func lldpMulticast(dst net.HardwareAddr) bool {
	return len(dst) == 6 && dst[0] == 0x01 && dst[1] == 0x80 && dst[2] == 0xc2 && dst[3] == 0 && dst[4] == 0 &&
		(dst[5] == 0x0e || dst[5] == 0x03 || dst[5] == 0x00)
}

// LLDPFrame is a decoded LLDP frame.
type LLDPFrame struct {
	Neighbour *agentv1.LLDPNeighbour
	// TTL in seconds; 0 is a shutdown: the neighbour is going away.
	TTL uint16
}

// ParseLLDPFrame decodes an Ethernet frame carrying an LLDPDU.
func ParseLLDPFrame(frame []byte) (LLDPFrame, error) {
	if len(frame) < 14 {
		return LLDPFrame{}, fmt.Errorf("lldp: frame of %d bytes is shorter than an Ethernet header", len(frame))
	}
	if !lldpMulticast(frame[0:6]) {
		return LLDPFrame{}, fmt.Errorf("lldp: destination %s is not an LLDP group address", net.HardwareAddr(frame[0:6]))
	}
	if et := binary.BigEndian.Uint16(frame[12:14]); et != lldpEtherType {
		return LLDPFrame{}, fmt.Errorf("lldp: ethertype %#04x is not LLDP", et)
	}
	return ParseLLDPDU(frame[14:])
}

// ParseLLDPDU decodes the TLVs of an LLDPDU: chassis id, port id and TTL
// must come first in that order; port description and system name are
// picked from the optional TLVs; organisation-specific TLVs are skipped.
// Trailing bytes after the End TLV (Ethernet padding) are ignored.
func ParseLLDPDU(b []byte) (LLDPFrame, error) {
	var f LLDPFrame
	n := &agentv1.LLDPNeighbour{}
	for i := 0; ; i++ {
		if len(b) == 0 {
			if i < 3 {
				return LLDPFrame{}, errors.New("lldp: missing mandatory TLVs")
			}
			// Some senders leave out the End TLV; what came is complete.
			break
		}
		if len(b) < 2 {
			return LLDPFrame{}, errors.New("lldp: truncated TLV header")
		}
		h := binary.BigEndian.Uint16(b)
		typ, l := int(h>>9), int(h&0x1ff)
		b = b[2:]
		if l > len(b) {
			return LLDPFrame{}, fmt.Errorf("lldp: TLV %d of %d bytes exceeds the %d bytes left", typ, l, len(b))
		}
		v := b[:l]
		b = b[l:]
		if i < 3 {
			if want := []int{tlvChassisID, tlvPortID, tlvTTL}[i]; typ != want {
				return LLDPFrame{}, fmt.Errorf("lldp: TLV %d at position %d, want %d", typ, i, want)
			}
		}
		switch typ {
		case tlvEnd:
			if l != 0 {
				return LLDPFrame{}, fmt.Errorf("lldp: End TLV with length %d", l)
			}
			if i < 3 {
				return LLDPFrame{}, errors.New("lldp: missing mandatory TLVs")
			}
			f.Neighbour = n
			return f, nil
		case tlvChassisID, tlvPortID:
			if i >= 3 {
				return LLDPFrame{}, fmt.Errorf("lldp: second TLV %d", typ)
			}
			if l < 2 || l > 256 {
				return LLDPFrame{}, fmt.Errorf("lldp: TLV %d length %d not in 2..256", typ, l)
			}
			id, err := lldpID(typ, v[0], v[1:])
			if err != nil {
				return LLDPFrame{}, err
			}
			if id == "" {
				return LLDPFrame{}, fmt.Errorf("lldp: TLV %d with an empty id", typ)
			}
			if typ == tlvChassisID {
				n.ChassisId = id
			} else {
				n.PortId = id
			}
		case tlvTTL:
			if i >= 3 {
				return LLDPFrame{}, errors.New("lldp: second TTL TLV")
			}
			if l < 2 {
				return LLDPFrame{}, fmt.Errorf("lldp: TTL TLV length %d", l)
			}
			f.TTL = binary.BigEndian.Uint16(v)
		case tlvPortDesc:
			n.PortDescription = lldpString(v)
		case tlvSysName:
			n.SystemName = lldpString(v)
		}
	}
	f.Neighbour = n
	return f, nil
}

func lldpID(typ int, subtype byte, v []byte) (string, error) {
	mac := (typ == tlvChassisID && subtype == chassisMAC) || (typ == tlvPortID && subtype == portMAC)
	addr := (typ == tlvChassisID && subtype == chassisAddr) || (typ == tlvPortID && subtype == portAddr)
	switch {
	case mac:
		if len(v) != 6 {
			return "", fmt.Errorf("lldp: TLV %d MAC address of %d bytes", typ, len(v))
		}
		return net.HardwareAddr(v).String(), nil
	case addr:
		if len(v) < 1 {
			return "", fmt.Errorf("lldp: TLV %d empty network address", typ)
		}
		switch {
		case v[0] == 1 && len(v) == 5:
			return netip.AddrFrom4([4]byte(v[1:])).String(), nil
		case v[0] == 2 && len(v) == 17:
			return netip.AddrFrom16([16]byte(v[1:])).String(), nil
		}
		return "", fmt.Errorf("lldp: TLV %d network address family %d with %d bytes", typ, v[0], len(v)-1)
	}
	// Names, aliases and locally assigned ids are text.
	return lldpString(v), nil
}

// lldpString makes TLV text usable. 802.1AB strings carry their length and
// no terminator, but switches pad them with NULs, and some write a C string
// with garbage after its NUL: the text ends at the first NUL, as C tools
// show it. So a decoded string never holds a NUL (which PostgreSQL cannot
// store, and central refuses). Text that is not UTF-8 is read as Latin-1,
// which some switches send. Surrounding space is trimmed last, so that
// "x\x00 " and "x " both decode to "x".
func lldpString(v []byte) string {
	if i := bytes.IndexByte(v, 0); i >= 0 {
		v = v[:i]
	}
	if utf8.Valid(v) {
		return strings.TrimSpace(string(v))
	}
	r := make([]rune, len(v))
	for i, c := range v {
		r[i] = rune(c)
	}
	return strings.TrimSpace(string(r))
}
