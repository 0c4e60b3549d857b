package imager

import (
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"slices"
	"strings"
	"time"
)

// InitramfsFile is one entry of an initramfs archive.
//
// The entry's type comes from Mode: a regular file (no type bits), a
// directory (fs.ModeDir), a symbolic link (fs.ModeSymlink, target in
// Linkname) or a device node (fs.ModeDevice, plus fs.ModeCharDevice for a
// character device, numbers in Major/Minor). Only the permission bits of
// Mode are kept besides the type.
type InitramfsFile struct {
	// Path inside the archive, relative ("init", "lib/modules/e1000.ko");
	// a leading "/" is accepted and dropped.
	Path string
	Mode fs.FileMode
	// Size and Open give a regular file's content. Open is called once,
	// while the archive is written, so contents are streamed; the number of
	// bytes read must equal Size.
	Size int64
	Open func() (io.ReadCloser, error)
	// Linkname is a symbolic link's target.
	Linkname string
	// Major and Minor are a device node's numbers.
	Major, Minor uint32
}

// InitramfsOptions control how an initramfs is written.
type InitramfsOptions struct {
	// Gzip compresses the archive (with a header that carries no time or
	// name, so the output stays reproducible).
	Gzip bool
	// MTime is the modification time of every entry (e.g. from
	// SOURCE_DATE_EPOCH); the zero value writes 0.
	MTime time.Time
}

// InitramfsBytes is a regular file with the given content.
func InitramfsBytes(p string, perm fs.FileMode, data []byte) InitramfsFile {
	return InitramfsFile{
		Path: p,
		Mode: perm.Perm(),
		Size: int64(len(data)),
		Open: func() (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader(string(data))), nil
		},
	}
}

// InitramfsFromFile is a regular file whose content is read from src on the
// host when the archive is written. Only its size is taken now.
func InitramfsFromFile(p string, perm fs.FileMode, src string) (InitramfsFile, error) {
	st, err := os.Stat(src)
	if err != nil {
		return InitramfsFile{}, fmt.Errorf("initramfs entry %s: %w", p, err)
	}
	if !st.Mode().IsRegular() {
		return InitramfsFile{}, fmt.Errorf("initramfs entry %s: %s is not a regular file", p, src)
	}
	return InitramfsFile{
		Path: p,
		Mode: perm.Perm(),
		Size: st.Size(),
		Open: func() (io.ReadCloser, error) { return os.Open(src) },
	}, nil
}

// InitramfsDir is a directory.
func InitramfsDir(p string, perm fs.FileMode) InitramfsFile {
	return InitramfsFile{Path: p, Mode: fs.ModeDir | perm.Perm()}
}

// InitramfsCharDevice is a character device node, e.g. /dev/console (5, 1),
// which the kernel opens for init's stdin/stdout before /init runs.
func InitramfsCharDevice(p string, perm fs.FileMode, major, minor uint32) InitramfsFile {
	return InitramfsFile{Path: p, Mode: fs.ModeDevice | fs.ModeCharDevice | perm.Perm(), Major: major, Minor: minor}
}

// InitramfsSymlink is a symbolic link to target.
func InitramfsSymlink(p, target string) InitramfsFile {
	return InitramfsFile{Path: p, Mode: fs.ModeSymlink | 0o777, Linkname: target}
}

// newc mode type bits.
const (
	cpioTypeReg     = 0o100000
	cpioTypeDir     = 0o040000
	cpioTypeSymlink = 0o120000
	cpioTypeChar    = 0o020000
	cpioTypeBlock   = 0o060000
)

// cpioTrailer ends a newc archive.
const cpioTrailer = "TRAILER!!!"

// WriteInitramfs writes files as a newc ("070701") cpio archive, the format
// the Linux kernel unpacks into its rootfs, optionally gzip-compressed.
//
// The output is reproducible: entries are sorted by path (missing parent
// directories are added, mode 0755), inode numbers are assigned in that
// order from 1, owners are 0:0, every mtime is opts.MTime. Paths must be
// clean, relative and unique; on a bad entry nothing is written and the error
// names it.
func WriteInitramfs(w io.Writer, files []InitramfsFile, opts InitramfsOptions) (err error) {
	entries, err := normalizeInitramfs(files)
	if err != nil {
		return err
	}

	out := w
	var gz *gzip.Writer
	if opts.Gzip {
		gz, err = gzip.NewWriterLevel(w, gzip.DefaultCompression)
		if err != nil {
			return fmt.Errorf("initramfs gzip: %w", err)
		}
		out = gz
	}

	cw := &newcWriter{w: out}
	mtime := int64(0)
	if !opts.MTime.IsZero() {
		mtime = opts.MTime.Unix()
	}
	for i, e := range entries {
		if err := cw.writeEntry(e, uint32(i+1), mtime); err != nil {
			return err
		}
	}
	if err := cw.writeHeader(cpioTrailer, 0, 0, 1, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("initramfs trailer: %w", err)
	}
	if gz != nil {
		if err := gz.Close(); err != nil {
			return fmt.Errorf("initramfs gzip: %w", err)
		}
	}
	return nil
}

