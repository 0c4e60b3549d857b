// Package imager holds the boot assets rackboot serves and the images it
// builds: the asset cache (Talos kernels and initramfs from the Image Factory
// or imported offline), the Image Factory client, and the install media.
package imager

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/dotfile/rackboot/internal/atomicfile"
	"github.com/dotfile/rackboot/pxe"
)

// VanillaSchematicID is the Image Factory schematic of Talos without
// extensions or extra kernel arguments (the same value as
// profiles.VanillaSchematicID; imager does not import profiles). Its kernel and
// initramfs are the GitHub release's, so their sums can be checked.
const VanillaSchematicID = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"

// The files of one asset set, as named in the cache and in asset IDs.
const (
	FileKernel    = "kernel"
	FileInitramfs = "initramfs.xz"
	FileCmdline   = "cmdline"
	manifestName  = "manifest.json"
	partSuffix    = ".part"
	// SourceImported is the manifest source of files given to Import.
	SourceImported = "imported"
)

// Errors callers can test with errors.Is.
var (
	// ErrBadID is returned for an asset ID (or version, schematic, arch) that
	// is not well formed.
	ErrBadID = errors.New("bad asset id")
	// ErrMissing is returned when an asset set (or one of its files) is not
	// in the cache.
	ErrMissing = errors.New("boot assets missing")
	// ErrCorrupt is returned when a file no longer matches its manifest.
	ErrCorrupt = errors.New("boot asset corrupt")
	// ErrBadImage is returned by Import for a file that is not a kernel or an
	// initramfs.
	ErrBadImage = errors.New("not a boot image")
	// ErrBusy is returned when another process is pulling or importing the
	// same set.
	ErrBusy = errors.New("asset set busy")
)

