// Package marker writes and detects the "installed" marker Talos goes by: a
// GPT partition named META of exactly 1 MiB. The stand-in writes a GPT
// holding only that partition (zeroed) on the chosen install disk.
package marker

import (
	"fmt"
	"io"

	"github.com/google/uuid"
	"github.com/siderolabs/go-blockdevice/v2/partitioning/gpt"
)

// Name and Size of Talos's META partition.
const (
	Name = "META"
	Size = 1 << 20
	// MinDiskSize is the smallest disk Write accepts: 1 MiB of alignment
	// and GPT, META, and the backup GPT.
	MinDiskSize = 3 << 20
)

// TypeGUID is the partition type Talos gives META (Linux filesystem data,
// internal/pkg/partition in Talos).
var TypeGUID = uuid.MustParse("0FC63DAF-8483-4772-8E79-3D69D8477DE4")

// Has reports whether dev has a GPT with a partition named META of exactly
// Size bytes. A device without a GPT has no marker (not an error).
func Has(dev gpt.Device) (bool, error) {
	sector := uint64(dev.GetSectorSize())
	// go-blockdevice has no sentinel for "no GPT": look for the signature
	// in the primary and backup headers first.
	if dev.GetSize() < 3*sector {
		return false, nil
	}
	found := false
	for _, lba := range []uint64{1, dev.GetSize()/sector - 1} {
		sig := make([]byte, 8)
		if _, err := dev.ReadAt(sig, int64(lba*sector)); err != nil {
			return false, fmt.Errorf("read GPT header at LBA %d: %w", lba, err)
		}
		if string(sig) == "EFI PART" {
			found = true
		}
	}
	if !found {
		return false, nil
	}
	t, err := gpt.Read(dev)
	if err != nil {
		return false, fmt.Errorf("read GPT: %w", err)
	}
	for _, p := range t.Partitions() {
		if p == nil || p.Name != Name {
			continue
		}
		if (p.LastLBA-p.FirstLBA+1)*sector == Size {
			return true, nil
		}
	}
	return false, nil
}

// Write replaces dev's partition table with a new GPT holding one zeroed
// META partition of Size bytes. The caller must have chosen dev with care:
// everything else on it is no longer reachable.
func Write(dev gpt.Device, opts ...gpt.Option) error {
	// go-blockdevice v2.0.25 allocates past the end of a device that is too
	// small for its 1 MiB alignment; check first.
	if size := dev.GetSize(); size < MinDiskSize {
		return fmt.Errorf("disk of %d bytes is too small for a GPT with %s (need %d)", size, Name, MinDiskSize)
	}
	t, err := gpt.New(dev, opts...)
	if err != nil {
		return fmt.Errorf("new GPT: %w", err)
	}
	idx, p, err := t.AllocatePartition(Size, Name, TypeGUID)
	if err != nil {
		return fmt.Errorf("allocate %s partition: %w", Name, err)
	}
	if end := (p.LastLBA + 1) * uint64(dev.GetSectorSize()); end > dev.GetSize() {
		return fmt.Errorf("allocate %s partition: ends at byte %d, past the disk's %d", Name, end, dev.GetSize())
	}
	if err := t.Write(); err != nil {
		return fmt.Errorf("write GPT: %w", err)
	}
	w, size, err := t.PartitionWriter(idx - 1)
	if err != nil {
		return fmt.Errorf("open %s partition: %w", Name, err)
	}
	if size != Size {
		return fmt.Errorf("%s partition is %d bytes, want %d", Name, size, Size)
	}
	if _, err := io.Copy(w, io.LimitReader(zeroReader{}, Size)); err != nil {
		return fmt.Errorf("zero %s partition: %w", Name, err)
	}
	if err := dev.Sync(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	return nil
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}
