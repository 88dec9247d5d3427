package facts

import (
	"encoding/binary"
	"net"
	"strings"
	"testing"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

func tlv(typ int, v ...byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(typ)<<9|uint16(len(v)))
	return append(b, v...)
}

func sub(subtype byte, v string) []byte { return append([]byte{subtype}, v...) }

func frame(dst net.HardwareAddr, pdu ...[]byte) []byte {
	f := append([]byte{}, dst...)
	f = append(f, 0x02, 0x11, 0x22, 0x33, 0x44, 0x55)
	f = binary.BigEndian.AppendUint16(f, lldpEtherType)
	for _, p := range pdu {
		f = append(f, p...)
	}
	return f
}

var nearestBridge = net.HardwareAddr{0x01, 0x80, 0xc2, 0, 0, 0x0e}

func ttl(s uint16) []byte { return tlv(tlvTTL, byte(s>>8), byte(s)) }

func TestParseLLDPFrame(t *testing.T) {
	macChassis := tlv(tlvChassisID, 4, 0x0c, 0x42, 0xa1, 0x00, 0x00, 0x01)
	ifPort := tlv(tlvPortID, sub(5, "Ethernet1")...)
	for _, tc := range []struct {
		name    string
		frame   []byte
		want    *agentv1.LLDPNeighbour
		ttl     uint16
		wantErr string
	}{
		{"SONiC leaf", frame(nearestBridge, macChassis, ifPort, ttl(120), tlv(tlvSysName, []byte("leaf01")...), tlv(tlvPortDesc, []byte("server-a eth0")...), tlv(127, 0x00, 0x80, 0xc2, 1, 0, 1), tlv(tlvEnd)),
			&agentv1.LLDPNeighbour{ChassisId: "0c:42:a1:00:00:01", PortId: "Ethernet1", SystemName: "leaf01", PortDescription: "server-a eth0"}, 120, ""},
		{"locally assigned ids and padding", append(frame(nearestBridge, tlv(tlvChassisID, sub(7, "spine-1")...), tlv(tlvPortID, sub(7, "swp1\x00")...), ttl(30), tlv(tlvEnd)), make([]byte, 20)...),
			&agentv1.LLDPNeighbour{ChassisId: "spine-1", PortId: "swp1"}, 30, ""},
		{"MAC port, IPv4 chassis", frame(nearestBridge, tlv(tlvChassisID, 5, 1, 192, 0, 2, 1), tlv(tlvPortID, 3, 1, 2, 3, 4, 5, 6), ttl(0), tlv(tlvEnd)),
			&agentv1.LLDPNeighbour{ChassisId: "192.0.2.1", PortId: "01:02:03:04:05:06"}, 0, ""},
		{"IPv6 chassis, no End TLV", frame(net.HardwareAddr{0x01, 0x80, 0xc2, 0, 0, 0x03}, tlv(tlvChassisID, append([]byte{5, 2}, net.ParseIP("2001:db8::1")...)...), ifPort, ttl(5)),
			&agentv1.LLDPNeighbour{ChassisId: "2001:db8::1", PortId: "Ethernet1"}, 5, ""},
		{"latin-1 system name", frame(nearestBridge, macChassis, ifPort, ttl(1), tlv(tlvSysName, 'S', 0xfc, 'd'), tlv(tlvEnd)),
			&agentv1.LLDPNeighbour{ChassisId: "0c:42:a1:00:00:01", PortId: "Ethernet1", SystemName: "Süd"}, 1, ""},
		// Found by FuzzParseLLDPFrame: a NUL before trailing space survived
		// (and central cannot store a NUL).
		{"NUL then space", frame(nearestBridge, macChassis, ifPort, ttl(1), tlv(tlvSysName, 'x', 0, ' '), tlv(tlvEnd)),
			&agentv1.LLDPNeighbour{ChassisId: "0c:42:a1:00:00:01", PortId: "Ethernet1", SystemName: "x"}, 1, ""},
		{"C string with garbage after its NUL", frame(nearestBridge, macChassis, ifPort, ttl(1), tlv(tlvSysName, []byte("leaf01\x00\xff\x01junk")...), tlv(tlvPortDesc, []byte("\x00eth0")...), tlv(tlvEnd)),
			&agentv1.LLDPNeighbour{ChassisId: "0c:42:a1:00:00:01", PortId: "Ethernet1", SystemName: "leaf01"}, 1, ""},
		{"port id that is only NULs", frame(nearestBridge, macChassis, tlv(tlvPortID, 7, 0, 0), ttl(1)), nil, 0, "empty id"},

		{"short frame", []byte{1, 2, 3}, nil, 0, "shorter than an Ethernet header"},
		{"unicast destination", frame(net.HardwareAddr{2, 0, 0, 0, 0, 1}, macChassis, ifPort, ttl(1)), nil, 0, "not an LLDP group address"},
		{"wrong ethertype", append(append(append([]byte{}, nearestBridge...), 2, 0, 0, 0, 0, 1, 0x08, 0x00), macChassis...), nil, 0, "not LLDP"},
		{"empty PDU", frame(nearestBridge), nil, 0, "missing mandatory TLVs"},
		{"only End", frame(nearestBridge, tlv(tlvEnd)), nil, 0, "at position 0"},
		{"port before chassis", frame(nearestBridge, ifPort, macChassis, ttl(1)), nil, 0, "at position 0"},
		{"no TTL", frame(nearestBridge, macChassis, ifPort, tlv(tlvEnd)), nil, 0, "at position 2"},
		{"truncated header", frame(nearestBridge, macChassis, ifPort, ttl(1), []byte{0x08}), nil, 0, "truncated TLV header"},
		{"length beyond the frame", frame(nearestBridge, macChassis, ifPort, ttl(1), []byte{0x0a, 0x10, 'x'}), nil, 0, "exceeds"},
		{"short MAC chassis", frame(nearestBridge, tlv(tlvChassisID, 4, 1, 2, 3), ifPort, ttl(1)), nil, 0, "MAC address of 3 bytes"},
		{"bad address family", frame(nearestBridge, tlv(tlvChassisID, 5, 9, 1, 2), ifPort, ttl(1)), nil, 0, "network address family 9"},
		{"empty chassis id", frame(nearestBridge, tlv(tlvChassisID, 7, 0), ifPort, ttl(1)), nil, 0, "empty id"},
		{"chassis without id", frame(nearestBridge, tlv(tlvChassisID, 7), ifPort, ttl(1)), nil, 0, "not in 2..256"},
		{"short TTL", frame(nearestBridge, macChassis, ifPort, tlv(tlvTTL, 1)), nil, 0, "TTL TLV length 1"},
		{"End with a length", frame(nearestBridge, macChassis, ifPort, ttl(1), tlv(tlvEnd, 0)), nil, 0, "End TLV with length"},
		{"second chassis", frame(nearestBridge, macChassis, ifPort, ttl(1), macChassis), nil, 0, "second TLV 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseLLDPFrame(tc.frame)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !proto.Equal(got.Neighbour, tc.want) || got.TTL != tc.ttl {
				t.Errorf("got %v ttl %d, want %v ttl %d", got.Neighbour, got.TTL, tc.want, tc.ttl)
			}
		})
	}
}

