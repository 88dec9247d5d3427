package image

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// ErrUnsafePath is wrapped when an archive entry would land outside the
// target: an absolute name, a ".." element, or a path through a symlink.
var ErrUnsafePath = errors.New("unsafe path in image")

// extractor writes tar entries below root. Every path is resolved with
// openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS) from the target's fd, so
// neither ".." nor a symlink planted by an earlier entry can lead out of
// the target, and the last element is always created, never followed.
//
// Creating a file costs the filesystem far more than writing its few KiB
// (a root filesystem averages ~30 KiB per file), so files up to
// smallFile are handed with their data to a few workers that create them
// in parallel; directories, links and large files are done in order by
// the caller's goroutine. An entry whose name is still being written by a
// worker waits for it, which keeps the archive's order for replaced
// entries and hard links.
type extractor struct {
	root       int // O_PATH fd of the target
	buf        []byte
	asRoot     bool
	euid, egid int
	umask      int // -1: unknown, always chmod
	written    atomic.Int64
	files      atomic.Int64
	read       int64 // file data taken from the archive, for maxBytes
	// maxBytes caps the file data written (0: no cap); the fuzz test uses
	// it against archives that expand to terabytes of sparse holes.
	maxBytes int64
	dirs     []dirTimes

	// The parent directory of the last entry; archives list a
	// directory's entries together, so this saves most path walks.
	cacheDir    string
	cacheFD     int
	cacheSetgid bool

	jobs     chan *fileJob
	wg       sync.WaitGroup
	pool     sync.Pool
	mu       sync.Mutex
	cond     *sync.Cond
	inflight map[string]int
	err      error // the first worker error
}

// smallFile is the largest file handed to a worker (with its data).
const smallFile = 1 << 20

type fileJob struct {
	pfd          int // a dup of the parent's fd, closed by the worker
	base, name   string
	hdr          *tar.Header
	setgidParent bool
	data         []byte
	buf          *[]byte
}

type dirTimes struct {
	name string
	ts   []unix.Timespec
}

func newExtractor(target string, bufSize, workers int) (*extractor, error) {
	fd, err := unix.Open(target, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("target %s: %w", target, err)
	}
	x := &extractor{
		root: fd, buf: make([]byte, bufSize), asRoot: os.Geteuid() == 0,
		euid: os.Geteuid(), egid: os.Getegid(), umask: readUmask(), cacheFD: -1,
		inflight: map[string]int{},
	}
	x.cond = sync.NewCond(&x.mu)
	x.pool.New = func() any { b := make([]byte, smallFile); return &b }
	if workers > 0 {
		x.jobs = make(chan *fileJob, 4*workers)
		for range workers {
			x.wg.Add(1)
			go x.worker()
		}
	}
	return x, nil
}

// readUmask reads the process umask without changing it (umask(2) can
// only be read by setting it, which races with other goroutines).
func readUmask() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "Umask:"); ok {
			var m int
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%o", &m); err == nil {
				return m
			}
		}
	}
	return -1
}