var (
	versionRE   = regexp.MustCompile(`^v[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}(-[0-9A-Za-z]+(\.[0-9A-Za-z]+)*)?$`)
	schematicRE = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// Set names one asset set: a Talos version built with one schematic for one
// CPU architecture.
type Set struct {
	Version   string `json:"version"`
	Schematic string `json:"schematic"`
	Arch      string `json:"arch"`
}

// Validate checks each part strictly, so that a set always maps to a
// directory inside the cache.
func (s Set) Validate() error {
	var bad []string
	if !versionRE.MatchString(s.Version) {
		bad = append(bad, fmt.Sprintf("version %q is not a Talos version such as v1.13.0", s.Version))
	}
	if !schematicRE.MatchString(s.Schematic) {
		bad = append(bad, fmt.Sprintf("schematic %q is not a 64-character lower-case hex Image Factory id", s.Schematic))
	}
	if s.Arch != "amd64" && s.Arch != "arm64" {
		bad = append(bad, fmt.Sprintf("arch %q is not amd64 or arm64", s.Arch))
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: %s", ErrBadID, strings.Join(bad, "; "))
	}
	return nil
}

// String is "Talos v1.13.0 (schematic 376567988ad3..., amd64)".
func (s Set) String() string {
	sch := s.Schematic
	if len(sch) > 12 {
		sch = sch[:12] + "..."
	}
	return fmt.Sprintf("Talos %s (schematic %s, %s)", s.Version, sch, s.Arch)
}

// rel is the set's directory relative to the cache, with slashes.
func (s Set) rel() string { return path.Join("talos", s.Version, s.Schematic, s.Arch) }

// ID is the asset ID of one file of the set: talos/<version>/<schematic>/<arch>/<file>.
func (s Set) ID(file string) string { return path.Join(s.rel(), file) }

// PullCommand is the command line that downloads the set.
func (s Set) PullCommand() string {
	return fmt.Sprintf("rackboot assets pull --version %s --schematic %s --arch %s", s.Version, s.Schematic, s.Arch)
}

// ImportCommand is the command line that imports the set offline.
func (s Set) ImportCommand() string {
	return fmt.Sprintf("rackboot assets import KERNEL INITRAMFS --version %s --schematic %s --arch %s", s.Version, s.Schematic, s.Arch)
}

// ParseAssetID splits an asset ID into its set and file name. It accepts only
// talos/<version>/<schematic>/<arch>/<file> with every part well formed and
// file one of kernel, initramfs.xz, cmdline: no other path can come out of it.
func ParseAssetID(id string) (Set, string, error) {
	parts := strings.Split(id, "/")
	if len(parts) != 5 || parts[0] != "talos" {
		return Set{}, "", fmt.Errorf("%w: %q is not talos/<version>/<schematic>/<arch>/<file>", ErrBadID, id)
	}
	s := Set{Version: parts[1], Schematic: parts[2], Arch: parts[3]}
	if err := s.Validate(); err != nil {
		return Set{}, "", fmt.Errorf("asset id %q: %w", id, err)
	}
	switch parts[4] {
	case FileKernel, FileInitramfs, FileCmdline:
	default:
		return Set{}, "", fmt.Errorf("%w: %q: file %q is not %s, %s or %s", ErrBadID, id, parts[4], FileKernel, FileInitramfs, FileCmdline)
	}
	return s, parts[4], nil
}

// FileRecord is what the manifest knows of one file.
type FileRecord struct {
	SHA256 string `json:"sha256"`
	Size   int64  `json:"size"`
	// Source is the URL the file was downloaded from, or "imported".
	Source string    `json:"source"`
	Time   time.Time `json:"time"`
	// Format is what the file was recognised as (bzImage, arm64-image, xz...).
	Format string `json:"format,omitempty"`
	// ReleaseSum is set when the sha256 was checked against the Talos
	// release's sha256sum.txt (its URL).
	ReleaseSum string `json:"releaseSum,omitempty"`
}

// Manifest describes one asset set in the cache; it is written last, so a set
// with a manifest is complete.
type Manifest struct {
	Set
	Files map[string]FileRecord `json:"files"`
}

// CacheOption configures a Cache.
type CacheOption func(*Cache)

// WithCacheLogger sets the logger (default: discard).
func WithCacheLogger(l *slog.Logger) CacheOption { return func(c *Cache) { c.log = l } }

// WithCacheClock sets the clock used for manifest times (default time.Now).
func WithCacheClock(now func() time.Time) CacheOption { return func(c *Cache) { c.now = now } }

// Cache is the boot asset cache, a directory laid out as
// <dir>/talos/<version>/<schematic>/<arch>/{kernel,initramfs.xz,cmdline,manifest.json}.
// It implements pxe.Assets.
type Cache struct {
	dir  string
	root *os.Root
	log  *slog.Logger
	now  func() time.Time
}

var _ pxe.Assets = (*Cache)(nil)

// OpenCache opens (creating it if needed) the asset cache in dir.
func OpenCache(dir string, opts ...CacheOption) (*Cache, error) {
	if dir == "" {
		return nil, errors.New("open asset cache: no directory given")
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("open asset cache: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open asset cache: %w", err)
	}
	c := &Cache{dir: dir, root: root, log: slog.New(slog.DiscardHandler), now: time.Now}
	for _, o := range opts {
		o(c)
	}
	return c, nil
}

// Close releases the cache directory.
func (c *Cache) Close() error { return c.root.Close() }

// Dir is the cache directory.
func (c *Cache) Dir() string { return c.dir }

// Kernel is the asset ID of the set's kernel.
func (c *Cache) Kernel(version, schematic, arch string) string {
	return Set{version, schematic, arch}.ID(FileKernel)
}

// Initramfs is the asset ID of the set's initramfs.
func (c *Cache) Initramfs(version, schematic, arch string) string {
	return Set{version, schematic, arch}.ID(FileInitramfs)
}

// path is the OS path of a file of the set.
func (c *Cache) path(s Set, file string) string {
	return filepath.Join(c.dir, filepath.FromSlash(s.ID(file)))
}

// Open opens an asset by ID for serving. It returns an *os.File (so
// http.ServeContent can use sendfile), only for a file the set's manifest
// lists; ErrBadID for a malformed ID and ErrMissing (wrapping fs.ErrNotExist)
// for one that is not cached.
func (c *Cache) Open(id string) (pxe.ReadSeekCloser, error) {
	f, err := c.OpenFile(id)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// OpenFile is Open with the concrete type.
func (c *Cache) OpenFile(id string) (*os.File, error) {
	s, file, err := ParseAssetID(id)
	if err != nil {
		return nil, err
	}
	m, err := c.Manifest(s)
	if err != nil {
		return nil, fmt.Errorf("open asset %s: %w", id, err)
	}
	rec, ok := m.Files[file]
	if !ok {
		return nil, fmt.Errorf("open asset %s: %w: %w", id, ErrMissing, fs.ErrNotExist)
	}
	f, err := c.root.Open(s.ID(file))
	if err != nil {
		return nil, fmt.Errorf("open asset %s: %w", id, err)
	}
	if st, err := f.Stat(); err != nil || st.Size() != rec.Size || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("open asset %s: %w: size differs from its manifest; run `rackboot assets list` and pull or import it again", id, ErrCorrupt)
	}
	return f, nil
}

// Manifest reads the set's manifest; ErrMissing when there is none.
func (c *Cache) Manifest(s Set) (*Manifest, error) {
	if err := s.Validate(); err != nil {
		return nil, err
	}
	data, err := c.root.ReadFile(path.Join(s.rel(), manifestName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w: %w", s, ErrMissing, fs.ErrNotExist)
	}
	if err != nil {
		return nil, fmt.Errorf("read manifest of %s: %w", s, err)
	}
	var m Manifest
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("read manifest of %s: %w: %w", s, ErrCorrupt, err)
	}
	if m.Set != s {
		return nil, fmt.Errorf("read manifest of %s: %w: it names %s", s, ErrCorrupt, m.Set)
	}
	return &m, nil
}

// Has returns nil when the set's kernel and initramfs are in the cache (with
// the sizes their manifest records). Otherwise the error wraps ErrMissing and
// names the command that fetches them.
func (c *Cache) Has(version, schematic, arch string) error {
	s := Set{version, schematic, arch}
	if err := s.Validate(); err != nil {
		return err
	}
	missing := func(why string) error {
		return fmt.Errorf("%s is not in the asset cache %s (%s): %w; run `%s`, or offline `%s`",
			s, c.dir, why, ErrMissing, s.PullCommand(), s.ImportCommand())
	}
	m, err := c.Manifest(s)
	if errors.Is(err, ErrMissing) {
		return missing("no manifest")
	}
	if err != nil {
		return err
	}
	for _, file := range []string{FileKernel, FileInitramfs} {
		rec, ok := m.Files[file]
		if !ok {
			return missing(file + " not recorded")
		}
		st, err := c.root.Stat(s.ID(file))
		if err != nil {
			return missing(file + ": " + err.Error())
		}
		if st.Size() != rec.Size {
			return missing(fmt.Sprintf("%s is %d bytes, the manifest says %d", file, st.Size(), rec.Size))
		}
	}
	return nil
}

// Verify re-hashes every file of the set and compares it with the manifest.
func (c *Cache) Verify(version, schematic, arch string) error {
	s := Set{version, schematic, arch}
	m, err := c.Manifest(s)
	if err != nil {
		return fmt.Errorf("verify: %w", err)
	}
	var bad []string
	for _, file := range sortedFiles(m.Files) {
		rec := m.Files[file]
		sum, size, err := c.hashFile(s.ID(file))
		switch {
		case err != nil:
			bad = append(bad, fmt.Sprintf("%s: %v", file, err))
		case size != rec.Size:
			bad = append(bad, fmt.Sprintf("%s: %d bytes, manifest says %d", file, size, rec.Size))
		case sum != rec.SHA256:
			bad = append(bad, fmt.Sprintf("%s: sha256 %s, manifest says %s", file, sum, rec.SHA256))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("verify %s: %w: %s; fetch it again with `%s`", s, ErrCorrupt, strings.Join(bad, "; "), s.PullCommand())
	}
	return nil
}

func (c *Cache) hashFile(rel string) (string, int64, error) {
	f, err := c.root.Open(rel)
	if err != nil {
		return "", 0, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return "", 0, fmt.Errorf("read %s: %w", rel, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// List returns the manifests of every set in the cache, sorted by version,
// schematic and arch. Directories without a readable manifest are skipped
// (and logged): they are incomplete pulls.
func (c *Cache) List() ([]*Manifest, error) {
	matches, err := filepath.Glob(filepath.Join(c.dir, "talos", "*", "*", "*", manifestName))
	if err != nil {
		return nil, fmt.Errorf("list asset cache: %w", err)
	}
	var out []*Manifest
	for _, p := range matches {
		rel, err := filepath.Rel(c.dir, filepath.Dir(p))
		if err != nil {
			continue
		}
		parts := strings.Split(filepath.ToSlash(rel), "/")
		s := Set{Version: parts[1], Schematic: parts[2], Arch: parts[3]}
		m, err := c.Manifest(s)
		if err != nil {
			c.log.Warn("skipping unreadable asset set", "dir", rel, "err", err)
			continue
		}
		out = append(out, m)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i].Set, out[j].Set
		if a.Version != b.Version {
			return a.Version < b.Version
		}
		if a.Schematic != b.Schematic {
			return a.Schematic < b.Schematic
		}
		return a.Arch < b.Arch
	})
	return out, nil
}

// writeManifest writes the manifest atomically; it is the commit point of a
// set.
func (c *Cache) writeManifest(m *Manifest) error {
	data, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("encode manifest of %s: %w", m.Set, err)
	}
	if err := atomicfile.Write(filepath.Join(c.dir, filepath.FromSlash(m.rel()), manifestName), append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write manifest of %s: %w", m.Set, err)
	}
	return nil
}

// commit renames the staged .part files of a set to their final names and
// writes the manifest. Files already final (not in parts) keep their record.
func (c *Cache) commit(s Set, recs map[string]FileRecord) (*Manifest, error) {
	for _, file := range sortedFiles(recs) {
		final := c.path(s, file)
		if err := os.Rename(final+partSuffix, final); err != nil {
			return nil, fmt.Errorf("store %s of %s: %w", file, s, err)
		}
	}
	if err := atomicfile.SyncDir(filepath.Dir(c.path(s, FileKernel))); err != nil {
		return nil, err
	}
	m := &Manifest{Set: s, Files: recs}
	if err := c.writeManifest(m); err != nil {
		return nil, err
	}
	return m, nil
}

// lockSet creates the set's directory and takes an exclusive lock on it
// (flock on <dir>/.lock), so that two pulls or imports of one set do not
// write the same .part files. It fails at once with ErrBusy when the set is
// locked. The lock goes with the process, even on a crash.
func (c *Cache) lockSet(s Set) (unlock func(), err error) {
	dir := filepath.Dir(c.path(s, FileKernel))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("lock %s: %w", s, err)
	}
	f, err := os.OpenFile(filepath.Join(dir, ".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", s, err)
	}
	busy, err := tryLock(f)
	if err != nil || busy {
		f.Close()
		if busy {
			return nil, fmt.Errorf("%s: %w: another rackboot is pulling or importing it", s, ErrBusy)
		}
		return nil, fmt.Errorf("lock %s: %w", s, err)
	}
	return func() {
		unlockFile(f)
		f.Close()
	}, nil
}

// Import copies a kernel and an initramfs (streaming, hashing as it goes)
// into the cache as the given set, with source "imported". Both files are
// checked by their magic first: the kernel must be an x86 bzImage for amd64
// or an arm64 Image for arm64; the initramfs xz, zstd, gzip or cpio. An
// existing set is replaced only when both files were copied.
func (c *Cache) Import(s Set, kernelPath, initramfsPath string) (*Manifest, error) {
	if err := s.Validate(); err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	kfmt, err := sniffFile(kernelPath, func(head []byte) (string, error) { return KernelFormat(head, s.Arch) })
	if err != nil {
		return nil, fmt.Errorf("import kernel: %w", err)
	}
	ifmt, err := sniffFile(initramfsPath, InitramfsFormat)
	if err != nil {
		return nil, fmt.Errorf("import initramfs: %w", err)
	}
	unlock, err := c.lockSet(s)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	defer unlock()
	recs := map[string]FileRecord{}
	srcs := []struct{ file, src, format string }{{FileKernel, kernelPath, kfmt}, {FileInitramfs, initramfsPath, ifmt}}
	for _, x := range srcs {
		sum, size, err := copyPart(x.src, c.path(s, x.file)+partSuffix)
		if err != nil {
			for _, y := range srcs {
				os.Remove(c.path(s, y.file) + partSuffix)
			}
			return nil, fmt.Errorf("import %s of %s: %w", x.file, s, err)
		}
		recs[x.file] = FileRecord{SHA256: sum, Size: size, Source: SourceImported, Time: c.now().UTC(), Format: x.format}
	}
	// An imported set has no cmdline: remove a stale one from an earlier pull.
	if err := os.Remove(c.path(s, FileCmdline)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("import %s: %w", s, err)
	}
	m, err := c.commit(s, recs)
	if err != nil {
		return nil, fmt.Errorf("import: %w", err)
	}
	c.log.Info("imported boot assets", "set", s.String(), "kernel", recs[FileKernel].SHA256, "initramfs", recs[FileInitramfs].SHA256)
	return m, nil
}

// copyPart streams src into dst (created or truncated) and returns its
// sha256 and size; dst is fsynced.
func copyPart(src, dst string) (string, int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(out, h), in)
	if err == nil {
		err = out.Sync()
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(dst)
		return "", 0, fmt.Errorf("copy %s: %w", src, err)
	}
	return hex.EncodeToString(h.Sum(nil)), n, nil
}

