package pgembed

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

// constError lets ErrNotInstalled be a constant: the package keeps no mutable
// package-level state, and a const sentinel cannot be reassigned by a caller.
type constError string

func (e constError) Error() string { return string(e) }

// ErrNotInstalled is wrapped by every error caused by missing PostgreSQL server
// binaries, so callers can tell "install postgresql" apart from runtime failures.
const ErrNotInstalled constError = "PostgreSQL server binaries not found"

// debianPGRoot is where Debian's postgresql-NN packages put their binaries;
// they are deliberately not on PATH there (postgresql-common wraps them).
const debianPGRoot = "/usr/lib/postgresql"

// FindBinDir returns the directory holding the PostgreSQL server binaries
// (initdb and postgres). An explicit directory is used as-is and never falls
// back to searching, so a misconfiguration is reported rather than papered over.
// Otherwise it tries, in order: PATH, `pg_config --bindir`, and the highest
// version under /usr/lib/postgresql/*/bin.
func FindBinDir(explicit string) (string, error) {
	if explicit != "" {
		if hasServerBinaries(explicit) {
			return explicit, nil
		}
		return "", notInstalled(explicit)
	}

	var looked []string

	looked = append(looked, "PATH")
	if dir, ok := binDirFromPath(); ok {
		return dir, nil
	}

	if dir, ok := binDirFromPGConfig(); ok {
		return dir, nil
	} else if dir != "" {
		looked = append(looked, dir+" (pg_config --bindir)")
	} else {
		looked = append(looked, "pg_config --bindir")
	}

	looked = append(looked, debianPGRoot+"/*/bin")
	for _, dir := range debianBinDirs() {
		if hasServerBinaries(dir) {
			return dir, nil
		}
	}

	return "", notInstalled(strings.Join(looked, ", "))
}

func notInstalled(looked string) error {
	return fmt.Errorf(`%w (looked in %s): install the Debian package "postgresql" (apt-get install -y postgresql) or pass --db-url`,
		ErrNotInstalled, looked)
}

// binDirFromPath resolves symlinks because initdb locates postgres relative to
// its own real path; a PATH entry of symlinks (e.g. /usr/local/bin) is only
// usable if both links lead to the same real directory.
func binDirFromPath() (string, bool) {
	pg, err := exec.LookPath("postgres")
	if err != nil {
		return "", false
	}
	initdb, err := exec.LookPath("initdb")
	if err != nil {
		return "", false
	}
	realPG, err1 := filepath.EvalSymlinks(pg)
	realInitdb, err2 := filepath.EvalSymlinks(initdb)
	if err1 != nil || err2 != nil {
		return "", false
	}
	dir := filepath.Dir(realPG)
	if filepath.Dir(realInitdb) != dir || !hasServerBinaries(dir) {
		return "", false
	}
	return dir, true
}

// binDirFromPGConfig returns pg_config's answer even when it lacks the server
// binaries (on Debian pg_config often comes from libpq-dev alone), so the
// error message can say where we looked.
func binDirFromPGConfig() (string, bool) {
	pgConfig, err := exec.LookPath("pg_config")
	if err != nil {
		return "", false
	}
	// pg_config is a trivial program; the timeout only guards against a
	// broken wrapper script hanging Start forever.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, pgConfig, "--bindir").Output()
	if err != nil {
		return "", false
	}
	dir := strings.TrimSpace(string(out))
	if dir == "" {
		return "", false
	}
	return dir, hasServerBinaries(dir)
}

// debianBinDirs lists /usr/lib/postgresql/<version>/bin, highest version
// first. Versions compare numerically so that 10 sorts above 9.6.
func debianBinDirs() []string {
	entries, err := os.ReadDir(debianPGRoot)
	if err != nil {
		return nil
	}
	type cand struct {
		ver []int
		dir string
	}
	var cands []cand
	for _, e := range entries {
		ver, ok := parseVersion(e.Name())
		if !ok {
			continue
		}
		cands = append(cands, cand{ver, filepath.Join(debianPGRoot, e.Name(), "bin")})
	}
	sort.Slice(cands, func(i, j int) bool { return versionLess(cands[j].ver, cands[i].ver) })
	dirs := make([]string, len(cands))
	for i, c := range cands {
		dirs[i] = c.dir
	}
	return dirs
}

func parseVersion(s string) ([]int, bool) {
	var ver []int
	for part := range strings.SplitSeq(s, ".") {
		n, err := strconv.Atoi(part)
		if err != nil || n < 0 {
			return nil, false
		}
		ver = append(ver, n)
	}
	return ver, len(ver) > 0
}

func versionLess(a, b []int) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] != b[i] {
			return a[i] < b[i]
		}
	}
	return len(a) < len(b)
}

func hasServerBinaries(dir string) bool {
	return isExecutable(filepath.Join(dir, "postgres")) && isExecutable(filepath.Join(dir, "initdb"))
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0
}

// clusterBinDir prefers the binaries matching an existing cluster's major
// version: after a Debian upgrade installs a newer postgresql-NN next to the
// old one, "highest version" would otherwise pick binaries that refuse the
// existing data directory.
func clusterBinDir(explicit, clusterDir string) (string, error) {
	if explicit == "" {
		if major, err := clusterMajor(clusterDir); err == nil {
			dir := filepath.Join(debianPGRoot, major, "bin")
			if hasServerBinaries(dir) {
				return dir, nil
			}
		}
	}
	return FindBinDir(explicit)
}

func clusterMajor(clusterDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(clusterDir, "PG_VERSION"))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// binaryMajor asks postgres for its version. `postgres --version` is answered
// before postgres' refuse-to-run-as-root check, so it is safe to run as root.
func binaryMajor(ctx context.Context, binDir string) (string, error) {
	out, err := exec.CommandContext(ctx, filepath.Join(binDir, "postgres"), "--version").Output()
	if err != nil {
		return "", fmt.Errorf("run %s --version: %w", filepath.Join(binDir, "postgres"), err)
	}
	// "postgres (PostgreSQL) 15.8 (Debian 15.8-0+deb12u1)"
	fields := strings.Fields(string(out))
	if len(fields) < 3 {
		return "", fmt.Errorf("unexpected postgres --version output %q", out)
	}
	ver := fields[2]
	// Since PostgreSQL 10 the major version is the leading number
	// ("15.8", "17beta1").
	major := ver[:len(ver)-len(strings.TrimLeft(ver, "0123456789"))]
	if n, err := strconv.Atoi(major); err != nil || n < 10 {
		return "", fmt.Errorf("unsupported postgres version %q", ver)
	}
	return major, nil
}