// wait waits for the workers and returns the first error of theirs.
func (x *extractor) wait() error {
	if x.jobs != nil {
		close(x.jobs)
		x.wg.Wait()
		x.jobs = nil
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.err
}

func (x *extractor) close() {
	_ = x.wait()
	x.dropCache()
	unix.Close(x.root)
}

func (x *extractor) failed() error {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.err
}

func (x *extractor) worker() {
	defer x.wg.Done()
	for j := range x.jobs {
		var err error
		if x.failed() == nil {
			err = x.writeFile(j.pfd, j.base, j.name, j.hdr, j.setgidParent, j.data, nil)
		}
		unix.Close(j.pfd)
		x.pool.Put(j.buf)
		x.mu.Lock()
		if err != nil && x.err == nil {
			x.err = fmt.Errorf("image entry %q: %w", j.hdr.Name, err)
		}
		if x.inflight[j.name]--; x.inflight[j.name] == 0 {
			delete(x.inflight, j.name)
		}
		x.cond.Broadcast()
		x.mu.Unlock()
	}
}

// waitFor waits until no worker writes name.
func (x *extractor) waitFor(name string) {
	x.mu.Lock()
	for x.inflight[name] > 0 {
		x.cond.Wait()
	}
	x.mu.Unlock()
}

func (x *extractor) dropCache() {
	if x.cacheFD >= 0 {
		unix.Close(x.cacheFD)
	}
	x.cacheDir, x.cacheFD = "", -1
}

// cleanName checks an entry name and returns it relative to the target
// ("." for the target itself).
func cleanName(name string) (string, error) {
	if name == "" || strings.ContainsRune(name, 0) {
		return "", fmt.Errorf("%w: %q", ErrUnsafePath, name)
	}
	if strings.HasPrefix(name, "/") {
		return "", fmt.Errorf("%w: absolute name %q", ErrUnsafePath, name)
	}
	for _, e := range strings.Split(name, "/") {
		if e == ".." {
			return "", fmt.Errorf("%w: %q goes up", ErrUnsafePath, name)
		}
	}
	return path.Clean(name), nil
}

// parent opens the directory holding name (creating missing directories
// with mode 0755 like tar does) and returns its fd, owned by the cache.
func (x *extractor) parent(name string) (int, string, error) {
	dir, base := path.Split(name)
	dir = path.Clean(dir)
	if dir == x.cacheDir && x.cacheFD >= 0 {
		return x.cacheFD, base, nil
	}
	x.dropCache()
	fd, err := unix.Dup(x.root)
	if err != nil {
		return -1, "", err
	}
	if dir != "." {
		for _, e := range strings.Split(dir, "/") {
			next, err := unix.Openat2(fd, e, &unix.OpenHow{
				Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
				Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
			})
			if errors.Is(err, unix.ENOENT) {
				if err = unix.Mkdirat(fd, e, 0o755); err == nil || errors.Is(err, unix.EEXIST) {
					next, err = unix.Openat2(fd, e, &unix.OpenHow{
						Flags:   unix.O_PATH | unix.O_DIRECTORY | unix.O_CLOEXEC | unix.O_NOFOLLOW,
						Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS,
					})
				}
			}
			if err != nil {
				unix.Close(fd)
				if errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.EXDEV) {
					return -1, "", fmt.Errorf("%w: %s: %s is not a directory (a symlink?): %v", ErrUnsafePath, name, e, err)
				}
				return -1, "", fmt.Errorf("%s: %w", name, err)
			}
			unix.Close(fd)
			fd = next
		}
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err == nil {
		x.cacheSetgid = st.Mode&unix.S_ISGID != 0
	}
	x.cacheDir, x.cacheFD = dir, fd
	return fd, base, nil
}

// removeExisting removes what is at base unless it is a directory and keepDir.
func removeExisting(pfd int, base string, keepDir bool) (isDir bool, err error) {
	var st unix.Stat_t
	if err := unix.Fstatat(pfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, err
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if keepDir {
			return true, nil
		}
		// Replacing a directory: only an empty one, like tar.
		return false, unix.Unlinkat(pfd, base, unix.AT_REMOVEDIR)
	}
	return false, unix.Unlinkat(pfd, base, 0)
}

func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	name, err := cleanName(hdr.Name)
	if err != nil {
		return err
	}
	if err := x.failed(); err != nil {
		return err
	}
	x.waitFor(name)
	if x.cacheDir != "" && (name == x.cacheDir || strings.HasPrefix(x.cacheDir, name+"/")) {
		x.dropCache() // the entry may replace the cached directory
	}
	if name == "." {
		if hdr.Typeflag != tar.TypeDir {
			return fmt.Errorf("%w: %q is the target itself", ErrUnsafePath, hdr.Name)
		}
		return x.meta(x.root, "", hdr, true)
	}
	pfd, base, err := x.parent(name)
	if err != nil {
		return err
	}
	mode := uint32(hdr.Mode & 0o7777)
	switch hdr.Typeflag {
	case tar.TypeDir:
		isDir, err := removeExisting(pfd, base, true)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if !isDir {
			if err := unix.Mkdirat(pfd, base, 0o700); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		fd, err := unix.Openat(pfd, base, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		err = x.fdMeta(fd, hdr, mode, true, true)
		unix.Close(fd)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		// A directory's times are set at the end, after its entries.
		x.dirs = append(x.dirs, dirTimes{name: name, ts: times(hdr)})
		return nil

	case tar.TypeReg, tar.TypeRegA, tar.TypeGNUSparse, tar.TypeCont:
		if x.jobs != nil && hdr.Size <= smallFile {
			bp := x.pool.Get().(*[]byte)
			data, err := x.readSmall(r, (*bp)[:cap(*bp)])
			if err != nil {
				x.pool.Put(bp)
				return fmt.Errorf("%s: %w", name, err)
			}
			jfd, err := unix.FcntlInt(uintptr(pfd), unix.F_DUPFD_CLOEXEC, 0)
			if err != nil {
				x.pool.Put(bp)
				return err
			}
			x.mu.Lock()
			x.inflight[name]++
			x.mu.Unlock()
			x.jobs <- &fileJob{pfd: jfd, base: base, name: name, hdr: hdr, setgidParent: x.cacheSetgid, data: data, buf: bp}
			return nil
		}
		return x.writeFile(pfd, base, name, hdr, x.cacheSetgid, nil, r)

	case tar.TypeSymlink:
		if hdr.Linkname == "" {
			return fmt.Errorf("%s: symlink without a target", name)
		}
		if _, err := removeExisting(pfd, base, false); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		// The link's target is the installed system's business: it is
		// never followed here.
		if err := unix.Symlinkat(hdr.Linkname, pfd, base); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		return x.meta(pfd, base, hdr, false)

	case tar.TypeLink:
		old, err := cleanName(hdr.Linkname)
		if err != nil || old == "." {
			return fmt.Errorf("%w: hard link %s to %q", ErrUnsafePath, name, hdr.Linkname)
		}
		x.waitFor(old)
		// Resolve the link source with its own parent walk; the cache then
		// holds the source's directory, so re-open the new parent after.
		ofd, obase, err := x.parent(old)
		if err != nil {
			return err
		}
		ofd, err = unix.Dup(ofd)
		if err != nil {
			return err
		}
		defer unix.Close(ofd)
		pfd, base, err = x.parent(name)
		if err != nil {
			return err
		}
		if old == name {
			return nil
		}
		if _, err := removeExisting(pfd, base, false); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		// Flags 0: a symlink as the source is linked itself, not followed.
		if err := unix.Linkat(ofd, obase, pfd, base, 0); err != nil {
			return fmt.Errorf("hard link %s to %s: %w", name, old, err)
		}
		x.files.Add(1)
		return nil

	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if _, err := removeExisting(pfd, base, false); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		typ := uint32(unix.S_IFIFO)
		switch hdr.Typeflag {
		case tar.TypeChar:
			typ = unix.S_IFCHR
		case tar.TypeBlock:
			typ = unix.S_IFBLK
		}
		dev := unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
		if err := unix.Mknodat(pfd, base, typ|0o600, int(dev)); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		x.files.Add(1)
		return x.meta(pfd, base, hdr, true)
	}
	// Anything else (GNU volume headers, vendor types) carries no file.
	return nil
}

// readSmall reads a small file's data into buf, counting it against
// maxBytes.
func (x *extractor) readSmall(r io.Reader, buf []byte) ([]byte, error) {
	n, err := io.ReadFull(r, buf)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		err = nil
	}
	if err != nil {
		return nil, err
	}
	if n == len(buf) {
		// The header said at most len(buf); tar.Reader never gives more.
		var one [1]byte
		if m, _ := r.Read(one[:]); m > 0 {
			return nil, errors.New("file longer than its header")
		}
	}
	return buf[:n], x.count(int64(n))
}

func (x *extractor) count(n int64) error {
	x.read += n
	if x.maxBytes > 0 && x.read > x.maxBytes {
		return fmt.Errorf("image expands beyond %d bytes", x.maxBytes)
	}
	return nil
}

// writeFile creates a regular file with data, or with what r yields
// (copied with x.buf, so only the caller's goroutine passes r).
func (x *extractor) writeFile(pfd int, base, name string, hdr *tar.Header, setgidParent bool, data []byte, r io.Reader) error {
	mode := uint32(hdr.Mode & 0o7777)
	flags := unix.O_WRONLY | unix.O_CREAT | unix.O_EXCL | unix.O_NOFOLLOW | unix.O_CLOEXEC
	fd, err := unix.Openat(pfd, base, flags, mode&0o777)
	if errors.Is(err, unix.EEXIST) {
		// An earlier entry or the filesystem (lost+found) had the name.
		if _, err = removeExisting(pfd, base, false); err == nil {
			fd, err = unix.Openat(pfd, base, flags, mode&0o777)
		}
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	err = x.writeData(fd, data, r)
	if err == nil {
		// The umask may have taken bits, and setuid, setgid and sticky
		// are never set by open.
		chmod := x.umask < 0 || mode&0o7000 != 0 || mode&uint32(x.umask) != 0
		chown := hdr.Uid != x.euid || hdr.Gid != x.egid || setgidParent
		err = x.fdMeta(fd, hdr, mode, chown, chmod)
	}
	if err == nil {
		err = unix.UtimesNanoAt(pfd, base, times(hdr), unix.AT_SYMLINK_NOFOLLOW)
	}
	if cerr := unix.Close(fd); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	x.files.Add(1)
	return nil
}

func (x *extractor) writeData(fd int, data []byte, r io.Reader) error {
	if r == nil {
		if err := writeAll(fd, data); err != nil {
			return err
		}
		x.written.Add(int64(len(data)))
		return nil
	}
	for {
		n, err := r.Read(x.buf)
		if n > 0 {
			if cerr := x.count(int64(n)); cerr != nil {
				return cerr
			}
			if werr := writeAll(fd, x.buf[:n]); werr != nil {
				return werr
			}
			x.written.Add(int64(n))
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// fdMeta sets owner, mode and extended attributes through an open fd;
// chown comes first because it clears setuid bits.
func (x *extractor) fdMeta(fd int, hdr *tar.Header, mode uint32, chown, chmod bool) error {
	if x.asRoot && chown {
		if err := unix.Fchown(fd, hdr.Uid, hdr.Gid); err != nil && !unsupported(err) {
			return err
		}
	}
	if chmod {
		if err := unix.Fchmod(fd, mode); err != nil && !unsupported(err) {
			return err
		}
	}
	for k, v := range hdr.PAXRecords {
		if attr, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
			// Best effort: vfat and some attribute namespaces refuse.
			_ = unix.Fsetxattr(fd, attr, []byte(v), 0)
		}
	}
	return nil
}

// meta sets owner, mode and times of a symlink or node by name (fd "" for
// the target itself); symlinks have no mode of their own.
func (x *extractor) meta(pfd int, base string, hdr *tar.Header, chmod bool) error {
	flags := unix.AT_SYMLINK_NOFOLLOW
	if base == "" {
		flags |= unix.AT_EMPTY_PATH
	}
	if x.asRoot {
		if err := unix.Fchownat(pfd, base, hdr.Uid, hdr.Gid, flags); err != nil && !unsupported(err) {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
	}
	if chmod && base != "" {
		// The node was just created by mknodat, not a symlink: chmod on the
		// name cannot follow anywhere.
		if err := unix.Fchmodat(pfd, base, uint32(hdr.Mode&0o7777), 0); err != nil && !unsupported(err) {
			return fmt.Errorf("%s: %w", hdr.Name, err)
		}
	}
	if base == "" {
		return nil // the target's own times change with every entry anyway
	}
	if err := unix.UtimesNanoAt(pfd, base, times(hdr), unix.AT_SYMLINK_NOFOLLOW); err != nil && !unsupported(err) {
		return fmt.Errorf("%s: %w", hdr.Name, err)
	}
	return nil
}

// finish sets the directories' times, deepest first, now that nothing
// is written into them any more.
func (x *extractor) finish() error {
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		pfd, base, err := x.parent(d.name)
		if errors.Is(err, ErrUnsafePath) {
			continue // a later entry replaced a parent with a symlink
		}
		if err != nil {
			return err
		}
		if err := unix.UtimesNanoAt(pfd, base, d.ts, unix.AT_SYMLINK_NOFOLLOW); err != nil && !unsupported(err) && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("%s: %w", d.name, err)
		}
	}
	return nil
}

func times(hdr *tar.Header) []unix.Timespec {
	at := hdr.AccessTime
	if at.IsZero() {
		at = hdr.ModTime
	}
	return []unix.Timespec{timespec(at), timespec(hdr.ModTime)}
}

// timespec leaves a time out that the archive does not have or that
// nanoseconds since 1970 cannot hold.
func timespec(t time.Time) unix.Timespec {
	if t.IsZero() || t.Year() < 1678 || t.Year() > 2261 {
		return unix.Timespec{Nsec: unix.UTIME_OMIT}
	}
	return unix.NsecToTimespec(t.UnixNano())
}

// unsupported are the errors of filesystems that cannot store some
// metadata (vfat owners and modes).
func unsupported(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTSUP)
}
