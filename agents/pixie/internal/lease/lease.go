// Package lease keeps the addresses metal-pixie hands out over DHCPv4 and
// DHCPv6 in one small file, so that a machine keeps its address across
// pixie restarts: the installer, the event log and an operator reading
// `ip neigh` all see the same address for the same MAC.
package lease

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/metalfleet/metalfleet/agents/agent/file"
)

// ErrExhausted: every address of the pool is leased and none has expired.
var ErrExhausted = errors.New("address pool exhausted")

// ErrTaken: the address asked for belongs to another client, or is not in
// the pool.
var ErrTaken = errors.New("address not available")

// declinedKey holds addresses a client found in use (DHCPDECLINE): someone
// else on the wire has them, so they stay out of the pool for a while.
const declinedKey = "declined"

// Lease binds a client to an address until Expires. A lease that expired
// is kept: its client gets the same address again as long as nobody else
// needed it meanwhile.
type Lease struct {
	// Key names the client: "v4:<client id>" or "v6:<duid>/<iaid>".
	Key string `json:"key"`
	// MAC of the client when known (lower-case colon notation).
	MAC     string     `json:"mac,omitempty"`
	Addr    netip.Addr `json:"addr"`
	Expires time.Time  `json:"expires"`
}

// Active reports whether l binds its address at t.
func (l Lease) Active(t time.Time) bool { return t.Before(l.Expires) }

// Range is an inclusive address range of one family.
type Range struct {
	First, Last netip.Addr
}

// ParseRange reads "first-last" (both of one family, first <= last).
func ParseRange(s string) (Range, error) {
	a, b, ok := strings.Cut(strings.TrimSpace(s), "-")
	if !ok {
		return Range{}, fmt.Errorf("range %q: want first-last", s)
	}
	first, err := netip.ParseAddr(strings.TrimSpace(a))
	if err != nil {
		return Range{}, fmt.Errorf("range %q: %w", s, err)
	}
	last, err := netip.ParseAddr(strings.TrimSpace(b))
	if err != nil {
		return Range{}, fmt.Errorf("range %q: %w", s, err)
	}
	first, last = first.Unmap(), last.Unmap()
	if first.Is4() != last.Is4() || first.Zone() != "" || last.Zone() != "" {
		return Range{}, fmt.Errorf("range %q: both ends must be addresses of one family", s)
	}
	if last.Less(first) {
		return Range{}, fmt.Errorf("range %q: first is after last", s)
	}
	return Range{First: first, Last: last}, nil
}

// Contains reports whether a is in r.
func (r Range) Contains(a netip.Addr) bool {
	a = a.Unmap()
	return r.First.IsValid() && a.Is4() == r.First.Is4() && !a.Less(r.First) && !r.Last.Less(a)
}

func (r Range) String() string { return r.First.String() + "-" + r.Last.String() }

// Pool is a range minus addresses that must never be handed out (the
// server's own, a gateway inside the range).
type Pool struct {
	Range   Range
	Exclude []netip.Addr
}

func (p Pool) usable(a netip.Addr) bool {
	if !p.Range.Contains(a) {
		return false
	}
	for _, x := range p.Exclude {
		if x.Unmap() == a {
			return false
		}
	}
	return true
}

// Store holds every lease of both families and writes them to one file
// on every change (atomically: a crash leaves the old or the new file).
type Store struct {
	mu     sync.Mutex
	path   string
	byKey  map[string]*Lease
	byAddr map[netip.Addr]*Lease
	now    func() time.Time
}

// Open loads the leases in path (a missing file is an empty store). A file
// that cannot be parsed is moved aside to path+".damaged" and the store
// starts empty: losing stickiness is better than not serving DHCP; the
// returned warning says so.
func Open(path string) (s *Store, warning error, err error) {
	s = &Store{path: path, byKey: map[string]*Lease{}, byAddr: map[netip.Addr]*Lease{}, now: time.Now}
	if path == "" {
		return s, nil, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, nil, fmt.Errorf("lease store: %w", err)
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("lease store: %w", err)
	}
	leases, derr := Decode(b)
	if derr != nil {
		if err := os.Rename(path, path+".damaged"); err != nil {
			return nil, nil, fmt.Errorf("lease store: move damaged file aside: %w", err)
		}
		return s, fmt.Errorf("lease store %s damaged, moved to %s.damaged, starting empty: %w", path, path, derr), nil
	}
	for i := range leases {
		s.put(&leases[i])
	}
	return s, nil, nil
}

