package imager

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"sort"
	"strings"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/fat16"

	"github.com/dotfile/rackboot/imager/bootloaders"
)

// Sizes used by the FAT layouts.
const (
	miB = int64(1) << 20
	// minESPSize is the smallest ESP rackboot makes: FAT16 with 16 MiB
	// boots on OVMF (BOOT-MEDIA.md).
	minESPSize = 16 * miB
	// maxFAT16Size is where FAT16 stops (go-diskfs's limit, 2 GiB).
	maxFAT16Size = 2048 * miB
	// metalISOSize is the FAT16 volume holding config.yaml on a USB image.
	metalISOSize = 8 * miB
	// maxConfigSize bounds the machine config (it must fit the metal-iso
	// volume with room to spare).
	maxConfigSize = 4 * miB
	// copyBufSize is the buffer of every streaming copy.
	copyBufSize = 1 << 20
)

// ESP file names (paths relative to the ESP root, as loader entries name them).
const (
	espLoader    = "/EFI/BOOT/BOOTX64.EFI"
	espKernel    = "/vmlinuz"
	espInitrd    = "/initrd.img"
	espLoaderCnf = "/loader/loader.conf"
	espEntries   = "/loader/entries"
	// espLabel is the ESP's FAT volume label.
	espLabel = "EFI"
)

// fatFile is one file written into a FAT filesystem: copied (streaming)
// from Src on disk, read from FS (Name), or Data.
type fatFile struct {
	Path string // absolute, slash-separated
	Src  string
	FS   fs.FS
	Name string
	Data []byte
}

// size returns the file's size without reading it.
func (f fatFile) size() (int64, error) {
	switch {
	case f.Src != "":
		st, err := os.Stat(f.Src)
		if err != nil {
			return 0, err
		}
		if !st.Mode().IsRegular() {
			return 0, fmt.Errorf("%s is not a regular file", f.Src)
		}
		return st.Size(), nil
	case f.FS != nil:
		st, err := fs.Stat(f.FS, f.Name)
		if err != nil {
			return 0, err
		}
		return st.Size(), nil
	}
	return int64(len(f.Data)), nil
}

func (f fatFile) open() (io.ReadCloser, error) {
	switch {
	case f.Src != "":
		return os.Open(f.Src)
	case f.FS != nil:
		return f.FS.Open(f.Name)
	}
	return io.NopCloser(strings.NewReader(string(f.Data))), nil
}

// espFiles lists the ESP of an image: systemd-boot as the removable-media
// loader, its loader.conf and one entry booting the kernel with cmdline.
func espFiles(img ImageSpec, loaders fs.FS) []fatFile {
	entry := img.Name + ".conf"
	return []fatFile{
		{Path: espLoader, FS: loaders, Name: bootloaders.SystemdBoot},
		{Path: espLoaderCnf, Data: []byte(LoaderConf(img.Name))},
		{Path: espEntries + "/" + entry, Data: []byte(LoaderEntry(img.Name, img.Cmdline))},
		{Path: espKernel, Src: img.Kernel},
		{Path: espInitrd, Src: img.Initramfs},
	}
}

// LoaderConf is systemd-boot's loader/loader.conf: boot the machine's entry
// at once, no editor (the command line must not be changed at the console).
func LoaderConf(name string) string {
	return fmt.Sprintf("default %s.conf\ntimeout 0\neditor no\n", name)
}

// LoaderEntry is systemd-boot's loader/entries/<name>.conf.
func LoaderEntry(name, cmdline string) string {
	return fmt.Sprintf("title rackboot %s\nlinux %s\ninitrd %s\noptions %s\n", name, espKernel, espInitrd, cmdline)
}

// FATLayout chooses the filesystem and size of a FAT volume holding
// content bytes of files: FAT16, at least 16 MiB (which OVMF boots: a FAT32
// ESP would need 33 MiB or more for OVMF's 65,525-cluster minimum), at most
// 2 GiB. The size leaves 5% plus 4 MiB free and is a multiple of 4 MiB.
// Larger boot files are refused: go-diskfs v1.9.4's FAT32 fails fsck.fat -n
// (wrong ".." of subdirectories of the root, no free-cluster count).
func FATLayout(content int64) (filesystem.Type, int64, error) {
	if content < 0 {
		return 0, 0, fmt.Errorf("FAT layout: negative content size %d", content)
	}
	size := content + content/20 + 4*miB
	size = (size + 4*miB - 1) / (4 * miB) * (4 * miB)
	if size < minESPSize {
		size = minESPSize
	}
	if size > maxFAT16Size {
		return 0, 0, fmt.Errorf("FAT layout: %d MiB of boot files need a %d MiB volume; at most %d MiB are supported (FAT16)", content/miB, size/miB, maxFAT16Size/miB)
	}
	return filesystem.TypeFat16, size, nil
}

