package imager

import (
	"context"
	"crypto/sha256"
	"fmt"
	"os"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

// USB image geometry: 512-byte sectors, partitions aligned to 1 MiB, and
// 1 MiB left at the end for the backup GPT.
const (
	usbSector     = 512
	usbAlign      = miB
	usbESPName    = "EFI"
	usbFirstStart = usbAlign
)

// USBLayout is where the partitions of a USB image lie, in bytes.
type USBLayout struct {
	DiskSize                    int64
	ESPStart, ESPSize           int64
	ESPType                     filesystem.Type
	MetalISOStart, MetalISOSize int64
}

// usbLayout places the ESP (sized for content) and the metal-iso volume.
func usbLayout(content int64) (USBLayout, error) {
	t, espSize, err := FATLayout(content)
	if err != nil {
		return USBLayout{}, err
	}
	l := USBLayout{ESPStart: usbFirstStart, ESPSize: espSize, ESPType: t}
	l.MetalISOStart = l.ESPStart + l.ESPSize
	l.MetalISOSize = metalISOSize
	l.DiskSize = l.MetalISOStart + l.MetalISOSize + usbAlign
	return l, nil
}

// DeriveGUID is a version-4-shaped GUID derived from the image's identity
// (machine name, epoch) and what it names, so that a reproducible build
// gets the same disk and partition GUIDs each time and different machines
// get different ones.
func DeriveGUID(name string, epoch time.Time, what string) string {
	h := sha256.Sum256(fmt.Appendf(nil, "rackboot usb\x00%s\x00%d\x00%s", name, epoch.Unix(), what))
	b := h[:16]
	b[6] = b[6]&0x0f | 0x40 // version 4
	b[8] = b[8]&0x3f | 0x80 // RFC 4122 variant
	return fmt.Sprintf("%X-%X-%X-%X-%X", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// USB writes img as a raw GPT disk image at out, for dd or `rackboot image
// write`: a protective MBR; partition 1, the EFI system partition (FAT16,
// or FAT32 when large) with systemd-boot as \EFI\BOOT\BOOTX64.EFI, its
// loader entry, the kernel and the initramfs; partition 2, named metal-iso,
// a FAT16 volume labelled metal-iso holding /config.yaml. UEFI only. Disk
// and partition GUIDs derive from the machine name and the epoch. The
// kernel gets InstallMediaCmdline(img.Cmdline), as from an ISO. out is
// written 0600 through a temporary file; it holds the cluster's secrets.
func (b *Builder) USB(ctx context.Context, img ImageSpec, out string) (*Image, error) {
	img.Cmdline = InstallMediaCmdline(img.Cmdline)
	if err := img.Validate(); err != nil {
		return nil, err
	}
	epoch, err := b.epoch()
	if err != nil {
		return nil, fmt.Errorf("build USB image for %s: %w", img.Name, err)
	}
	start := b.now()
	esp := espFiles(img, b.loaders)
	content, err := fatContentSize(esp)
	if err != nil {
		return nil, fmt.Errorf("build USB image for %s: %w", img.Name, err)
	}
	l, err := usbLayout(content)
	if err != nil {
		return nil, fmt.Errorf("build USB image for %s: %w", img.Name, err)
	}
	res, err := writeAtomically(out, func(f *os.File) error {
		return b.fillUSB(ctx, f, img, l, esp, epoch)
	})
	if err != nil {
		return nil, fmt.Errorf("build USB image for %s: %w", img.Name, err)
	}
	res.Epoch = epoch
	b.log.Info("built USB image", "machine", img.Name, "path", res.Path, "bytes", res.Size, "sha256", res.SHA256,
		"esp_mib", l.ESPSize/miB, "took", b.now().Sub(start).Round(time.Millisecond))
	return res, nil
}

func (b *Builder) fillUSB(ctx context.Context, f *os.File, img ImageSpec, l USBLayout, esp []fatFile, epoch time.Time) error {
	if err := f.Truncate(l.DiskSize); err != nil {
		return err
	}
	store := newBufferedStorage(file.New(f, false))
	d, err := diskfs.OpenBackend(store, diskfs.WithOpenMode(diskfs.ReadWrite), diskfs.WithSectorSize(usbSector))
	if err != nil {
		return fmt.Errorf("open disk image: %w", err)
	}
	table := &gpt.Table{
		LogicalSectorSize:  usbSector,
		PhysicalSectorSize: usbSector,
		ProtectiveMBR:      true,
		GUID:               DeriveGUID(img.Name, epoch, "disk"),
		Partitions: []*gpt.Partition{
			{
				Index: 1,
				Start: uint64(l.ESPStart / usbSector),
				End:   uint64((l.ESPStart+l.ESPSize)/usbSector - 1),
				Size:  uint64(l.ESPSize),
				Type:  gpt.EFISystemPartition,
				Name:  usbESPName,
				GUID:  DeriveGUID(img.Name, epoch, "esp"),
			},
			{
				Index: 2,
				Start: uint64(l.MetalISOStart / usbSector),
				End:   uint64((l.MetalISOStart+l.MetalISOSize)/usbSector - 1),
				Size:  uint64(l.MetalISOSize),
				Type:  gpt.LinuxFilesystem,
				Name:  MetalISOLabel,
				GUID:  DeriveGUID(img.Name, epoch, MetalISOLabel),
			},
		},
	}
	if err := d.Partition(table); err != nil {
		return fmt.Errorf("write GPT: %w", err)
	}
	espFS, err := createFAT(d.Backend, l.ESPType, l.ESPStart, l.ESPSize, espLabel)
	if err != nil {
		return fmt.Errorf("create ESP filesystem (%d MiB): %w", l.ESPSize/miB, err)
	}
	if err := writeFAT(ctx, espFS, esp, b.progress); err != nil {
		return fmt.Errorf("fill ESP: %w", err)
	}
	if err := store.Flush(); err != nil {
		return fmt.Errorf("fill ESP: %w", err)
	}
	if err := freeFAT16Cluster2(f, l.ESPStart); err != nil {
		return fmt.Errorf("ESP: %w", err)
	}
	cfgFS, err := createFAT(d.Backend, filesystem.TypeFat16, l.MetalISOStart, l.MetalISOSize, MetalISOLabel)
	if err != nil {
		return fmt.Errorf("create metal-iso filesystem: %w", err)
	}
	if err := writeFAT(ctx, cfgFS, []fatFile{{Path: "/" + ConfigFile, Data: img.Config}}, b.progress); err != nil {
		return fmt.Errorf("write %s: %w", ConfigFile, err)
	}
	if err := store.Flush(); err != nil {
		return fmt.Errorf("write %s: %w", ConfigFile, err)
	}
	if err := freeFAT16Cluster2(f, l.MetalISOStart); err != nil {
		return fmt.Errorf("metal-iso volume: %w", err)
	}
	return nil
}
