// Package file writes the state files of agents, the installer and the
// lab so that a crash or power loss leaves the previous content or the
// new one, never a torn file. (central has its own copy in
// central/internal/file: the dependency rules let no package be shared
// between central and the agents except proto/.)
package file

import (
	"fmt"
	"os"
	"path/filepath"
)

// WriteAtomic replaces path with b durably: a temporary file in the same
// directory (so the rename cannot cross filesystems), fsync, rename, fsync
// of the directory. The mode is set on the temporary file before anything
// is written, so a secret is never readable by others, whatever the umask.
// On an error path is left as it was and the temporary file is removed.
func WriteAtomic(path string, b []byte, mode os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(b); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	// Persist the rename itself. Best effort: some filesystems refuse to
	// fsync a directory, and the data is in place either way.
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}
