package volume

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/disk"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

func TestFindWholeDiskFAT(t *testing.T) {
	mkfs, err := exec.LookPath("mkfs.vfat")
	if err != nil {
		t.Fatal("mkfs.vfat not found: apt-get install dosfstools")
	}
	dir := t.TempDir()
	other := filepath.Join(dir, "other.img")
	img := filepath.Join(dir, "fat.img")
	for _, p := range []string{other, img} {
		if err := os.WriteFile(p, make([]byte, 4<<20), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for p, label := range map[string]string{other: "OTHER", img: "metal-iso"} {
		if out, err := exec.Command(mkfs, "-n", label, p).CombinedOutput(); err != nil {
			t.Fatalf("mkfs.vfat: %v\n%s", err, out)
		}
	}
	f, err := Find([]string{filepath.Join(dir, "missing"), other, img}, "metal-iso")
	if err != nil {
		t.Fatal(err)
	}
	if f.Disk != img || f.Partition != 0 || f.FSType != "vfat" || f.DevPath() != img {
		t.Fatalf("found %+v", f)
	}
	if _, err := Find([]string{other}, "metal-iso"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("other only: %v", err)
	}
}

func TestFindGPTPartitionName(t *testing.T) {
	p := filepath.Join(t.TempDir(), "usb.img")
	d, err := diskfs.Create(p, 64<<20, diskfs.SectorSizeDefault)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	table := &gpt.Table{ProtectiveMBR: true, Partitions: []*gpt.Partition{
		{Index: 1, Start: 2048, End: 2048 + 16<<11 - 1, Type: gpt.EFISystemPartition, Name: "EFI"},
		{Index: 2, Start: 2048 + 16<<11, End: 2048 + 32<<11 - 1, Type: gpt.LinuxFilesystem, Name: "metal-iso"},
	}}
	if err := d.Partition(table); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateFilesystem(disk.FilesystemSpec{Partition: 2, FSType: filesystem.TypeFat32, VolumeLabel: "cfg"}); err != nil {
		t.Fatal(err)
	}
	f, err := Find([]string{p}, "metal-iso")
	if err != nil {
		t.Fatal(err)
	}
	if f.Partition != 2 || f.FSType != "vfat" {
		t.Fatalf("found %+v", f)
	}
}

func TestDevPath(t *testing.T) {
	for f, want := range map[Found]string{
		{Disk: "/dev/sda", Partition: 2}:     "/dev/sda2",
		{Disk: "/dev/nvme0n1", Partition: 1}: "/dev/nvme0n1p1",
		{Disk: "/dev/sr0"}:                   "/dev/sr0",
	} {
		if got := f.DevPath(); got != want {
			t.Errorf("%+v: %s, want %s", f, got, want)
		}
	}
}