// sniffLen is how much of a file the format checks look at.
const sniffLen = 0x240

func sniffFile(name string, check func([]byte) (string, error)) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	head := make([]byte, sniffLen)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	format, err := check(head[:n])
	if err != nil {
		return "", fmt.Errorf("%s: %w", name, err)
	}
	return format, nil
}

// KernelFormat recognises a Linux kernel for arch from its first bytes: an
// x86 bzImage ("HdrS" at 0x202) for amd64; an arm64 Image ("ARM\x64" at
// 0x38) or an EFI zboot image ("MZ", "zimg" at 4) for arm64.
func KernelFormat(head []byte, arch string) (string, error) {
	has := func(off int, magic string) bool {
		return len(head) >= off+len(magic) && string(head[off:off+len(magic)]) == magic
	}
	var format string
	switch {
	case has(0x202, "HdrS") && has(0x1fe, "\x55\xaa"):
		format = "bzImage"
	case has(0x38, "ARM\x64"):
		format = "arm64-image"
	case has(0, "MZ") && has(4, "zimg"):
		format = "efi-zboot"
	default:
		return "", fmt.Errorf("%w: no Linux kernel header (an x86 bzImage has \"HdrS\" at 0x202, an arm64 Image \"ARM\\x64\" at 0x38)", ErrBadImage)
	}
	want := "amd64"
	if format != "bzImage" {
		want = "arm64"
	}
	if want != arch {
		return "", fmt.Errorf("%w: this is an %s kernel (%s), not %s: pass --arch %s", ErrBadImage, want, format, arch, want)
	}
	return format, nil
}

// InitramfsFormat recognises an initramfs by its magic: xz, zstd, gzip or an
// uncompressed cpio archive.
func InitramfsFormat(head []byte) (string, error) {
	switch {
	case bytes.HasPrefix(head, []byte("\xfd7zXZ\x00")):
		return "xz", nil
	case bytes.HasPrefix(head, []byte("\x28\xb5\x2f\xfd")):
		return "zstd", nil
	case bytes.HasPrefix(head, []byte("\x1f\x8b")):
		return "gzip", nil
	case bytes.HasPrefix(head, []byte("070701")), bytes.HasPrefix(head, []byte("070702")):
		return "cpio", nil
	}
	return "", fmt.Errorf("%w: not an initramfs (expected xz, zstd, gzip or cpio data)", ErrBadImage)
}

func sortedFiles(m map[string]FileRecord) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
