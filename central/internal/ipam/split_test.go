package ipam

import (
	"math/big"
	"testing"
)

func TestSplit(t *testing.T) {
	big2 := func(exp uint) *big.Int { return new(big.Int).Lsh(big.NewInt(1), exp) }
	tests := []struct {
		name        string
		first, last *big.Int
		n           int
		parts       int
		firstStop   string
	}{
		{"fewer units than shards", big.NewInt(1), big.NewInt(5), 64, 5, "1"},
		{"even", big.NewInt(0), big.NewInt(127), 64, 64, "1"},
		{"remainder spread", big.NewInt(1), big.NewInt(130), 64, 64, "3"},
		{"huge pool keeps front shards small", big.NewInt(1), new(big.Int).Sub(big2(64), big.NewInt(1)), 64, 64, big2(32).String()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			starts, stops := split(tt.first, tt.last, tt.n)
			if len(starts) != tt.parts || len(stops) != tt.parts {
				t.Fatalf("%d parts, want %d", len(starts), tt.parts)
			}
			if stops[0] != tt.firstStop {
				t.Fatalf("first stop %s, want %s", stops[0], tt.firstStop)
			}
			// Contiguous, covering exactly [first, last].
			if starts[0] != tt.first.String() || stops[len(stops)-1] != tt.last.String() {
				t.Fatalf("covers %s..%s, want %s..%s", starts[0], stops[len(stops)-1], tt.first, tt.last)
			}
			for i := 1; i < len(starts); i++ {
				prev := mustInt(stops[i-1])
				if mustInt(starts[i]).Cmp(prev.Add(prev, big.NewInt(1))) != 0 {
					t.Fatalf("gap or overlap between part %d and %d", i-1, i)
				}
			}
		})
	}
}
