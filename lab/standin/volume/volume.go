// Package volume finds the volume Talos reads talos.config=metal-iso from:
// a filesystem whose label, or a GPT partition whose name, is "metal-iso".
// Probing uses go-blockdevice's blkid, the prober Talos itself uses.
package volume

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"unicode"

	"github.com/siderolabs/go-blockdevice/v2/blkid"
	"golang.org/x/sys/unix"
)

// ErrNotFound is returned when no volume carries the label.
var ErrNotFound = errors.New("no volume with that label")

// Found is a labelled volume: a whole disk (Partition 0) or a partition.
type Found struct {
	Disk      string // path of the disk (or image file) probed
	Partition uint   // 1-based partition index, 0 for the whole disk
	FSType    string // blkid name: "iso9660", "vfat", ...
}

// DevPath is the kernel device of the volume: the disk itself, or its
// partition (sda → sda2, nvme0n1 → nvme0n1p2).
func (f Found) DevPath() string {
	if f.Partition == 0 {
		return f.Disk
	}
	sep := ""
	if r := []rune(f.Disk); len(r) > 0 && unicode.IsDigit(r[len(r)-1]) {
		sep = "p"
	}
	return f.Disk + sep + strconv.FormatUint(uint64(f.Partition), 10)
}

// Find probes paths in order and returns the first volume whose filesystem
// label or GPT partition name equals label.
func Find(paths []string, label string) (Found, error) {
	for _, p := range paths {
		info, err := blkid.ProbePath(p, blkid.WithSkipLocking(true))
		if err != nil {
			continue // unreadable (no media...): Talos skips it too
		}
		if info.Label != nil && *info.Label == label {
			return Found{Disk: p, FSType: info.Name}, nil
		}
		for _, part := range info.Parts {
			if (part.Label != nil && *part.Label == label) || (part.PartitionLabel != nil && *part.PartitionLabel == label) {
				return Found{Disk: p, Partition: part.PartitionIndex, FSType: part.Name}, nil
			}
		}
	}
	return Found{}, fmt.Errorf("label %q: %w", label, ErrNotFound)
}

// FindLabel probes every disk listed in sysBlock (as devDir/<name>).
func FindLabel(sysBlock, devDir, label string) (Found, error) {
	entries, err := os.ReadDir(sysBlock)
	if err != nil {
		return Found{}, fmt.Errorf("list disks: %w", err)
	}
	var paths []string
	for _, e := range entries {
		paths = append(paths, filepath.Join(devDir, e.Name()))
	}
	return Find(paths, label)
}

// ReadFile mounts the volume read-only on mountpoint, reads name from its
// root and unmounts it.
func ReadFile(f Found, mountpoint, name string) ([]byte, error) {
	if err := os.MkdirAll(mountpoint, 0o755); err != nil {
		return nil, err
	}
	if err := unix.Mount(f.DevPath(), mountpoint, f.FSType, unix.MS_RDONLY, ""); err != nil {
		return nil, fmt.Errorf("mount %s (%s) on %s: %w", f.DevPath(), f.FSType, mountpoint, err)
	}
	defer unix.Unmount(mountpoint, 0) //nolint:errcheck
	b, err := os.ReadFile(filepath.Join(mountpoint, name))
	if err != nil {
		return nil, fmt.Errorf("read %s from %s: %w", name, f.DevPath(), err)
	}
	return b, nil
}
