package marker

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/diskfs/go-diskfs"
	dpart "github.com/diskfs/go-diskfs/partition/gpt"
	"github.com/siderolabs/go-blockdevice/v2/partitioning/gpt"
)

func image(t *testing.T, size int64, fill byte) *os.File {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(p, bytes.Repeat([]byte{fill}, int(size)), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func TestWriteAndHas(t *testing.T) {
	for _, fill := range []byte{0, 0xAA} {
		testWriteAndHas(t, fill)
	}
}

func testWriteAndHas(t *testing.T, fill byte) {
	f := image(t, 8<<20, fill)
	dev, err := gpt.DeviceFromFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := Has(dev); err != nil || ok {
		t.Fatalf("blank disk: Has = %v, %v", ok, err)
	}
	if err := Write(dev); err != nil {
		t.Fatal(err)
	}
	if ok, err := Has(dev); err != nil || !ok {
		t.Fatalf("after Write: Has = %v, %v", ok, err)
	}

	// Independent check with go-diskfs's GPT reader.
	d, err := diskfs.Open(f.Name(), diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pt, err := d.GetPartitionTable()
	if err != nil {
		t.Fatal(err)
	}
	tbl, ok := pt.(*dpart.Table)
	if !ok {
		t.Fatalf("partition table is %T, want GPT", pt)
	}
	var found []string
	for _, p := range tbl.Partitions {
		if p.Type == dpart.Unused {
			continue
		}
		found = append(found, p.Name)
		if p.Name != Name || p.Size != Size {
			t.Errorf("partition %q size %d", p.Name, p.Size)
		}
		data := make([]byte, Size)
		if _, err := f.ReadAt(data, int64(p.Start)*512); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(data, make([]byte, Size)) {
			t.Error("META is not zeroed")
		}
	}
	if len(found) != 1 {
		t.Fatalf("partitions %v, want only META", found)
	}
}

func TestHasWrongSize(t *testing.T) {
	f := image(t, 8<<20, 0)
	dev, err := gpt.DeviceFromFile(f)
	if err != nil {
		t.Fatal(err)
	}
	tbl, err := gpt.New(dev)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := tbl.AllocatePartition(2<<20, Name, TypeGUID); err != nil {
		t.Fatal(err)
	}
	if _, _, err := tbl.AllocatePartition(Size, "OTHER", TypeGUID); err != nil {
		t.Fatal(err)
	}
	if err := tbl.Write(); err != nil {
		t.Fatal(err)
	}
	if ok, err := Has(dev); err != nil || ok {
		t.Fatalf("2 MiB META / 1 MiB OTHER: Has = %v, %v; want false", ok, err)
	}
}

func TestWriteTooSmall(t *testing.T) {
	f := image(t, 64<<10, 0)
	dev, err := gpt.DeviceFromFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(dev); err == nil {
		t.Fatal("64 KiB disk: no error")
	}
}
