package lease

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func mustRange(t *testing.T, s string) Range {
	t.Helper()
	r, err := ParseRange(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestParseRange(t *testing.T) {
	for _, tc := range []struct {
		in, want string
		ok       bool
	}{
		{"10.0.0.10-10.0.0.20", "10.0.0.10-10.0.0.20", true},
		{" 10.0.0.10 - 10.0.0.10 ", "10.0.0.10-10.0.0.10", true},
		{"fd00::10-fd00::ff", "fd00::10-fd00::ff", true},
		{"::ffff:10.0.0.1-10.0.0.2", "10.0.0.1-10.0.0.2", true},
		{"10.0.0.20-10.0.0.10", "", false},
		{"10.0.0.1-fd00::1", "", false},
		{"10.0.0.1", "", false},
		{"fe80::1%eth0-fe80::2%eth0", "", false},
		{"x-y", "", false},
	} {
		r, err := ParseRange(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("%q: err %v, want ok=%v", tc.in, err, tc.ok)
			continue
		}
		if tc.ok && r.String() != tc.want {
			t.Errorf("%q: %s, want %s", tc.in, r, tc.want)
		}
	}
}

func TestOfferCommitStickiness(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "leases.json")
	s, warn, err := Open(path)
	if err != nil || warn != nil {
		t.Fatal(err, warn)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.SetClock(func() time.Time { return now })
	p := Pool{Range: mustRange(t, "10.0.0.10-10.0.0.12"), Exclude: []netip.Addr{netip.MustParseAddr("10.0.0.11")}}

	a, err := s.Offer("v4:a", "aa", p, netip.Addr{}, time.Minute)
	if err != nil || a.Addr.String() != "10.0.0.10" {
		t.Fatalf("first offer %v %v", a, err)
	}
	b, err := s.Offer("v4:b", "bb", p, netip.Addr{}, time.Minute)
	if err != nil || b.Addr.String() != "10.0.0.12" {
		t.Fatalf("second offer skips the excluded address: %v %v", b, err)
	}
	if _, err := s.Offer("v4:c", "cc", p, netip.Addr{}, time.Minute); !errors.Is(err, ErrExhausted) {
		t.Fatalf("third client: %v, want exhausted", err)
	}
	if _, err := s.Commit("v4:c", "cc", p, a.Addr, time.Hour); !errors.Is(err, ErrTaken) {
		t.Fatalf("commit of another's address: %v", err)
	}
	if _, err := s.Commit("v4:a", "aa", p, netip.MustParseAddr("10.0.0.11"), time.Hour); !errors.Is(err, ErrTaken) {
		t.Fatalf("commit of an excluded address: %v", err)
	}
	if l, err := s.Commit("v4:a", "aa", p, a.Addr, time.Hour); err != nil || !l.Expires.Equal(now.Add(time.Hour)) {
		t.Fatalf("commit: %v %v", l, err)
	}
	// An offer does not shorten a committed lease.
	if l, _ := s.Offer("v4:a", "aa", p, netip.Addr{}, time.Minute); !l.Expires.Equal(now.Add(time.Hour)) {
		t.Fatalf("offer shortened the lease to %v", l.Expires)
	}
	if n := s.InUse(false); n != 2 {
		t.Fatalf("in use %d, want 2", n)
	}
	if l, ok := s.ByMAC("aa", false); !ok || l.Addr != a.Addr {
		t.Fatalf("by MAC: %v %v", l, ok)
	}

	// b's offer runs out: c gets b's address, b is moved on when it comes back.
	now = now.Add(2 * time.Minute)
	c, err := s.Offer("v4:c", "cc", p, netip.Addr{}, time.Minute)
	if err != nil || c.Addr != b.Addr {
		t.Fatalf("expired address reused: %v %v", c, err)
	}
	if _, err := s.Offer("v4:b", "bb", p, netip.Addr{}, time.Minute); !errors.Is(err, ErrExhausted) {
		t.Fatalf("b after losing its address: %v", err)
	}

	// Released, a's address stays a's: it is the only expired binding, but
	// it is still a's key.
	if err := s.Release("v4:a", a.Addr); err != nil {
		t.Fatal(err)
	}
	if l, err := s.Offer("v4:a", "aa", p, netip.Addr{}, time.Minute); err != nil || l.Addr != a.Addr {
		t.Fatalf("released client comes back: %v %v", l, err)
	}

	// Reopened from disk: the same bindings.
	s2, warn, err := Open(path)
	if err != nil || warn != nil {
		t.Fatal(err, warn)
	}
	s2.SetClock(func() time.Time { return now })
	if l, ok := s2.Lookup("v4:a"); !ok || l.Addr != a.Addr || l.MAC != "aa" {
		t.Fatalf("after reopen: %v %v", l, ok)
	}
	if l, ok := s2.Lookup("v4:c"); !ok || l.Addr != b.Addr {
		t.Fatalf("after reopen: %v %v", l, ok)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lease file %v %v, want mode 0600", fi, err)
	}
}

func TestRequestedAndDeclined(t *testing.T) {
	s, _, _ := Open("")
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s.SetClock(func() time.Time { return now })
	p := Pool{Range: mustRange(t, "fd00::10-fd00::1f")}
	want := netip.MustParseAddr("fd00::15")
	l, err := s.Offer("v6:x", "", p, want, time.Minute)
	if err != nil || l.Addr != want {
		t.Fatalf("requested free address: %v %v", l, err)
	}
	if l, _ := s.Offer("v6:y", "", p, want, time.Minute); l.Addr == want {
		t.Fatal("requested address of another client granted")
	}
	if l, _ := s.Offer("v6:z", "", p, netip.MustParseAddr("10.0.0.1"), time.Minute); !p.Range.Contains(l.Addr) {
		t.Fatalf("out-of-range request: %v", l)
	}
	if err := s.Decline(netip.MustParseAddr("fd00::10"), time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Commit("v6:w", "", p, netip.MustParseAddr("fd00::10"), time.Hour); !errors.Is(err, ErrTaken) {
		t.Fatalf("declined address committed: %v", err)
	}
	now = now.Add(2 * time.Hour)
	if _, err := s.Commit("v6:w", "", p, netip.MustParseAddr("fd00::10"), time.Hour); err != nil {
		t.Fatalf("declined address after its hold: %v", err)
	}
}

// TestPoolScanIsBounded: a /64 range must not be walked address by address.
func TestPoolScanIsBounded(t *testing.T) {
	s, _, _ := Open("")
	p := Pool{Range: mustRange(t, "fd00::-fd00::ffff:ffff:ffff:ffff")}
	for i := range 200 {
		if _, err := s.Offer("v6:"+string(rune('a'+i%26))+string(rune('a'+i/26)), "", p, netip.Addr{}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if n := s.InUse(true); n != 200 {
		t.Fatalf("in use %d", n)
	}
}

func TestOpenDamagedFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.json")
	if err := os.WriteFile(path, []byte(`{"version":1,"leases":[`), 0o600); err != nil {
		t.Fatal(err)
	}
	s, warn, err := Open(path)
	if err != nil || warn == nil || len(s.All()) != 0 {
		t.Fatalf("damaged file: %v %v %v", s, warn, err)
	}
	if _, err := os.Stat(path + ".damaged"); err != nil {
		t.Fatalf("damaged file not kept aside: %v", err)
	}
}

func TestDecodeDropsNonsense(t *testing.T) {
	in := `{"version":1,"leases":[
	 {"key":"v4:a","addr":"10.0.0.1","expires":"2026-01-01T00:00:00Z"},
	 {"key":"v4:a","addr":"10.0.0.2","expires":"2026-01-01T00:00:00Z"},
	 {"key":"v4:b","addr":"10.0.0.1","expires":"2026-01-01T00:00:00Z"},
	 {"key":"","addr":"10.0.0.3","expires":"2026-01-01T00:00:00Z"},
	 {"key":"v6:c","addr":"fe80::1%eth0","expires":"2026-01-01T00:00:00Z"},
	 {"key":"declined","addr":"10.0.0.4","expires":"2026-01-01T00:00:00Z"},
	 {"key":"declined","addr":"10.0.0.5","expires":"2026-01-01T00:00:00Z"}]}`
	ls, err := Decode([]byte(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != 3 || ls[0].Key != "v4:a" || ls[1].Addr.String() != "10.0.0.4" || ls[2].Addr.String() != "10.0.0.5" {
		t.Fatalf("decoded %+v", ls)
	}
	if _, err := Decode([]byte(`{"version":2,"leases":[]}`)); err == nil {
		t.Fatal("unknown version accepted")
	}
}

// FuzzDecode: whatever is on disk, Decode does not panic, and what it
// accepts survives an encode/decode round trip unchanged.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"version":1,"leases":[{"key":"v4:a","mac":"aa:bb:cc:dd:ee:ff","addr":"10.0.0.1","expires":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"version":1,"leases":[{"key":"v6:x/1","addr":"fd00::1","expires":"2026-01-01T00:00:00Z"}]}`))
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		ls, err := Decode(b)
		if err != nil {
			return
		}
		enc, err := Encode(ls)
		if err != nil {
			t.Fatalf("encode of decoded leases: %v", err)
		}
		back, err := Decode(enc)
		if err != nil || len(back) != len(ls) {
			t.Fatalf("round trip: %d leases, then %d (%v)", len(ls), len(back), err)
		}
	})
}
