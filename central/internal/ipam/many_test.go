package ipam_test

import (
	"context"
	"fmt"
	"math/big"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/metalfleet/metalfleet/central/internal/ipam"
)

// AcquireMany takes across range ends, 16 goroutines taking three at a
// time never get a unit twice, and an exhausted pool gives what is left
// and then nothing, without an error.
func TestAcquireManyRace(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	first, last := big.NewInt(1), big.NewInt(200)
	if err := st.Tx(ctx, func(tx pgx.Tx) error {
		return ipam.CreatePools(ctx, tx, []ipam.PoolDef{{ID: "p", Kind: ipam.KindVRF, First: first, Last: last, Ranges: 7}})
	}); err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		got = map[int64]int{}
		wg  sync.WaitGroup
	)
	for range 16 {
		wg.Go(func() {
			for {
				var us []*big.Int
				if err := st.Tx(ctx, func(tx pgx.Tx) error {
					var err error
					us, err = ipam.AcquireMany(ctx, tx, "p", 3)
					return err
				}); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				for _, u := range us {
					got[u.Int64()]++
				}
				mu.Unlock()
				if len(us) < 3 {
					return
				}
			}
		})
	}
	wg.Wait()
	if len(got) != 200 {
		t.Fatalf("%d distinct units, want 200", len(got))
	}
	for u := int64(1); u <= 200; u++ {
		if got[u] != 1 {
			t.Fatalf("unit %d handed out %d times", u, got[u])
		}
	}
	_, free, err := ipam.Usage(ctx, st.Pool(), "p")
	if err != nil || free.Sign() != 0 {
		t.Fatalf("free = %v, %v", free, err)
	}
}

// CreatePoolsCTE numbers its parameters after the ones the bigger
// statement already has, whatever their number.
func TestCreatePoolsCTEAfterCallerArgs(t *testing.T) {
	st := newStore(t)
	ctx := context.Background()
	for _, n := range []int{0, 1, 5} {
		var args []any
		sel := "SELECT 0"
		for i := range n {
			args = append(args, i+1)
			sel += fmt.Sprintf(" + $%d::INT", i+1)
		}
		id := fmt.Sprintf("after-%d", n)
		cte, args, err := ipam.CreatePoolsCTE([]ipam.PoolDef{{ID: id, Kind: ipam.KindVRF, First: big.NewInt(1), Last: big.NewInt(10), Ranges: 2}}, args)
		if err != nil {
			t.Fatal(err)
		}
		var sum int
		if err := st.Tx(ctx, func(tx pgx.Tx) error {
			return tx.QueryRow(ctx, `WITH `+cte+` `+sel, args...).Scan(&sum)
		}); err != nil {
			t.Fatalf("%d args before: %v", n, err)
		}
		if want := n * (n + 1) / 2; sum != want {
			t.Fatalf("%d args before: the statement's own parameters sum to %d, want %d", n, sum, want)
		}
		size, free, err := ipam.Usage(ctx, st.Pool(), id)
		if err != nil || size.Int64() != 10 || free.Int64() != 10 {
			t.Fatalf("%d args before: pool size %v, free %v, %v; want 10, 10", n, size, free, err)
		}
	}
}
