// Package install lays out the stand-in's install disk the way Talos v1.13's
// installer does for a UEFI system booted by systemd-boot (internal/pkg/
// partition/partition.go, cmd/installer/pkg/install/install.go): a GPT with
// EFI (the ESP: systemd-boot as the removable-media loader, one loader
// entry, the kernel and the initramfs), META (1 MiB, Talos's "installed"
// marker) and STATE (where Talos keeps the machine config, config.yaml).
//
// Differences, all said where they matter: the ESP and STATE are FAT16
// (Talos formats STATE as XFS, which the stand-in cannot make), the ESP is
// sized to its files (Talos: 1 GiB for a UKI), and the loader entry boots a
// kernel and an initramfs instead of a UKI.
package install

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat16"
	"github.com/google/uuid"
	blkdev "github.com/siderolabs/go-blockdevice/v2/block"
	"github.com/siderolabs/go-blockdevice/v2/partitioning/gpt"

	"github.com/dotfile/rackboot/imager"
	"github.com/dotfile/rackboot/lab/standin/marker"
)

// Partition names (Talos's constants.EFIPartitionLabel, MetaPartitionLabel,
// StatePartitionLabel), the config's file name on STATE
// (constants.ConfigFilename) and the loader entry's name.
const (
	ESPName    = "EFI"
	StateName  = "STATE"
	ConfigFile = "config.yaml"
	EntryName  = "talos"
	// StateSize is STATE's size here (Talos: 100 MiB of XFS).
	StateSize = 8 << 20
	// Paths on the ESP (those imager.LoaderEntry names).
	LoaderPath = "/EFI/BOOT/BOOTX64.EFI"
	KernelPath = "/vmlinuz"
	InitrdPath = "/initrd.img"
)

