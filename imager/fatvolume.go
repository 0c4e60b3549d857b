package imager

import (
	"context"
	"fmt"
	"os"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem"
)

// FATVolumeFile is one file of a FAT volume written by WriteFATVolume:
// copied from Src on disk, or Data. Path is absolute and slash-separated.
type FATVolumeFile struct {
	Path string
	Src  string
	Data []byte
}

func toFATFiles(files []FATVolumeFile) []fatFile {
	out := make([]fatFile, len(files))
	for i, f := range files {
		out[i] = fatFile{Path: f.Path, Src: f.Src, Data: f.Data}
	}
	return out
}

// FATVolumeSize is the size of the FAT16 volume FATLayout chooses for
// files (the same rule as the images' ESPs).
func FATVolumeSize(files []FATVolumeFile) (int64, error) {
	content, err := fatContentSize(toFATFiles(files))
	if err != nil {
		return 0, err
	}
	_, size, err := FATLayout(content)
	return size, err
}

// WriteFATVolume makes a FAT16 filesystem labelled label at [start,
// start+size) of f (a disk image or a block device) and streams files into
// it, exactly as the ESPs of rackboot's images are made (and with the same
// go-diskfs FAT16 fix-up).
func WriteFATVolume(ctx context.Context, f *os.File, start, size int64, label string, files []FATVolumeFile) error {
	fsys, err := createFAT(file.New(f, false), filesystem.TypeFat16, start, size, label)
	if err != nil {
		return fmt.Errorf("create FAT volume %s (%d MiB): %w", label, size/miB, err)
	}
	if err := writeFAT(ctx, fsys, toFATFiles(files), quietProgress{}); err != nil {
		return fmt.Errorf("fill FAT volume %s: %w", label, err)
	}
	if err := freeFAT16Cluster2(f, start); err != nil {
		return fmt.Errorf("FAT volume %s: %w", label, err)
	}
	return nil
}
