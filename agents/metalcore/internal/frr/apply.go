package frr

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Runner runs a command and returns its combined output; the FRR backend
// runs vtysh and the reload through it, so tests can replace them.
type Runner interface {
	Run(ctx context.Context, name string, args ...string) ([]byte, error)
}

// Exec is the Runner of real processes.
type Exec struct{}

// Run implements Runner.
func (Exec) Run(ctx context.Context, name string, args ...string) ([]byte, error) {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", name, err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// FilePlaceholder in a command's arguments stands for the file it works
// on; a command without it gets the file as its last argument.
const FilePlaceholder = "{file}"

// DefaultValidate is FRR's own parser as the check of a candidate file.
func DefaultValidate() []string { return []string{"vtysh", "--dryrun", "--inputfile", FilePlaceholder} }

// DirPlaceholder in a command's arguments stands for the directory of the
// file it works on.
const DirPlaceholder = "{dir}"

// DefaultReload is frr-reload.py as SONiC's frr-reload service runs it:
// it applies the difference between the file and the running
// configuration. --confdir is the file's own directory: for a file
// outside --confdir (default /etc/frr) frr-reload.py ends with vtysh's
// `write`, which overwrites the file with FRR's rendering of it, so the
// next comparison with the rendered document always differs.
func DefaultReload() []string {
	return []string{"/usr/lib/frr/frr-reload.py", "--reload", "--confdir", DirPlaceholder, FilePlaceholder}
}

// Config of an Applier.
type Config struct {
	// File is the live frr.conf (SONiC: /etc/sonic/frr/frr.conf).
	File string
	// Validate checks a candidate file and fails when FRR would refuse it.
	Validate []string
	// Reload makes FRR take the live file.
	Reload []string
	// Runner runs both (default Exec).
	Runner Runner
}

// Applier keeps the live frr.conf.
type Applier struct {
	cfg Config
}

// NewApplier checks cfg.
func NewApplier(cfg Config) (*Applier, error) {
	if cfg.File == "" {
		return nil, errors.New("frr: config file required")
	}
	if len(cfg.Validate) == 0 {
		cfg.Validate = DefaultValidate()
	}
	if len(cfg.Reload) == 0 {
		cfg.Reload = DefaultReload()
	}
	if cfg.Runner == nil {
		cfg.Runner = Exec{}
	}
	return &Applier{cfg: cfg}, nil
}

// File is the live file's path.
func (a *Applier) File() string { return a.cfg.File }

// command fills the file into a command.
func command(cmd []string, file string) (string, []string) {
	args := make([]string, 0, len(cmd))
	found := false
	for _, a := range cmd[1:] {
		if strings.Contains(a, FilePlaceholder) {
			a, found = strings.ReplaceAll(a, FilePlaceholder, file), true
		}
		a = strings.ReplaceAll(a, DirPlaceholder, filepath.Dir(file))
		args = append(args, a)
	}
	if !found {
		args = append(args, file)
	}
	return cmd[0], args
}

// Apply makes conf the live configuration:
//
//  1. when the live file already holds conf (same sha256), nothing;
//  2. write it beside the live file and validate it there: FRR's parser
//     must accept every line, or the live file stays as it is;
//  3. keep the live file as .bak and move the new one in;
//  4. reload; when the reload fails, put the .bak back (or remove the new
//     file when there was none before) and return the reload's error.
//
// changed reports whether the live file was replaced (and reloaded).
func (a *Applier) Apply(ctx context.Context, conf []byte) (changed bool, err error) {
	live := a.cfg.File
	old, err := os.ReadFile(live)
	existed := err == nil
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("frr: %w", err)
	}
	if existed && sha256.Sum256(old) == sha256.Sum256(conf) {
		return false, nil
	}
	tmp := live + ".tmp"
	if err := writeSync(tmp, conf); err != nil {
		return false, fmt.Errorf("frr: %w", err)
	}
	defer os.Remove(tmp)
	name, args := command(a.cfg.Validate, tmp)
	if _, err := a.cfg.Runner.Run(ctx, name, args...); err != nil {
		return false, fmt.Errorf("frr: configuration refused by FRR's check, live file kept: %w", err)
	}
	bak := live + ".bak"
	if existed {
		if err := os.Rename(live, bak); err != nil {
			return false, fmt.Errorf("frr: keep backup: %w", err)
		}
	}
	if err := os.Rename(tmp, live); err != nil {
		return false, errors.Join(fmt.Errorf("frr: %w", err), a.restore(existed))
	}
	syncDir(filepath.Dir(live))
	name, args = command(a.cfg.Reload, live)
	if _, err := a.cfg.Runner.Run(ctx, name, args...); err != nil {
		rerr := a.restore(existed)
		return false, errors.Join(fmt.Errorf("frr: reload failed, previous configuration restored: %w", err), rerr)
	}
	return true, nil
}

// restore puts the backup back, or removes the new file when there was no
// old one.
func (a *Applier) restore(existed bool) error {
	live := a.cfg.File
	var err error
	if existed {
		err = os.Rename(live+".bak", live)
	} else {
		err = os.Remove(live)
		if errors.Is(err, fs.ErrNotExist) {
			err = nil
		}
	}
	syncDir(filepath.Dir(live))
	if err != nil {
		return fmt.Errorf("frr: restore: %w", err)
	}
	return nil
}

// writeSync writes a file and flushes it to disk before the rename that
// makes it live: a crash must not leave an empty frr.conf.
func writeSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
}