// FuzzParseLLDPFrame: arbitrary bytes never panic, and whatever decodes
// has both ids and encodes back (as locally assigned ids) to the same
// neighbour.
func FuzzParseLLDPFrame(f *testing.F) {
	f.Add(frame(nearestBridge, tlv(tlvChassisID, 4, 0x0c, 0x42, 0xa1, 0, 0, 1), tlv(tlvPortID, sub(5, "Ethernet1")...), ttl(120), tlv(tlvSysName, []byte("leaf01")...), tlv(tlvEnd)))
	f.Add(frame(nearestBridge, tlv(tlvChassisID, 5, 1, 192, 0, 2, 1), tlv(tlvPortID, 3, 1, 2, 3, 4, 5, 6), ttl(0)))
	f.Add(frame(nearestBridge, tlv(tlvChassisID, 7), tlv(tlvPortID, 7, 'x'), ttl(1)))
	f.Add([]byte{})
	f.Add(frame(nearestBridge, tlv(tlvChassisID, 7, 'c'), tlv(tlvPortID, 7, 'p'), ttl(1), tlv(tlvSysName, 'x', 0, ' ')))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := ParseLLDPFrame(b)
		if err != nil {
			return
		}
		n := got.Neighbour
		if n == nil || n.ChassisId == "" || n.PortId == "" {
			t.Fatalf("decoded without ids: %v", n)
		}
		for _, s := range []string{n.ChassisId, n.PortId, n.SystemName, n.PortDescription} {
			if strings.ContainsRune(s, 0) || !utf8.ValidString(s) {
				t.Fatalf("decoded text %q holds a NUL or is not UTF-8", s)
			}
		}
		re := frame(nearestBridge, tlv(tlvChassisID, sub(7, n.ChassisId)...), tlv(tlvPortID, sub(7, n.PortId)...), ttl(got.TTL),
			tlv(tlvSysName, []byte(n.SystemName)...), tlv(tlvPortDesc, []byte(n.PortDescription)...), tlv(tlvEnd))
		if len(n.ChassisId) > 255 || len(n.PortId) > 255 || len(n.SystemName) > 511 || len(n.PortDescription) > 511 {
			return // UTF-8 widening of Latin-1 may not fit a TLV again
		}
		again, err := ParseLLDPFrame(re)
		if err != nil {
			t.Fatalf("re-encoded %v does not parse: %v", n, err)
		}
		if !proto.Equal(again.Neighbour, n) || again.TTL != got.TTL {
			t.Fatalf("round trip: %v ttl %d became %v ttl %d", n, got.TTL, again.Neighbour, again.TTL)
		}
	})
}