// normalizeInitramfs cleans and checks paths, adds missing parent
// directories and sorts the entries.
func normalizeInitramfs(files []InitramfsFile) ([]InitramfsFile, error) {
	byPath := make(map[string]InitramfsFile, len(files))
	for _, f := range files {
		p := strings.TrimPrefix(f.Path, "/")
		if p == "" || p == "." || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") {
			return nil, fmt.Errorf("initramfs entry %q: path must be clean and inside the archive", f.Path)
		}
		if strings.ContainsRune(p, 0) {
			return nil, fmt.Errorf("initramfs entry %q: path contains NUL", f.Path)
		}
		if _, dup := byPath[p]; dup {
			return nil, fmt.Errorf("initramfs entry %q: duplicate path", f.Path)
		}
		switch {
		case f.Mode.IsRegular():
			if f.Open == nil {
				return nil, fmt.Errorf("initramfs entry %q: regular file without content", f.Path)
			}
			if f.Size < 0 || f.Size > 0xffffffff {
				return nil, fmt.Errorf("initramfs entry %q: size %d out of range for newc", f.Path, f.Size)
			}
		case f.Mode&fs.ModeSymlink != 0:
			if f.Linkname == "" {
				return nil, fmt.Errorf("initramfs entry %q: symlink without target", f.Path)
			}
		case f.Mode.IsDir(), f.Mode&fs.ModeDevice != 0:
		default:
			return nil, fmt.Errorf("initramfs entry %q: unsupported file type %v", f.Path, f.Mode.Type())
		}
		f.Path = p
		byPath[p] = f
	}
	for p := range byPath {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if parent, ok := byPath[d]; ok {
				if !parent.Mode.IsDir() {
					return nil, fmt.Errorf("initramfs entry %q: parent %q is not a directory", p, d)
				}
				continue
			}
			byPath[d] = InitramfsDir(d, 0o755)
		}
	}
	entries := make([]InitramfsFile, 0, len(byPath))
	for _, f := range byPath {
		entries = append(entries, f)
	}
	slices.SortFunc(entries, func(a, b InitramfsFile) int { return strings.Compare(a.Path, b.Path) })
	return entries, nil
}

// newcWriter writes newc headers and data, keeping the 4-byte alignment.
type newcWriter struct {
	w   io.Writer
	off int64
}

func (c *newcWriter) write(p []byte) error {
	n, err := c.w.Write(p)
	c.off += int64(n)
	return err
}

func (c *newcWriter) pad() error {
	if r := c.off % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

func (c *newcWriter) writeHeader(name string, ino, mode, nlink uint32, mtime int64, size uint32, rmaj, rmin uint32) error {
	hdr := fmt.Sprintf("070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		ino, mode, 0, 0, nlink, uint32(mtime), size, 0, 0, rmaj, rmin, len(name)+1, 0)
	if err := c.write([]byte(hdr)); err != nil {
		return err
	}
	if err := c.write(append([]byte(name), 0)); err != nil {
		return err
	}
	return c.pad()
}

func (c *newcWriter) writeEntry(e InitramfsFile, ino uint32, mtime int64) error {
	perm := uint32(e.Mode.Perm())
	if e.Mode&fs.ModeSetuid != 0 {
		perm |= 0o4000
	}
	if e.Mode&fs.ModeSetgid != 0 {
		perm |= 0o2000
	}
	if e.Mode&fs.ModeSticky != 0 {
		perm |= 0o1000
	}
	switch {
	case e.Mode.IsDir():
		if err := c.writeHeader(e.Path, ino, cpioTypeDir|perm, 2, mtime, 0, 0, 0); err != nil {
			return fmt.Errorf("initramfs entry %s: %w", e.Path, err)
		}
	case e.Mode&fs.ModeSymlink != 0:
		if err := c.writeHeader(e.Path, ino, cpioTypeSymlink|perm, 1, mtime, uint32(len(e.Linkname)), 0, 0); err != nil {
			return fmt.Errorf("initramfs entry %s: %w", e.Path, err)
		}
		if err := c.write([]byte(e.Linkname)); err != nil {
			return fmt.Errorf("initramfs entry %s: %w", e.Path, err)
		}
		return c.pad()
	case e.Mode&fs.ModeDevice != 0:
		typ := uint32(cpioTypeBlock)
		if e.Mode&fs.ModeCharDevice != 0 {
			typ = cpioTypeChar
		}
		if err := c.writeHeader(e.Path, ino, typ|perm, 1, mtime, 0, e.Major, e.Minor); err != nil {
			return fmt.Errorf("initramfs entry %s: %w", e.Path, err)
		}
	default:
		if err := c.writeHeader(e.Path, ino, cpioTypeReg|perm, 1, mtime, uint32(e.Size), 0, 0); err != nil {
			return fmt.Errorf("initramfs entry %s: %w", e.Path, err)
		}
		rc, err := e.Open()
		if err != nil {
			return fmt.Errorf("initramfs entry %s: open: %w", e.Path, err)
		}
		n, err := io.Copy(writerFunc(c.write), io.LimitReader(rc, e.Size+1))
		cerr := rc.Close()
		if err != nil {
			return fmt.Errorf("initramfs entry %s: copy: %w", e.Path, err)
		}
		if cerr != nil {
			return fmt.Errorf("initramfs entry %s: close: %w", e.Path, cerr)
		}
		if n != e.Size {
			return fmt.Errorf("initramfs entry %s: %w: read %d bytes, expected %d", e.Path, ErrSizeChanged, n, e.Size)
		}
		return c.pad()
	}
	return nil
}

// ErrSizeChanged is returned when a file's content does not have the size
// announced in its entry (e.g. it changed on disk while being archived).
var ErrSizeChanged = errors.New("file size changed")

type writerFunc func([]byte) error

func (f writerFunc) Write(p []byte) (int, error) {
	if err := f(p); err != nil {
		return 0, err
	}
	return len(p), nil
}
