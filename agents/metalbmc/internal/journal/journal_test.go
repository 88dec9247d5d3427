package journal

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

func TestReplayAfterReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "journal")
	j, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	power := Key{Machine: "m1", Kind: "power"}
	boot := Key{Machine: "m1", Kind: "boot"}
	if err := j.Start(power, 3); err != nil {
		t.Fatal(err)
	}
	if err := j.Finish(power, 3, "succeeded", ""); err != nil {
		t.Fatal(err)
	}
	// A crash between start and done leaves "started".
	if err := j.Start(boot, 1); err != nil {
		t.Fatal(err)
	}
	if err := j.Finish(power, 2, "succeeded", ""); err == nil {
		t.Error("an older generation was accepted")
	}
	// No Close: a killed process does not close its files.

	j2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer j2.Close()
	if r, ok := j2.Get(power); !ok || r.Generation != 3 || r.Phase != Done || r.Outcome != "succeeded" {
		t.Errorf("power = %+v, %v", r, ok)
	}
	if r, ok := j2.Get(boot); !ok || r.Generation != 1 || r.Phase != Started {
		t.Errorf("boot = %+v, %v", r, ok)
	}
	// Compacted: one line per intent.
	b, _ := os.ReadFile(path)
	if n := strings.Count(string(b), "\n"); n != 2 {
		t.Errorf("%d lines after compaction:\n%s", n, b)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
}

func TestDamageIsSkipped(t *testing.T) {
	for _, tc := range []struct {
		name, content string
		want          uint64
	}{
		{"torn last line", `{"machine":"m","kind":"power","generation":4,"phase":"done"}` + "\n" + `{"machine":"m","kind":"power","gener`, 4},
		{"garbage", "\x00\x01not json\n" + `{"machine":"m","kind":"power","generation":2,"phase":"started"}` + "\n", 2},
		{"unknown phase", `{"machine":"m","kind":"power","generation":9,"phase":"maybe"}` + "\n", 0},
		{"empty key", `{"machine":"","kind":"power","generation":9,"phase":"done"}` + "\n", 0},
		{"older after newer", `{"machine":"m","kind":"power","generation":5,"phase":"done"}` + "\n" + `{"machine":"m","kind":"power","generation":1,"phase":"started"}` + "\n", 5},
		{"overlong line", strings.Repeat("x", maxLine+10) + "\n" + `{"machine":"m","kind":"power","generation":7,"phase":"done"}` + "\n", 7},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "journal")
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			j, err := Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer j.Close()
			r, _ := j.Get(Key{Machine: "m", Kind: "power"})
			if r.Generation != tc.want {
				t.Errorf("generation %d, want %d", r.Generation, tc.want)
			}
		})
	}
}

func TestConcurrentWrites(t *testing.T) {
	j, err := Open(filepath.Join(t.TempDir(), "journal"))
	if err != nil {
		t.Fatal(err)
	}
	defer j.Close()
	var wg sync.WaitGroup
	for i := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k := Key{Machine: string(rune('a' + i)), Kind: "power"}
			for g := uint64(1); g <= 20; g++ {
				if err := j.Start(k, g); err != nil {
					t.Error(err)
				}
				if err := j.Finish(k, g, "succeeded", ""); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if n := len(j.All()); n != 16 {
		t.Errorf("%d records", n)
	}
}
