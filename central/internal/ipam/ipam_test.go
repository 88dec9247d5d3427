package ipam_test

import (
	"context"
	"errors"
	"fmt"
	"math/big"
	"net/netip"
	"os"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/ipam"
	"github.com/metalfleet/metalfleet/central/internal/pgtest"
	"github.com/metalfleet/metalfleet/central/internal/store"
)

var pg *pgtest.Cluster

func TestMain(m *testing.M) { os.Exit(pgtest.Run(m, &pg)) }

func newStore(t testing.TB) *store.Store {
	t.Helper()
	ctx := context.Background()
	st, err := store.Open(ctx, pg.NewDatabase(t), nil, store.WithMaxConns(80))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(st.Close)
	if err := st.Migrate(ctx); err != nil {
		t.Fatal(err)
	}
	return st
}

func TestHostRange(t *testing.T) {
	tests := []struct {
		prefix      string
		first, last string
	}{
		{"10.0.0.0/24", "10.0.0.1", "10.0.0.254"},
		{"10.0.0.0/31", "10.0.0.0", "10.0.0.1"},
		{"10.0.0.7/32", "10.0.0.7", "10.0.0.7"},
		{"fd00::/64", "fd00::1", "fd00::ffff:ffff:ffff:ffff"},
		{"fd00::/127", "fd00::", "fd00::1"},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			p := netip.MustParsePrefix(tt.prefix).Masked()
			f, l := ipam.HostRange(p)
			is4 := p.Addr().Is4()
			if got := ipam.UnitAddr(f, is4).String(); got != tt.first {
				t.Errorf("first = %s, want %s", got, tt.first)
			}
			if got := ipam.UnitAddr(l, is4).String(); got != tt.last {
				t.Errorf("last = %s, want %s", got, tt.last)
			}
		})
	}
}

func TestChildPrefix(t *testing.T) {
	tests := []struct {
		parent string
		bits   int
		slot   int64
		want   string
		slots  int64
	}{
		{"10.128.0.0/14", 22, 0, "10.128.0.0/22", 256},
		{"10.128.0.0/14", 22, 255, "10.131.252.0/22", 256},
		{"fd00:10::/48", 64, 1, "fd00:10:0:1::/64", 65536},
	}
	for _, tt := range tests {
		p := netip.MustParsePrefix(tt.parent)
		n, err := ipam.ChildSlots(p, tt.bits)
		if err != nil || n.Int64() != tt.slots {
			t.Errorf("ChildSlots(%s,%d) = %v, %v; want %d", p, tt.bits, n, err, tt.slots)
		}
		if got := ipam.ChildPrefix(p, tt.bits, big.NewInt(tt.slot)).String(); got != tt.want {
			t.Errorf("ChildPrefix(%s,%d,%d) = %s, want %s", p, tt.bits, tt.slot, got, tt.want)
		}
	}
	if _, err := ipam.ChildSlots(netip.MustParsePrefix("10.0.0.0/24"), 24); err == nil {
		t.Error("child as long as parent accepted")
	}
}

// race makes workers goroutines take units from pool until it is exhausted
// and checks that every unit of [first, last] was handed out exactly once.
func race(t *testing.T, st *store.Store, pool string, first, last *big.Int, workers int) {
	t.Helper()
	ctx := context.Background()
	var (
		mu   sync.Mutex
		got  = map[string]int{}
		wg   sync.WaitGroup
		errs = make(chan error, workers)
	)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				var u *big.Int
				err := st.Tx(ctx, func(tx pgx.Tx) error {
					var err error
					u, err = ipam.Acquire(ctx, tx, pool)
					return err
				})
				if errors.Is(err, ipam.ErrExhausted) {
					return
				}
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				got[u.String()]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("acquire: %v", err)
	}
	want := new(big.Int).Sub(last, first).Int64() + 1
	if int64(len(got)) != want {
		t.Fatalf("handed out %d distinct units, want %d", len(got), want)
	}
	for u := new(big.Int).Set(first); u.Cmp(last) <= 0; u.Add(u, big.NewInt(1)) {
		if got[u.String()] != 1 {
			t.Fatalf("unit %s handed out %d times", u, got[u.String()])
		}
	}
}

func TestAcquireRaceUntilExhausted(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	for _, cidr := range []string{"192.0.2.0/25", "2001:db8::/121"} {
		t.Run(cidr, func(t *testing.T) {
			p := netip.MustParsePrefix(cidr)
			first, last := ipam.HostRange(p)
			id := ipam.IPPoolID(p)
			if err := st.Tx(ctx, func(tx pgx.Tx) error { return ipam.CreatePool(ctx, tx, id, ipam.KindIP, first, last) }); err != nil {
				t.Fatal(err)
			}
			race(t, st, id, first, last, 64)
			// Released units come back, and only they.
			u := new(big.Int).Add(first, big.NewInt(3))
			if err := st.Tx(ctx, func(tx pgx.Tx) error { return ipam.Release(ctx, tx, id, u) }); err != nil {
				t.Fatal(err)
			}
			race(t, st, id, u, u, 8)
			size, free, err := ipam.Usage(ctx, st.Pool(), id)
			if err != nil || free.Sign() != 0 || size.Cmp(new(big.Int).Add(new(big.Int).Sub(last, first), big.NewInt(1))) != 0 {
				t.Fatalf("usage = %v/%v, %v", size, free, err)
			}
		})
	}
}

