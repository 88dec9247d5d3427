package file

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteAtomic(t *testing.T) {
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, path string) // what is at path before
		content []byte
		mode    os.FileMode
		wantErr bool
	}{
		{name: "new file", content: []byte("hello\n"), mode: 0o600},
		{name: "new file, readable by others", content: []byte("{}"), mode: 0o644},
		{name: "empty content", content: nil, mode: 0o600},
		{
			// The old file's mode must not survive: a secret rewritten
			// over a world-readable file stays private.
			name: "replaces a file with another mode", content: []byte("new"), mode: 0o600,
			prepare: func(t *testing.T, path string) {
				if err := os.WriteFile(path, []byte("old content, longer"), 0o644); err != nil {
					t.Fatal(err)
				}
			},
		},
		{
			name: "rename onto a directory fails", content: []byte("x"), mode: 0o600, wantErr: true,
			prepare: func(t *testing.T, path string) {
				if err := os.Mkdir(path, 0o755); err != nil {
					t.Fatal(err)
				}
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "state.json")
			if tc.prepare != nil {
				tc.prepare(t, path)
			}
			err := WriteAtomic(path, tc.content, tc.mode)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			entries, rerr := os.ReadDir(dir)
			if rerr != nil {
				t.Fatal(rerr)
			}
			if len(entries) != 1 || entries[0].Name() != "state.json" {
				var names []string
				for _, e := range entries {
					names = append(names, e.Name())
				}
				t.Errorf("directory holds %q, want only state.json (no temporary file left)", names)
			}
			if tc.wantErr {
				return
			}
			got, rerr := os.ReadFile(path)
			if rerr != nil {
				t.Fatal(rerr)
			}
			if !bytes.Equal(got, tc.content) {
				t.Errorf("content = %q, want %q", got, tc.content)
			}
			fi, rerr := os.Stat(path)
			if rerr != nil {
				t.Fatal(rerr)
			}
			if fi.Mode().Perm() != tc.mode {
				t.Errorf("mode = %v, want %v", fi.Mode().Perm(), tc.mode)
			}
		})
	}
}

func TestWriteAtomicMissingDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing", "state.json")
	if err := WriteAtomic(path, []byte("x"), 0o600); err == nil {
		t.Fatal("want an error for a missing directory")
	}
}
