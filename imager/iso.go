package imager

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"

	"github.com/dotfile/rackboot/imager/bootloaders"
	"github.com/dotfile/rackboot/pxe"
)

// MetalISOLabel is the volume label (ISO) and the filesystem label and GPT
// partition name (USB) where Talos's talos.config=metal-iso looks for
// /config.yaml.
const MetalISOLabel = "metal-iso"

// ConfigFile is the machine config's name at the root of the metal-iso volume.
const ConfigFile = "config.yaml"

// HaltIfInstalled is the kernel argument Talos's imager adds to every ISO
// (pkg/imager/imager.go, buildCmdline, for quirks that support it): a
// machine that already has Talos on a disk but boots the install medium
// again halts with a message instead of running Talos from the medium.
const HaltIfInstalled = "talos.halt_if_installed=1"

// InstallMediaCmdline is cmdline with HaltIfInstalled where Talos's imager
// puts it, after the leading talos.platform= and console= arguments; a
// command line that already sets talos.halt_if_installed (to 0 or 1) is
// left alone.
func InstallMediaCmdline(cmdline string) string {
	args := strings.Fields(cmdline)
	at := 0
	for i, a := range args {
		k, _, _ := strings.Cut(a, "=")
		switch k {
		case "talos.halt_if_installed":
			return cmdline
		case "talos.platform", "console":
			if i == at {
				at++
			}
		}
	}
	return strings.Join(slices.Insert(args, at, HaltIfInstalled), " ")
}

// ISO tree paths (relative to the ISO root).
const (
	isoLoaderDir = "isolinux"
	isoESP       = "boot/efiboot.img"
	isoKernel    = "boot/vmlinuz"
	isoInitrd    = "boot/initrd.img"
	isoCatalog   = "isolinux/boot.cat"
)

var imageNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ImageSpec is what one machine's install image carries.
type ImageSpec struct {
	// Name is the machine's name: the boot loader entry is named after it.
	Name string
	// Cmdline is the kernel command line; for Talos it ends in
	// talos.config=metal-iso. ISO and USB add HaltIfInstalled to it.
	Cmdline string
	// Config is the machine config, written as /config.yaml on the
	// metal-iso volume. It holds the cluster's secrets.
	Config []byte
	// Kernel and Initramfs are the paths of the boot files (streamed, never
	// read into memory).
	Kernel, Initramfs string
}

