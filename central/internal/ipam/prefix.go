package ipam

import (
	"fmt"
	"math/big"
	"net/netip"
)

// Family of an address: 4 or 6.
func Family(p netip.Prefix) int {
	if p.Addr().Is4() {
		return 4
	}
	return 6
}

// AddrUnit is an address as an integer (32 bits for IPv4, 128 for IPv6).
func AddrUnit(a netip.Addr) *big.Int {
	return new(big.Int).SetBytes(a.AsSlice())
}

// UnitAddr is the inverse of AddrUnit.
func UnitAddr(u *big.Int, is4 bool) netip.Addr {
	n := 16
	if is4 {
		n = 4
	}
	b := u.FillBytes(make([]byte, n))
	a, _ := netip.AddrFromSlice(b)
	return a
}

// HostRange is the range of addresses of p handed out to hosts: IPv4 leaves
// out network and broadcast addresses (except /31 and /32), IPv6 the
// subnet-router anycast address (except /127 and /128).
func HostRange(p netip.Prefix) (first, last *big.Int) {
	p = p.Masked()
	bits := p.Addr().BitLen()
	hostBits := uint(bits - p.Bits())
	first = AddrUnit(p.Addr())
	span := new(big.Int).Lsh(big.NewInt(1), hostBits)
	last = new(big.Int).Add(first, span)
	last.Sub(last, big.NewInt(1))
	if hostBits >= 2 {
		first.Add(first, big.NewInt(1))
		if p.Addr().Is4() {
			last.Sub(last, big.NewInt(1))
		}
	}
	return first, last
}

// ChildSlots is the number of child prefixes of length bits that fit in p.
func ChildSlots(p netip.Prefix, bits int) (*big.Int, error) {
	if bits <= p.Bits() || bits > p.Addr().BitLen() {
		return nil, fmt.Errorf("child prefix length /%d does not fit in %s", bits, p)
	}
	return new(big.Int).Lsh(big.NewInt(1), uint(bits-p.Bits())), nil
}

// ChildPrefix is slot number slot of length bits inside p.
func ChildPrefix(p netip.Prefix, bits int, slot *big.Int) netip.Prefix {
	off := new(big.Int).Lsh(slot, uint(p.Addr().BitLen()-bits))
	base := new(big.Int).Add(AddrUnit(p.Masked().Addr()), off)
	return netip.PrefixFrom(UnitAddr(base, p.Addr().Is4()), bits)
}

// Overlaps reports whether a and b share any address.
func Overlaps(a, b netip.Prefix) bool {
	return a.Addr().Is4() == b.Addr().Is4() && a.Overlaps(b)
}

// Pool ids derive from the prefix, which is globally unique.
func IPPoolID(p netip.Prefix) string    { return "ip:" + p.Masked().String() }
func ChildPoolID(p netip.Prefix) string { return "child:" + p.Masked().String() }

// VRFPoolID is the single pool of VRF ids / VNIs.
const VRFPoolID = "vrf"