// SetClock replaces the store's clock (tests).
func (s *Store) SetClock(now func() time.Time) {
	s.mu.Lock()
	s.now = now
	s.mu.Unlock()
}

// fileFormat is the on-disk form; version guards future changes.
type fileFormat struct {
	Version int     `json:"version"`
	Leases  []Lease `json:"leases"`
}

// maxFile bounds what Decode reads: a pool of a partition is hundreds or
// thousands of leases, never megabytes of them.
const maxFile = 64 << 20

// Decode parses a lease file. Entries that make no sense (no key, no
// address, a second lease for one address or key) are dropped rather
// than failing the whole file.
func Decode(b []byte) ([]Lease, error) {
	if len(b) > maxFile {
		return nil, fmt.Errorf("lease file larger than %d bytes", maxFile)
	}
	var f fileFormat
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("parse lease file: %w", err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("lease file version %d, want 1", f.Version)
	}
	seenKey := map[string]bool{}
	seenAddr := map[netip.Addr]bool{}
	out := make([]Lease, 0, len(f.Leases))
	for _, l := range f.Leases {
		l.Addr = l.Addr.Unmap()
		if l.Key == "" || len(l.Key) > 512 || !l.Addr.IsValid() || l.Addr.Zone() != "" || len(l.MAC) > 64 {
			continue
		}
		if l.Key != declinedKey && seenKey[l.Key] || seenAddr[l.Addr] {
			continue
		}
		seenKey[l.Key], seenAddr[l.Addr] = true, true
		out = append(out, l)
	}
	return out, nil
}

// Encode is the inverse of Decode, sorted by address for readable diffs.
func Encode(leases []Lease) ([]byte, error) {
	sorted := append([]Lease(nil), leases...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Addr.Less(sorted[j].Addr) })
	return json.MarshalIndent(fileFormat{Version: 1, Leases: sorted}, "", " ")
}

func (s *Store) put(l *Lease) {
	if l.Key != declinedKey {
		s.byKey[l.Key] = l
	}
	s.byAddr[l.Addr] = l
}

func (s *Store) drop(l *Lease) {
	if s.byKey[l.Key] == l {
		delete(s.byKey, l.Key)
	}
	if s.byAddr[l.Addr] == l {
		delete(s.byAddr, l.Addr)
	}
}

// Lookup returns the client's lease, expired or not.
func (s *Store) Lookup(key string) (Lease, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if l, ok := s.byKey[key]; ok {
		return *l, true
	}
	return Lease{}, false
}

// ByMAC returns the active lease of a MAC in the family of want (an
// address of that family), preferring the one that lasts longest.
func (s *Store) ByMAC(mac string, v6 bool) (Lease, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var best *Lease
	for _, l := range s.byKey {
		if l.MAC != mac || l.Addr.Is6() != v6 || !l.Active(s.now()) {
			continue
		}
		if best == nil || l.Expires.After(best.Expires) {
			best = l
		}
	}
	if best == nil {
		return Lease{}, false
	}
	return *best, true
}

// InUse counts the active leases of one family.
func (s *Store) InUse(v6 bool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	now := s.now()
	for _, l := range s.byKey {
		if l.Addr.Is6() == v6 && l.Active(now) {
			n++
		}
	}
	return n
}

// All returns a copy of every lease (for debugging and tests).
func (s *Store) All() []Lease {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.all()
}

func (s *Store) all() []Lease {
	out := make([]Lease, 0, len(s.byAddr))
	for _, l := range s.byAddr {
		out = append(out, *l)
	}
	return out
}