// Validate checks the spec; every problem is reported.
func (s ImageSpec) Validate() error {
	var bad []string
	if !imageNameRE.MatchString(s.Name) {
		bad = append(bad, fmt.Sprintf("name %q is not 1-63 letters, digits, '.', '_' or '-'", s.Name))
	}
	if strings.TrimSpace(s.Cmdline) == "" {
		bad = append(bad, "empty kernel command line")
	}
	if strings.ContainsAny(s.Cmdline, "\n\r\x00") {
		bad = append(bad, "kernel command line has a line break or NUL")
	}
	if len(s.Cmdline) > pxe.MaxCmdline {
		bad = append(bad, fmt.Sprintf("kernel command line has %d bytes, Linux takes at most %d", len(s.Cmdline), pxe.MaxCmdline))
	}
	if len(s.Config) == 0 {
		bad = append(bad, "empty machine config")
	}
	if len(s.Config) > int(maxConfigSize) {
		bad = append(bad, fmt.Sprintf("machine config has %d bytes, at most %d fit", len(s.Config), maxConfigSize))
	}
	for _, f := range []struct{ what, path string }{{"kernel", s.Kernel}, {"initramfs", s.Initramfs}} {
		if f.path == "" {
			bad = append(bad, "no "+f.what+" given")
			continue
		}
		st, err := os.Stat(f.path)
		switch {
		case err != nil:
			bad = append(bad, fmt.Sprintf("%s: %v", f.what, err))
		case !st.Mode().IsRegular():
			bad = append(bad, fmt.Sprintf("%s %s is not a regular file", f.what, f.path))
		case st.Size() == 0:
			bad = append(bad, fmt.Sprintf("%s %s is empty", f.what, f.path))
		case st.Size() >= 4<<30:
			bad = append(bad, fmt.Sprintf("%s %s is 4 GiB or more (ISO 9660 and FAT cannot hold it)", f.what, f.path))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("image for %q: %s", s.Name, strings.Join(bad, "; "))
	}
	return nil
}

// Image describes a written image.
type Image struct {
	Path   string
	Size   int64
	SHA256 string
	// Epoch is the time every timestamp in the image was set to.
	Epoch time.Time
}

// Builder writes install images. It is safe for one build at a time.
type Builder struct {
	loaders  fs.FS
	log      *slog.Logger
	progress Progress
	now      func() time.Time
	getenv   func(string) string
	sde      time.Time
	haveSDE  bool
	tempDir  string
}

// BuilderOption configures a Builder.
type BuilderOption func(*Builder)

// WithBuilderLogger sets the logger (default: discard).
func WithBuilderLogger(l *slog.Logger) BuilderOption { return func(b *Builder) { b.log = l } }

// WithBuilderProgress shows long steps (default: nothing).
func WithBuilderProgress(p Progress) BuilderOption { return func(b *Builder) { b.progress = p } }

// WithBuilderClock sets the clock that dates images built without
// SOURCE_DATE_EPOCH (default time.Now).
func WithBuilderClock(now func() time.Time) BuilderOption { return func(b *Builder) { b.now = now } }

// WithSourceDateEpoch makes builds reproducible: every timestamp is t and
// GUIDs derive from the machine name and t. go-diskfs takes FAT timestamps
// from the SOURCE_DATE_EPOCH environment variable itself, so the build
// checks that it holds the same value.
func WithSourceDateEpoch(t time.Time) BuilderOption {
	return func(b *Builder) { b.sde, b.haveSDE = t.UTC().Truncate(time.Second), true }
}

// WithBuilderGetenv sets how the environment is read (default os.Getenv).
func WithBuilderGetenv(getenv func(string) string) BuilderOption {
	return func(b *Builder) { b.getenv = getenv }
}

// WithBuilderTempDir sets where the ISO tree is staged (default: the
// output's directory, so large files are not copied across file systems).
func WithBuilderTempDir(dir string) BuilderOption { return func(b *Builder) { b.tempDir = dir } }

// NewBuilder returns a Builder taking boot loaders from loaders (see
// package bootloaders).
func NewBuilder(loaders fs.FS, opts ...BuilderOption) (*Builder, error) {
	if loaders == nil {
		return nil, fmt.Errorf("image builder: %w", bootloaders.ErrMissing)
	}
	if err := bootloaders.Check(loaders); err != nil {
		return nil, fmt.Errorf("image builder: boot loaders: %w", err)
	}
	b := &Builder{loaders: loaders, log: slog.New(slog.DiscardHandler), progress: quietProgress{}, now: time.Now, getenv: os.Getenv}
	for _, o := range opts {
		o(b)
	}
	return b, nil
}

// epoch is the time stamped into an image.
func (b *Builder) epoch() (time.Time, error) {
	if !b.haveSDE {
		return b.now().UTC().Truncate(time.Second), nil
	}
	env, ok, err := ParseSourceDateEpoch(b.getenv(EnvSourceDateEpoch))
	if err != nil {
		return time.Time{}, err
	}
	if !ok || !env.Equal(b.sde) {
		return time.Time{}, fmt.Errorf("reproducible build at %d: go-diskfs dates FAT files from the environment, so set %s=%d there too",
			b.sde.Unix(), EnvSourceDateEpoch, b.sde.Unix())
	}
	return b.sde, nil
}

// ISOLinuxConfig is isolinux.cfg: boot the machine's kernel at once.
func ISOLinuxConfig(cmdline string) string {
	return "DEFAULT rackboot\nPROMPT 0\nTIMEOUT 0\nLABEL rackboot\n  KERNEL /" + isoKernel +
		"\n  INITRD /" + isoInitrd + "\n  APPEND " + cmdline + "\n"
}

// ISO writes img as an ISO 9660 image (Rock Ridge, no Joliet) at out,
// bootable by BIOS (El Torito no-emulation isolinux, with a boot table)
// and UEFI (El Torito EFI entry: a FAT ESP with systemd-boot, the kernel
// and the initramfs, since OVMF cannot read ISO 9660). The volume is
// labelled metal-iso and holds /config.yaml. The kernel gets
// InstallMediaCmdline(img.Cmdline). out is written 0600, through a
// temporary file renamed into place; it holds the cluster's secrets.
func (b *Builder) ISO(ctx context.Context, img ImageSpec, out string) (*Image, error) {
	img.Cmdline = InstallMediaCmdline(img.Cmdline)
	if err := img.Validate(); err != nil {
		return nil, err
	}
	epoch, err := b.epoch()
	if err != nil {
		return nil, fmt.Errorf("build ISO for %s: %w", img.Name, err)
	}
	start := b.now()
	tmpDir := b.tempDir
	if tmpDir == "" {
		tmpDir = filepath.Dir(out)
	}
	work, err := os.MkdirTemp(tmpDir, ".rackboot-iso-")
	if err != nil {
		return nil, fmt.Errorf("build ISO for %s: staging directory: %w", img.Name, err)
	}
	defer os.RemoveAll(work) // Finalize removes it too
	if err := b.stageISO(ctx, img, work); err != nil {
		return nil, fmt.Errorf("build ISO for %s: %w", img.Name, err)
	}
	var staged int64
	if err := filepath.WalkDir(work, func(_ string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if info, err := d.Info(); err == nil && d.Type().IsRegular() {
			staged += (info.Size() + isoSector - 1) / isoSector * isoSector
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("build ISO for %s: %w", img.Name, err)
	}
	res, err := writeAtomically(out, func(f *os.File) error {
		// A generous upper bound; the file is cut to the volume size after.
		size := staged + 4*miB
		if err := f.Truncate(size); err != nil {
			return err
		}
		p := b.progress
		p.Begin(filepath.Base(out), 0, staged)
		err := finalizeISO(f, size, work, p)
		p.End(err)
		if err != nil {
			return err
		}
		vol, err := isoVolumeSize(f)
		if err != nil {
			return err
		}
		if err := f.Truncate(vol); err != nil {
			return err
		}
		if err := padISOIdentifiers(f); err != nil {
			return err
		}
		st, err := NormalizeISOTimes(f, epoch)
		if err != nil {
			return err
		}
		b.log.Debug("normalized ISO times", "records", st.Records, "tf", st.TFEntries, "px", st.PXEntries)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("build ISO for %s: %w", img.Name, err)
	}
	res.Epoch = epoch
	b.log.Info("built ISO", "machine", img.Name, "path", res.Path, "bytes", res.Size, "sha256", res.SHA256, "took", b.now().Sub(start).Round(time.Millisecond))
	return res, nil
}

// stageISO lays out the ISO tree in work, modes fixed (Rock Ridge records
// them): directories 0755, files 0644, config.yaml 0600.
func (b *Builder) stageISO(ctx context.Context, img ImageSpec, work string) error {
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	for _, d := range []string{isoLoaderDir, "boot"} {
		if err := os.Mkdir(filepath.Join(work, d), 0o755); err != nil {
			return err
		}
		if err := os.Chmod(filepath.Join(work, d), 0o755); err != nil {
			return err
		}
	}
	files := []struct {
		path string
		mode os.FileMode
		src  fatFile
	}{
		{isoLoaderDir + "/" + bootloaders.ISOLinux, 0o644, fatFile{FS: b.loaders, Name: bootloaders.ISOLinux}},
		{isoLoaderDir + "/" + bootloaders.LDLinux, 0o644, fatFile{FS: b.loaders, Name: bootloaders.LDLinux}},
		{isoLoaderDir + "/isolinux.cfg", 0o644, fatFile{Data: []byte(ISOLinuxConfig(img.Cmdline))}},
		{isoKernel, 0o644, fatFile{Src: img.Kernel}},
		{isoInitrd, 0o644, fatFile{Src: img.Initramfs}},
		{ConfigFile, 0o600, fatFile{Data: img.Config}},
	}
	buf := make([]byte, copyBufSize)
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := stageFile(filepath.Join(work, filepath.FromSlash(f.path)), f.mode, f.src, buf); err != nil {
			return fmt.Errorf("stage %s: %w", f.path, err)
		}
	}
	// The UEFI boot image: a FAT ESP, the El Torito EFI entry.
	esp := espFiles(img, b.loaders)
	content, err := fatContentSize(esp)
	if err != nil {
		return err
	}
	fsType, size, err := FATLayout(content)
	if err != nil {
		return err
	}
	espPath := filepath.Join(work, filepath.FromSlash(isoESP))
	f, err := os.OpenFile(espPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("create ESP image: %w", err)
	}
	defer f.Close()
	if err := f.Chmod(0o644); err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		return fmt.Errorf("size ESP image: %w", err)
	}
	espStore := newBufferedStorage(file.New(f, false))
	fsys, err := createFAT(espStore, fsType, 0, size, espLabel)
	if err != nil {
		return fmt.Errorf("create ESP filesystem (%d MiB): %w", size/miB, err)
	}
	if err := writeFAT(ctx, fsys, esp, b.progress); err != nil {
		return fmt.Errorf("fill ESP: %w", err)
	}
	if err := espStore.Flush(); err != nil {
		return fmt.Errorf("fill ESP: %w", err)
	}
	if err := freeFAT16Cluster2(f, 0); err != nil {
		return fmt.Errorf("ESP image: %w", err)
	}
	b.log.Debug("built ESP image", "type", fsType, "bytes", size, "content", content)
	return f.Close()
}

// stageFile streams src into a new file at p with mode.
func stageFile(p string, mode os.FileMode, src fatFile, buf []byte) error {
	in, err := src.open()
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	// A file source goes through copy_file_range (os.File.ReadFrom): the
	// kernel copies it without a trip through this process.
	var r io.Reader = onlyReader{in}
	if f, ok := in.(*os.File); ok {
		r = f
	}
	if _, err := io.CopyBuffer(out, r, buf); err != nil {
		out.Close()
		return err
	}
	if err := out.Chmod(mode); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// finalizeISO writes the staged tree work into f with go-diskfs. Finalize
// removes work.
func finalizeISO(f *os.File, size int64, work string, p Progress) error {
	buf := newBufferedStorage(file.New(f, false))
	b := progressStorage{Storage: buf, p: p}
	iso, err := iso9660.Create(b, size, 0, isoSector, work)
	if err != nil {
		return fmt.Errorf("create ISO 9660: %w", err)
	}
	bios := &iso9660.ElToritoEntry{
		Platform:  iso9660.BIOS,
		Emulation: iso9660.NoEmulation,
		BootFile:  isoLoaderDir + "/" + bootloaders.ISOLinux,
		BootTable: true,
	}
	bios.SetLoadSize(4)
	efi := &iso9660.ElToritoEntry{
		Platform:  iso9660.EFI,
		Emulation: iso9660.NoEmulation,
		BootFile:  isoESP,
	}
	err = iso.Finalize(iso9660.FinalizeOptions{
		RockRidge:        true,
		Joliet:           false, // Joliet moves the boot record and SeaBIOS cannot boot (BOOT-MEDIA.md)
		VolumeIdentifier: MetalISOLabel,
		ElTorito: &iso9660.ElTorito{
			BootCatalog: isoCatalog,
			Entries:     []*iso9660.ElToritoEntry{bios, efi},
		},
	})
	if err != nil {
		return fmt.Errorf("finalize ISO 9660: %w", err)
	}
	if err := buf.Flush(); err != nil {
		return fmt.Errorf("finalize ISO 9660: %w", err)
	}
	return nil
}

// isoVolumeSize reads the volume space size from the primary volume
// descriptor.
func isoVolumeSize(f io.ReaderAt) (int64, error) {
	pvd := make([]byte, isoSector)
	if _, err := f.ReadAt(pvd, isoFirstVD*isoSector); err != nil {
		return 0, fmt.Errorf("read primary volume descriptor: %w", err)
	}
	if pvd[0] != vdTypePrimary || string(pvd[1:6]) != "CD001" {
		return 0, fmt.Errorf("read primary volume descriptor: %w", ErrNotISO)
	}
	return int64(binary.LittleEndian.Uint32(pvd[80:84])) * isoSector, nil
}

// padISOIdentifiers replaces the NUL padding go-diskfs leaves after the
// text fields of the primary volume descriptor (system, volume, volume set,
// publisher, preparer, application identifiers, file names) with the
// spaces ECMA-119 8.4 prescribes, so every reader sees "metal-iso" as the
// label, not "metal-iso" and 23 NULs.
func padISOIdentifiers(f isoRW) error {
	pvd := make([]byte, isoSector)
	off := int64(isoFirstVD * isoSector)
	if _, err := f.ReadAt(pvd, off); err != nil {
		return fmt.Errorf("read primary volume descriptor: %w", err)
	}
	if pvd[0] != vdTypePrimary || string(pvd[1:6]) != "CD001" {
		return fmt.Errorf("pad identifiers: %w", ErrNotISO)
	}
	for _, field := range [][2]int{{8, 32}, {40, 32}, {190, 128}, {318, 128}, {446, 128}, {574, 128}, {702, 37}, {739, 37}, {776, 37}} {
		b := pvd[field[0] : field[0]+field[1]]
		for i := len(b) - 1; i >= 0 && b[i] == 0; i-- {
			b[i] = ' '
		}
	}
	if _, err := f.WriteAt(pvd, off); err != nil {
		return fmt.Errorf("write primary volume descriptor: %w", err)
	}
	return nil
}

// progressStorage reports bytes written through a go-diskfs backend.
type progressStorage struct {
	backend.Storage
	p Progress
}

func (s progressStorage) Writable() (backend.WritableFile, error) {
	w, err := s.Storage.Writable()
	if err != nil {
		return nil, err
	}
	return progressFile{WritableFile: w, p: s.p}, nil
}

type progressFile struct {
	backend.WritableFile
	p Progress
}

func (f progressFile) WriteAt(b []byte, off int64) (int, error) {
	n, err := f.WritableFile.WriteAt(b, off)
	f.p.Advance(n)
	return n, err
}

// writeAtomically creates a 0600 temporary file beside out, lets fill write
// it, fsyncs, hashes and renames it to out. On any error the temporary file
// is removed and out is left as it was.
func writeAtomically(out string, fill func(*os.File) error) (res *Image, err error) {
	dir := filepath.Dir(out)
	f, err := os.CreateTemp(dir, "."+filepath.Base(out)+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", out, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return nil, err
	}
	if err := fill(f); err != nil {
		return nil, err
	}
	// Hash while fsync waits for the disk: both read the same page cache,
	// and the image is complete before either starts.
	type sum struct {
		n   int64
		h   []byte
		err error
	}
	hashed := make(chan sum, 1)
	go func() {
		h := sha256.New()
		n, err := io.CopyBuffer(h, io.NewSectionReader(f, 0, 1<<62), make([]byte, copyBufSize))
		hashed <- sum{n, h.Sum(nil), err}
	}()
	syncErr := f.Sync()
	hs := <-hashed
	if syncErr != nil {
		return nil, fmt.Errorf("fsync %s: %w", tmp, syncErr)
	}
	if hs.err != nil {
		return nil, fmt.Errorf("hash %s: %w", tmp, hs.err)
	}
	n := hs.n
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, out); err != nil {
		return nil, fmt.Errorf("rename %s to %s: %w", tmp, out, err)
	}
	if d, err := os.Open(dir); err == nil {
		if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
			d.Close()
			return nil, fmt.Errorf("fsync %s: %w", dir, err)
		}
		d.Close()
	}
	return &Image{Path: out, Size: n, SHA256: hex.EncodeToString(hs.h)}, nil
}