// fatContentSize is what files take in a FAT volume, rounding each up to
// 4 KiB (no cluster size go-diskfs picks is larger below 8 GiB) plus a
// cluster per directory.
func fatContentSize(files []fatFile) (int64, error) {
	var total int64
	dirs := map[string]bool{}
	for _, f := range files {
		n, err := f.size()
		if err != nil {
			return 0, fmt.Errorf("size of %s: %w", f.Path, err)
		}
		total += (n + 4095) / 4096 * 4096
		for d := path.Dir(f.Path); d != "/" && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	return total + int64(len(dirs))*4096, nil
}

// createFAT makes a FAT filesystem of type t on b at [start, start+size).
// Reproducible leaves the volume serial at 0 (timestamps come from
// SOURCE_DATE_EPOCH in go-diskfs).
func createFAT(b backend.Storage, t filesystem.Type, start, size int64, label string) (filesystem.FileSystem, error) {
	switch t {
	case filesystem.TypeFat16:
		return fat16.Create(b, size, start, 512, label, true)
	}
	return nil, fmt.Errorf("create FAT: unsupported filesystem type %v", t)
}

// writeFAT creates the directories of files and streams each file into fsys.
// Progress sees one step per large file.
func writeFAT(ctx context.Context, fsys filesystem.FileSystem, files []fatFile, p Progress) error {
	var dirs []string
	seen := map[string]bool{}
	for _, f := range files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path {
			return fmt.Errorf("FAT path %q is not clean and absolute", f.Path)
		}
		if d := path.Dir(f.Path); d != "/" && !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	sort.Strings(dirs)
	for _, d := range dirs {
		if err := fsys.Mkdir(d); err != nil {
			return fmt.Errorf("mkdir %s: %w", d, err)
		}
	}
	buf := make([]byte, copyBufSize)
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := writeFATFile(fsys, f, buf, p); err != nil {
			return err
		}
	}
	return nil
}

func writeFATFile(fsys filesystem.FileSystem, f fatFile, buf []byte, p Progress) (err error) {
	size, err := f.size()
	if err != nil {
		return fmt.Errorf("write %s: %w", f.Path, err)
	}
	in, err := f.open()
	if err != nil {
		return fmt.Errorf("write %s: %w", f.Path, err)
	}
	defer in.Close()
	out, err := fsys.OpenFile(f.Path, os.O_CREATE|os.O_RDWR|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("create %s: %w", f.Path, err)
	}
	defer func() {
		if cerr := out.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("close %s: %w", f.Path, cerr)
		}
	}()
	var w io.Writer = out
	if size >= 4*miB {
		p.Begin(path.Base(f.Path), 0, size)
		w = io.MultiWriter(out, advancer{p})
		defer func() { p.End(err) }()
	}
	n, err := io.CopyBuffer(w, onlyReader{in}, buf)
	if err != nil {
		return fmt.Errorf("write %s: %w", f.Path, err)
	}
	if n != size {
		return fmt.Errorf("write %s: copied %d bytes, the source has %d (did it change?)", f.Path, n, size)
	}
	return nil
}

// advancer reports written bytes to a Progress.
type advancer struct{ p Progress }

func (a advancer) Write(b []byte) (int, error) {
	a.p.Advance(len(b))
	return len(b), nil
}

// onlyReader hides WriteTo, so io.CopyBuffer uses the given buffer.
type onlyReader struct{ r io.Reader }

func (o onlyReader) Read(b []byte) (int, error) { return o.r.Read(b) }

// quietProgress is a Progress that shows nothing.
type quietProgress struct{}

func (quietProgress) Begin(string, int64, int64) {}
func (quietProgress) Advance(int)                {}
func (quietProgress) End(error)                  {}

// freeFAT16Cluster2 undoes a go-diskfs v1.9.4 slip: its FAT16 Create marks
// cluster 2 allocated (end of chain), as FAT32 does for its root directory,
// though a FAT16 root directory has its own region. Nothing ever uses the
// cluster (go-diskfs thinks it taken), and fsck.fat -n reports it as lost.
// Called once the volume at start is complete, it frees the cluster in
// every FAT copy when it is a lone end-of-chain that no root directory
// entry starts at. Other volumes are left alone.
func freeFAT16Cluster2(f interface {
	io.ReaderAt
	io.WriterAt
}, start int64) error {
	bs := make([]byte, 512)
	if _, err := f.ReadAt(bs, start); err != nil {
		return fmt.Errorf("read FAT boot sector: %w", err)
	}
	if string(bs[54:62]) != "FAT16   " || bs[510] != 0x55 || bs[511] != 0xaa {
		return nil
	}
	bps := int64(binary.LittleEndian.Uint16(bs[11:]))
	reserved := int64(binary.LittleEndian.Uint16(bs[14:]))
	fats := int64(bs[16])
	rootEntries := int64(binary.LittleEndian.Uint16(bs[17:]))
	fatSectors := int64(binary.LittleEndian.Uint16(bs[22:]))
	if bps != 512 || fats < 1 || fats > 2 || fatSectors == 0 {
		return fmt.Errorf("unexpected FAT16 geometry: %d bytes per sector, %d FATs of %d sectors", bps, fats, fatSectors)
	}
	root := make([]byte, rootEntries*32)
	if _, err := f.ReadAt(root, start+(reserved+fats*fatSectors)*bps); err != nil {
		return fmt.Errorf("read FAT16 root directory: %w", err)
	}
	for i := 0; i+32 <= len(root); i += 32 {
		if root[i] != 0 && root[i] != 0xe5 && root[i+11] != 0x0f && binary.LittleEndian.Uint16(root[i+26:]) == 2 {
			return nil // in use after all
		}
	}
	entry := make([]byte, 2)
	for i := range fats {
		off := start + (reserved+i*fatSectors)*bps + 2*2
		if _, err := f.ReadAt(entry, off); err != nil {
			return fmt.Errorf("read FAT: %w", err)
		}
		if binary.LittleEndian.Uint16(entry) < 0xfff8 {
			return nil // part of a chain: leave it
		}
		if _, err := f.WriteAt([]byte{0, 0}, off); err != nil {
			return fmt.Errorf("write FAT: %w", err)
		}
	}
	return nil
}