// Offer picks an address for a client and holds it for hold (DISCOVER,
// SOLICIT): the one it had before if that is still usable and free, else
// the one it asked for if free, else the lowest never-leased address,
// else the one whose lease expired longest ago. An active lease of the
// client is not shortened.
func (s *Store) Offer(key, mac string, p Pool, requested netip.Addr, hold time.Duration) (Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if l, ok := s.byKey[key]; ok && p.usable(l.Addr) {
		return s.bind(l, mac, now.Add(hold))
	}
	requested = requested.Unmap()
	if requested.IsValid() && p.usable(requested) {
		if other, ok := s.byAddr[requested]; !ok || !other.Active(now) {
			return s.rebind(key, mac, requested, now.Add(hold))
		}
	}
	a, err := s.free(p, now)
	if err != nil {
		return Lease{}, err
	}
	return s.rebind(key, mac, a, now.Add(hold))
}

// Commit binds addr to the client for ttl (REQUEST, RENEW): it must be in
// the pool and either the client's already or free.
func (s *Store) Commit(key, mac string, p Pool, addr netip.Addr, ttl time.Duration) (Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	addr = addr.Unmap()
	if !p.usable(addr) {
		return Lease{}, fmt.Errorf("%s: %w", addr, ErrTaken)
	}
	if other, ok := s.byAddr[addr]; ok && other.Key != key && other.Active(now) {
		return Lease{}, fmt.Errorf("%s: %w", addr, ErrTaken)
	}
	if l, ok := s.byKey[key]; ok && l.Addr == addr {
		l.Expires = now.Add(ttl)
		if mac != "" {
			l.MAC = mac
		}
		return *l, s.save()
	}
	return s.rebind(key, mac, addr, now.Add(ttl))
}

// Release ends the client's lease now; the binding stays, so the client
// gets the same address back if nobody takes it.
func (s *Store) Release(key string, addr netip.Addr) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.byKey[key]
	if !ok || l.Addr != addr.Unmap() {
		return nil
	}
	l.Expires = s.now()
	return s.save()
}

// Decline takes addr out of the pool for hold: a client found it in use.
func (s *Store) Decline(addr netip.Addr, hold time.Duration) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	addr = addr.Unmap()
	if l, ok := s.byAddr[addr]; ok {
		s.drop(l)
	}
	s.put(&Lease{Key: declinedKey, Addr: addr, Expires: s.now().Add(hold)})
	return s.save()
}

// bind extends l (never shortening it) and saves.
func (s *Store) bind(l *Lease, mac string, until time.Time) (Lease, error) {
	if until.After(l.Expires) {
		l.Expires = until
	}
	if mac != "" {
		l.MAC = mac
	}
	return *l, s.save()
}

// rebind moves the client to addr, evicting whatever expired lease held it.
func (s *Store) rebind(key, mac string, addr netip.Addr, until time.Time) (Lease, error) {
	if old, ok := s.byKey[key]; ok {
		s.drop(old)
	}
	if old, ok := s.byAddr[addr]; ok {
		s.drop(old)
	}
	l := &Lease{Key: key, MAC: mac, Addr: addr, Expires: until}
	s.put(l)
	return *l, s.save()
}

// free finds an address for a new binding. Never-leased addresses go
// first so that expired bindings keep their client's address as long as
// possible.
func (s *Store) free(p Pool, now time.Time) (netip.Addr, error) {
	// At most len(byAddr)+len(Exclude)+1 steps: every step past an
	// address either finds a free one or passes a known one.
	limit := len(s.byAddr) + len(p.Exclude) + 1
	for a, i := p.Range.First, 0; a.IsValid() && !p.Range.Last.Less(a) && i <= limit; a, i = a.Next(), i+1 {
		if _, taken := s.byAddr[a]; !taken && p.usable(a) {
			return a, nil
		}
	}
	var oldest *Lease
	for _, l := range s.byAddr {
		if !p.usable(l.Addr) || l.Active(now) {
			continue
		}
		if oldest == nil || l.Expires.Before(oldest.Expires) {
			oldest = l
		}
	}
	if oldest == nil {
		return netip.Addr{}, ErrExhausted
	}
	return oldest.Addr, nil
}

// save writes the whole store: fsync + rename, so that a crash leaves the
// previous file, never a torn one.
func (s *Store) save() error {
	if s.path == "" {
		return nil
	}
	b, err := Encode(s.all())
	if err != nil {
		return fmt.Errorf("encode leases: %w", err)
	}
	return file.WriteAtomic(s.path, b, 0o600)
}