func TestAcquireSpecific(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	first, last := big.NewInt(10), big.NewInt(20)
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(st.Tx(ctx, func(tx pgx.Tx) error { return ipam.CreatePool(ctx, tx, "p", ipam.KindVRF, first, last) }))
	tx := func(fn func(pgx.Tx) error) error { return st.Tx(ctx, fn) }
	tests := []struct {
		unit int64
		want error
	}{
		{15, nil},
		{15, ipam.ErrTaken},
		{10, nil},
		{20, nil},
		{9, ipam.ErrOutOfRange},
		{21, ipam.ErrOutOfRange},
		{16, nil},
		{14, nil},
	}
	for _, tt := range tests {
		err := tx(func(tx pgx.Tx) error { return ipam.AcquireSpecific(ctx, tx, "p", big.NewInt(tt.unit)) })
		if !errors.Is(err, tt.want) {
			t.Errorf("AcquireSpecific(%d) = %v, want %v", tt.unit, err, tt.want)
		}
	}
	// What is left must be exactly 11..13 and 17..19, in order for a single client.
	var order []string
	for {
		var u *big.Int
		err := tx(func(tx pgx.Tx) error {
			var err error
			u, err = ipam.Acquire(ctx, tx, "p")
			return err
		})
		if errors.Is(err, ipam.ErrExhausted) {
			break
		}
		must(err)
		order = append(order, u.String())
	}
	if fmt.Sprint(order) != "[11 12 13 17 18 19]" {
		t.Fatalf("remaining units taken = %v", order)
	}
	if err := tx(func(tx pgx.Tx) error { _, err := ipam.Acquire(ctx, tx, "nope"); return err }); !errors.Is(err, ipam.ErrNoPool) {
		t.Fatalf("acquire from missing pool = %v", err)
	}
}

// A specific unit and next-free callers racing must never collide.
func TestAcquireSpecificRacesNextFree(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	first, last := big.NewInt(0), big.NewInt(199)
	if err := st.Tx(ctx, func(tx pgx.Tx) error { return ipam.CreatePool(ctx, tx, "p", ipam.KindVRF, first, last) }); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	got := map[int64]int{}
	var wg sync.WaitGroup
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 20; i++ {
				if w%2 == 0 {
					u := int64((w*20 + i) % 200)
					err := st.Tx(ctx, func(tx pgx.Tx) error { return ipam.AcquireSpecific(ctx, tx, "p", big.NewInt(u)) })
					if err == nil {
						mu.Lock()
						got[u]++
						mu.Unlock()
					} else if !errors.Is(err, ipam.ErrTaken) {
						t.Error(err)
						return
					}
					continue
				}
				var u *big.Int
				err := st.Tx(ctx, func(tx pgx.Tx) error {
					var err error
					u, err = ipam.Acquire(ctx, tx, "p")
					return err
				})
				if errors.Is(err, ipam.ErrExhausted) {
					return
				}
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got[u.Int64()]++
				mu.Unlock()
			}
		}(w)
	}
	wg.Wait()
	for u, n := range got {
		if n != 1 {
			t.Fatalf("unit %d handed out %d times", u, n)
		}
	}
	_, free, err := ipam.Usage(ctx, st.Pool(), "p")
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got))+free.Int64() != 200 {
		t.Fatalf("%d taken + %d free != 200: free list lost or duplicated units", len(got), free.Int64())
	}
}

// Releasing a unit from the used head of a range keeps spans disjoint: the
// unit comes back first, the range's free part next, and a double release
// is refused.
func TestReleaseInsideRangeHead(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	if err := st.Tx(ctx, func(tx pgx.Tx) error {
		return ipam.CreatePool(ctx, tx, "p", ipam.KindVRF, big.NewInt(1), big.NewInt(640))
	}); err != nil {
		t.Fatal(err)
	}
	take := func() int64 {
		t.Helper()
		var u *big.Int
		if err := st.Tx(ctx, func(tx pgx.Tx) error {
			var err error
			u, err = ipam.Acquire(ctx, tx, "p")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return u.Int64()
	}
	release := func(u int64) error {
		return st.Tx(ctx, func(tx pgx.Tx) error { return ipam.Release(ctx, tx, "p", big.NewInt(u)) })
	}
	for want := int64(1); want <= 4; want++ {
		if got := take(); got != want {
			t.Fatalf("take = %d, want %d", got, want)
		}
	}
	if err := release(2); err != nil {
		t.Fatal(err)
	}
	if err := release(5); !errors.Is(err, ipam.ErrNotAllocated) {
		t.Fatalf("release of a free unit = %v, want ErrNotAllocated", err)
	}
	if err := release(2); !errors.Is(err, ipam.ErrNotAllocated) {
		t.Fatalf("double release = %v, want ErrNotAllocated", err)
	}
	// A specific unit inside the freed head and one in the range's free part.
	if err := st.Tx(ctx, func(tx pgx.Tx) error { return ipam.AcquireSpecific(ctx, tx, "p", big.NewInt(3)) }); !errors.Is(err, ipam.ErrTaken) {
		t.Fatalf("specific 3 = %v, want ErrTaken", err)
	}
	for _, want := range []int64{2, 5, 6} {
		if got := take(); got != want {
			t.Fatalf("take = %d, want %d", got, want)
		}
	}
	_, free, err := ipam.Usage(ctx, st.Pool(), "p")
	if err != nil || free.Int64() != 640-6 {
		t.Fatalf("free = %v, %v; want %d", free, err, 640-6)
	}
}