// Partition types: the EFI System Partition, and Linux filesystem data for
// META and STATE (as Talos gives them).
var (
	ESPType   = uuid.MustParse("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
	LinuxType = marker.TypeGUID
)

// ErrNoState is returned by ReadConfig when the disk has no STATE partition
// (a disk installed by an older stand-in: META only).
var ErrNoState = errors.New("no " + StateName + " partition")

// Payload is what goes on the disk.
type Payload struct {
	Loader    []byte // systemd-bootx64.efi
	Kernel    string // path of the kernel to copy
	Initramfs string // path of the initramfs to copy
	Cmdline   string // the loader entry's options
	Config    []byte // the machine config, saved on STATE
}

// Part is one partition's byte range.
type Part struct {
	Name        string
	Start, Size int64
}

// Layout is what Write made, in partition order.
type Layout []Part

// ESPFiles are the files of the ESP for p.
func ESPFiles(p Payload) []imager.FATVolumeFile {
	return []imager.FATVolumeFile{
		{Path: LoaderPath, Data: p.Loader},
		{Path: "/loader/loader.conf", Data: []byte(imager.LoaderConf(EntryName))},
		{Path: "/loader/entries/" + EntryName + ".conf", Data: []byte(imager.LoaderEntry(EntryName, p.Cmdline))},
		{Path: KernelPath, Src: p.Kernel},
		{Path: InitrdPath, Src: p.Initramfs},
	}
}

// WritePath installs p on the block device (or image file) at path.
func WritePath(ctx context.Context, path string, p Payload) (Layout, error) {
	bd, err := blkdev.NewFromPath(path, blkdev.OpenForWrite())
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	gd, err := gpt.DeviceFromBlockDevice(bd)
	if err != nil {
		bd.Close() //nolint:errcheck
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	l, err := Partition(gd, p)
	if cerr := bd.Close(); err == nil && cerr != nil {
		err = cerr
	}
	if err != nil {
		return nil, fmt.Errorf("partition %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if err := Fill(ctx, f, l, p); err != nil {
		return nil, fmt.Errorf("install on %s: %w", path, err)
	}
	return l, f.Sync()
}

// Partition replaces dev's partition table with EFI (sized to p's files),
// META (zeroed) and STATE, and returns their byte ranges.
func Partition(dev gpt.Device, p Payload) (Layout, error) {
	espSize, err := imager.FATVolumeSize(ESPFiles(p))
	if err != nil {
		return nil, fmt.Errorf("ESP size: %w", err)
	}
	need := uint64(espSize) + marker.Size + StateSize + 4<<20
	if dev.GetSize() < need {
		return nil, fmt.Errorf("disk of %d bytes is too small: the install needs %d", dev.GetSize(), need)
	}
	t, err := gpt.New(dev)
	if err != nil {
		return nil, fmt.Errorf("new GPT: %w", err)
	}
	sector := int64(dev.GetSectorSize())
	var l Layout
	for _, want := range []struct {
		name string
		size uint64
		typ  uuid.UUID
	}{
		{ESPName, uint64(espSize), ESPType},
		{marker.Name, marker.Size, marker.TypeGUID},
		{StateName, StateSize, LinuxType},
	} {
		_, part, err := t.AllocatePartition(want.size, want.name, want.typ)
		if err != nil {
			return nil, fmt.Errorf("allocate %s: %w", want.name, err)
		}
		start, size := int64(part.FirstLBA)*sector, int64(part.LastLBA-part.FirstLBA+1)*sector
		if uint64(start+size) > dev.GetSize() || size != int64(want.size) {
			return nil, fmt.Errorf("allocate %s: %d bytes at %d on a disk of %d", want.name, size, start, dev.GetSize())
		}
		l = append(l, Part{Name: want.name, Start: start, Size: size})
	}
	if err := t.Write(); err != nil {
		return nil, fmt.Errorf("write GPT: %w", err)
	}
	w, size, err := t.PartitionWriter(1)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", marker.Name, err)
	}
	if _, err := io.CopyN(w, zeros{}, int64(size)); err != nil {
		return nil, fmt.Errorf("zero %s: %w", marker.Name, err)
	}
	return l, dev.Sync()
}

// Fill writes the ESP and STATE filesystems of l on f.
func Fill(ctx context.Context, f *os.File, l Layout, p Payload) error {
	esp, ok1 := l.find(ESPName)
	state, ok2 := l.find(StateName)
	if !ok1 || !ok2 {
		return fmt.Errorf("layout %v lacks %s or %s", l, ESPName, StateName)
	}
	if err := writeVolume(ctx, f, esp, ESPFiles(p)); err != nil {
		return err
	}
	return writeVolume(ctx, f, state, []imager.FATVolumeFile{{Path: "/" + ConfigFile, Data: p.Config}})
}

// writeVolume makes the FAT volume in a temporary file (tmpfs in the
// guest) and copies it to part of f in large writes: go-diskfs writes a
// cluster at a time, and each small write to a block device costs a system
// call and a bio, which under TCG made the install take seconds more.
func writeVolume(ctx context.Context, f *os.File, part Part, files []imager.FATVolumeFile) error {
	tmp, err := os.CreateTemp("", "standin-"+part.Name+"-*.img")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := tmp.Truncate(part.Size); err != nil {
		return err
	}
	if err := imager.WriteFATVolume(ctx, tmp, 0, part.Size, part.Name, files); err != nil {
		return err
	}
	if _, err := tmp.Seek(0, io.SeekStart); err != nil {
		return err
	}
	buf := make([]byte, 4<<20)
	if _, err := io.CopyBuffer(io.NewOffsetWriter(f, part.Start), io.LimitReader(tmp, part.Size), buf); err != nil {
		return fmt.Errorf("write %s: %w", part.Name, err)
	}
	return nil
}

func (l Layout) find(name string) (Part, bool) {
	for _, p := range l {
		if p.Name == name {
			return p, true
		}
	}
	return Part{}, false
}

// ReadConfigPath reads config.yaml from the STATE partition of the block
// device (or image file) at path.
func ReadConfigPath(path string) ([]byte, error) {
	var b []byte
	err := withState(path, os.O_RDONLY, func(f *os.File, state Part) (err error) {
		b, err = ReadConfig(f, state)
		return err
	})
	return b, err
}

// FindState is the byte range of dev's STATE partition.
func FindState(dev gpt.Device) (Part, error) {
	t, err := gpt.Read(dev)
	if err != nil {
		return Part{}, fmt.Errorf("read GPT: %w", err)
	}
	sector := int64(dev.GetSectorSize())
	for _, p := range t.Partitions() {
		if p != nil && p.Name == StateName {
			return Part{Name: StateName, Start: int64(p.FirstLBA) * sector, Size: int64(p.LastLBA-p.FirstLBA+1) * sector}, nil
		}
	}
	return Part{}, ErrNoState
}

// ESP is the install disk's EFI partition as a UEFI boot entry names it.
type ESP struct {
	Number             uint32 // partition number, from 1
	StartLBA, SizeLBAs uint64 // in the disk's logical sectors
	GUID               uuid.UUID
}

// FindESPPath finds the partition named EFI on the disk (or image file)
// at path, as Talos's sdboot.CreateBootEntry does with blkid: exactly one
// partition with that name, and its unique GUID.
func FindESPPath(path string) (ESP, error) {
	f, err := os.Open(path)
	if err != nil {
		return ESP{}, err
	}
	defer f.Close()
	var gd gpt.Device
	if st, err := f.Stat(); err == nil && st.Mode().IsRegular() {
		gd, err = gpt.DeviceFromFile(f)
		if err != nil {
			return ESP{}, fmt.Errorf("open %s: %w", path, err)
		}
	} else {
		bd, err := blkdev.NewFromPath(path)
		if err != nil {
			return ESP{}, fmt.Errorf("open %s: %w", path, err)
		}
		defer bd.Close() //nolint:errcheck
		if gd, err = gpt.DeviceFromBlockDevice(bd); err != nil {
			return ESP{}, fmt.Errorf("open %s: %w", path, err)
		}
	}
	t, err := gpt.Read(gd)
	if err != nil {
		return ESP{}, fmt.Errorf("read the GPT of %s: %w", path, err)
	}
	var found []ESP
	for i, p := range t.Partitions() {
		if p != nil && p.Name == ESPName {
			found = append(found, ESP{Number: uint32(i + 1), StartLBA: p.FirstLBA, SizeLBAs: p.LastLBA - p.FirstLBA + 1, GUID: p.PartGUID})
		}
	}
	switch {
	case len(found) == 0:
		return ESP{}, fmt.Errorf("EFI partition not found on install disk %q", path)
	case len(found) > 1:
		return ESP{}, fmt.Errorf("multiple EFI partitions found on install disk %q, expected only one", path)
	case found[0].GUID == uuid.Nil:
		return ESP{}, fmt.Errorf("EFI partition UUID not found on install disk %q", path)
	}
	return found[0], nil
}

// ReadConfig reads config.yaml from the FAT filesystem of state on f.
func ReadConfig(f *os.File, state Part) ([]byte, error) {
	b, err := readStateFile(f, state, ConfigFile)
	if errors.Is(err, errNoFile) {
		return nil, fmt.Errorf("%s on %s: not found", ConfigFile, StateName)
	}
	return b, err
}

// errNoFile: STATE has no such file.
var errNoFile = errors.New("no such file")

// readStateFile reads name from the FAT filesystem of state on f.
func readStateFile(f *os.File, state Part, name string) ([]byte, error) {
	fsys, err := fat16.Read(file.New(f, true), state.Size, state.Start, 512)
	if err != nil {
		return nil, fmt.Errorf("read %s filesystem: %w", StateName, err)
	}
	// go-diskfs v1.9.4's FAT16 reads past a file's end (to its last
	// cluster's): take the size from the directory entry.
	entries, err := fsys.ReadDir(".")
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", StateName, err)
	}
	size := int64(-1)
	for _, e := range entries {
		if strings.EqualFold(e.Name(), name) {
			info, err := e.Info()
			if err != nil {
				return nil, fmt.Errorf("%s on %s: %w", name, StateName, err)
			}
			size = info.Size()
		}
	}
	if size < 0 {
		return nil, errNoFile
	}
	if size > 16<<20 {
		return nil, fmt.Errorf("%s on %s: %d bytes", name, StateName, size)
	}
	cf, err := fsys.OpenFile("/"+name, os.O_RDONLY)
	if err != nil {
		return nil, fmt.Errorf("open %s on %s: %w", name, StateName, err)
	}
	defer cf.Close()
	b, err := io.ReadAll(io.LimitReader(cf, size))
	if err != nil {
		return nil, fmt.Errorf("read %s on %s: %w", name, StateName, err)
	}
	return b, nil
}

// UpgradedImageFile is the file on STATE that names the installer image
// the last upgrade installed (Talos has its version in the booted image;
// the stand-in's boot files are the same for every version, so the
// installed system reads its version from here).
const UpgradedImageFile = "upgraded-image"

// ReadUpgradedImagePath is the installer image the last upgrade of the
// disk (or image file) at path installed: "" when it was never upgraded.
func ReadUpgradedImagePath(path string) (string, error) {
	var image string
	err := withState(path, os.O_RDONLY, func(f *os.File, state Part) error {
		b, err := readStateFile(f, state, UpgradedImageFile)
		if errors.Is(err, errNoFile) {
			return nil
		}
		image = strings.TrimSpace(string(b))
		return err
	})
	return image, err
}

// withState opens path with flag and calls fn with its STATE partition.
func withState(path string, flag int, fn func(*os.File, Part) error) error {
	gd, closeGD, err := openGPT(path)
	if err != nil {
		return err
	}
	state, err := FindState(gd)
	closeGD()
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := fn(f, state); err != nil {
		return err
	}
	if flag&(os.O_RDWR|os.O_WRONLY) != 0 {
		return f.Sync()
	}
	return nil
}

// Upgrade is what an upgrade writes: the new boot files and the image
// they came from.
type Upgrade struct {
	Loader    []byte // systemd-bootx64.efi
	Kernel    string // path of the new kernel
	Initramfs string // path of the new initramfs
	Cmdline   string // the loader entry's options
	Image     string // the installer image, recorded on STATE
}

// UpgradePath upgrades the installed disk (or image file) at path the way
// Talos's installer does in upgrade mode: the boot partition gets the new
// image's boot files, META and STATE stay (STATE keeps its config.yaml and
// gains UpgradedImageFile). Talos keeps the previous UKI beside the new
// one (A/B); the stand-in's ESP holds one kernel and initramfs, which are
// replaced. The new files must fit the ESP the install made (its size
// leaves 5% plus 4 MiB free).
func UpgradePath(ctx context.Context, path string, u Upgrade) error {
	esp, err := FindESPPath(path)
	if err != nil {
		return err
	}
	sector, err := sectorSize(path)
	if err != nil {
		return err
	}
	espPart := Part{Name: ESPName, Start: int64(esp.StartLBA) * sector, Size: int64(esp.SizeLBAs) * sector}
	files := ESPFiles(Payload{Loader: u.Loader, Kernel: u.Kernel, Initramfs: u.Initramfs, Cmdline: u.Cmdline})
	need, err := imager.FATVolumeSize(files)
	if err != nil {
		return fmt.Errorf("ESP size: %w", err)
	}
	if need > espPart.Size {
		return fmt.Errorf("the new boot files need an EFI partition of %d MiB, the installed one has %d MiB: reinstall the machine (rackboot machine reset, then netboot)", need>>20, espPart.Size>>20)
	}
	return withState(path, os.O_RDWR, func(f *os.File, state Part) error {
		cfg, err := ReadConfig(f, state)
		if err != nil {
			return err
		}
		if err := writeVolume(ctx, f, espPart, files); err != nil {
			return err
		}
		return writeVolume(ctx, f, state, []imager.FATVolumeFile{
			{Path: "/" + ConfigFile, Data: cfg},
			{Path: "/" + UpgradedImageFile, Data: []byte(u.Image + "\n")},
		})
	})
}

// sectorSize is the logical sector size of the disk (or image file) at
// path.
func sectorSize(path string) (int64, error) {
	gd, closeGD, err := openGPT(path)
	if err != nil {
		return 0, err
	}
	defer closeGD()
	return int64(gd.GetSectorSize()), nil
}

// openGPT opens the block device or image file at path read-only for
// its partition table.
func openGPT(path string) (gpt.Device, func(), error) {
	if st, err := os.Stat(path); err == nil && st.Mode().IsRegular() {
		f, err := os.Open(path)
		if err != nil {
			return nil, nil, err
		}
		gd, err := gpt.DeviceFromFile(f)
		if err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("open %s: %w", path, err)
		}
		return gd, func() { f.Close() }, nil
	}
	bd, err := blkdev.NewFromPath(path)
	if err != nil {
		return nil, nil, fmt.Errorf("open %s: %w", path, err)
	}
	gd, err := gpt.DeviceFromBlockDevice(bd)
	if err != nil {
		bd.Close() //nolint:errcheck
		return nil, nil, fmt.Errorf("open %s: %w", path, err)
	}
	return gd, func() { bd.Close() }, nil //nolint:errcheck
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
