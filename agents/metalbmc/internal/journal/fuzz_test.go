package journal

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpen: any file is replayed without panicking, and the journal it
// leaves opens again to the same records (compaction keeps what replay
// found).
func FuzzOpen(f *testing.F) {
	f.Add(`{"machine":"m","kind":"power","generation":4,"phase":"done","outcome":"succeeded"}` + "\n")
	f.Add(`{"machine":"m","kind":"power","generation":4,"phase":"started"}` + "\n" + `{"machine":"m","kind":"pow`)
	f.Add("\n\n{}\n[]\nnull\n")
	f.Fuzz(func(t *testing.T, content string) {
		path := filepath.Join(t.TempDir(), "journal")
		if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		j, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		first := j.All()
		j.Close()
		j2, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer j2.Close()
		second := j2.All()
		if len(first) != len(second) {
			t.Fatalf("%d records, then %d", len(first), len(second))
		}
		for k, r := range first {
			if s, ok := second[k]; !ok || s.Generation != r.Generation || s.Phase != r.Phase || s.Outcome != r.Outcome {
				t.Fatalf("%v: %+v, then %+v", k, r, s)
			}
		}
	})
}
