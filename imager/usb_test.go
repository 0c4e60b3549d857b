package imager

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/partition/gpt"
)

// TestUSBReaders builds a USB image and reads it with sgdisk, fdisk,
// mtools, fsck.fat, blkid and go-diskfs.
func TestUSBReaders(t *testing.T) {
	needTool(t, "sgdisk", "gdisk")
	needTool(t, "fdisk", "fdisk")
	needTool(t, "blkid", "util-linux")
	t.Setenv(EnvSourceDateEpoch, strconv.Itoa(testEpoch))
	kernel, initrd := fakeBootFiles(t, 5<<20)
	spec := testSpec(t, kernel, initrd)
	out := filepath.Join(t.TempDir(), "cp1.img")
	epoch := time.Unix(testEpoch, 0)
	img, err := testBuilder(t, WithSourceDateEpoch(epoch)).USB(context.Background(), spec, out)
	if err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(out); st.Mode().Perm() != 0o600 || st.Size() != img.Size {
		t.Errorf("image mode %v size %d, want 0600 and %d", st.Mode().Perm(), st.Size(), img.Size)
	}

	sg := run(t, "sgdisk", "-p", out)
	diskGUID := DeriveGUID("cp1", epoch, "disk")
	for _, want := range []string{"Disk identifier (GUID): " + diskGUID, "EF00  EFI", "8300  metal-iso"} {
		if !strings.Contains(sg, want) {
			t.Errorf("sgdisk -p lacks %q:\n%s", want, sg)
		}
	}
	if v := run(t, "sgdisk", "-v", out); !strings.Contains(v, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", v)
	}
	info := run(t, "sgdisk", "-i", "2", out)
	if !strings.Contains(info, "Partition unique GUID: "+DeriveGUID("cp1", epoch, MetalISOLabel)) {
		t.Errorf("partition 2 GUID is not the derived one:\n%s", info)
	}
	fd := run(t, "fdisk", "-l", out)
	if !strings.Contains(fd, "Disklabel type: gpt") || !strings.Contains(fd, "EFI System") {
		t.Errorf("fdisk -l:\n%s", fd)
	}

	l := readLayout(t, out)
	checkESP(t, out, l.ESPStart, spec)
	// Each FAT volume passes fsck.fat -n on its own.
	for _, p := range []struct {
		name        string
		start, size int64
	}{{"esp", l.ESPStart, l.ESPSize}, {"metal-iso", l.MetalISOStart, l.MetalISOSize}} {
		part := extract(t, out, p.start, p.size)
		run(t, "fsck.fat", "-n", part)
		if p.name == "metal-iso" {
			probe := run(t, "blkid", "-p", part)
			if !strings.Contains(probe, `LABEL="metal-iso"`) || !strings.Contains(probe, `TYPE="vfat"`) {
				t.Errorf("blkid -p metal-iso volume: %s", probe)
			}
			got := filepath.Join(t.TempDir(), "config.yaml")
			cmdEnv(t, []string{"MTOOLS_SKIP_CHECK=1"}, "mcopy", "-i", part, "::/config.yaml", got)
			run(t, "cmp", got, tempData(t, spec.Config))
		}
	}

	// go-diskfs reads the GPT and the metal-iso filesystem back.
	d, err := diskfs.Open(out, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pt, err := d.GetPartitionTable()
	if err != nil {
		t.Fatal(err)
	}
	tbl, ok := pt.(*gpt.Table)
	if !ok || len(tbl.Partitions) != 2 || tbl.Partitions[1].Name != MetalISOLabel || tbl.Partitions[0].Type != gpt.EFISystemPartition {
		t.Fatalf("go-diskfs reads partition table %+v", pt)
	}
	fsys, err := d.GetFilesystem(2)
	if err != nil {
		t.Fatal(err)
	}
	if fsys.Type() != filesystem.TypeFat16 || strings.TrimSpace(fsys.Label()) != MetalISOLabel {
		t.Errorf("metal-iso filesystem: %v label %q", fsys.Type(), fsys.Label())
	}
	f, err := fsys.OpenFile("/config.yaml", os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(f)
	if string(b) != string(spec.Config) {
		t.Error("go-diskfs reads a different config.yaml")
	}
}

// TestUSBReproducible builds twice with the same SOURCE_DATE_EPOCH: the
// bytes must be identical; another machine name changes the GUIDs.
func TestUSBReproducible(t *testing.T) {
	t.Setenv(EnvSourceDateEpoch, strconv.Itoa(testEpoch))
	kernel, initrd := fakeBootFiles(t, 1<<20)
	spec := testSpec(t, kernel, initrd)
	b := testBuilder(t, WithSourceDateEpoch(time.Unix(testEpoch, 0)))
	dir := t.TempDir()
	var sums []string
	for i := range 2 {
		img, err := b.USB(context.Background(), spec, filepath.Join(dir, "cp1-"+strconv.Itoa(i)+".img"))
		if err != nil {
			t.Fatal(err)
		}
		sums = append(sums, img.SHA256)
	}
	if sums[0] != sums[1] {
		t.Fatalf("two builds differ: %s vs %s", sums[0], sums[1])
	}
	run(t, "cmp", filepath.Join(dir, "cp1-0.img"), filepath.Join(dir, "cp1-1.img"))
	if DeriveGUID("cp1", time.Unix(testEpoch, 0), "disk") == DeriveGUID("w1", time.Unix(testEpoch, 0), "disk") {
		t.Error("two machines get the same disk GUID")
	}
}

func TestFATLayout(t *testing.T) {
	for _, tc := range []struct {
		content int64
		typ     filesystem.Type
		size    int64
	}{
		{0, filesystem.TypeFat16, 16 * miB},
		{10 * miB, filesystem.TypeFat16, 16 * miB},
		{20 * miB, filesystem.TypeFat16, 28 * miB},
		{100 * miB, filesystem.TypeFat16, 112 * miB},
		{1900 * miB, filesystem.TypeFat16, 2000 * miB},
	} {
		typ, size, err := FATLayout(tc.content)
		if err != nil || typ != tc.typ || size != tc.size {
			t.Errorf("FATLayout(%d MiB) = %v, %d MiB, %v; want %v, %d MiB", tc.content/miB, typ, size/miB, err, tc.typ, tc.size/miB)
		}
	}
	for _, bad := range []int64{-1, 2000 * miB} {
		if _, _, err := FATLayout(bad); err == nil {
			t.Errorf("FATLayout(%d) succeeded", bad)
		}
	}
}

// TestFATLayoutsPassFsck creates empty volumes at the sizes FATLayout
// picks around go-diskfs's cluster-size steps and checks each with
// fsck.fat -n (after rackboot's cluster-2 fix).
func TestFATLayoutsPassFsck(t *testing.T) {
	needTool(t, "fsck.fat", "dosfstools")
	for _, content := range []int64{0, 20 * miB, 28 * miB, 60 * miB, 100 * miB, 124 * miB, 200 * miB, 250 * miB, 500 * miB, 1000 * miB, 1900 * miB} {
		typ, size, err := FATLayout(content)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(t.TempDir(), "fat.img")
		f, err := os.Create(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := f.Truncate(size); err != nil {
			t.Fatal(err)
		}
		fsys, err := createFAT(fileBackend(f), typ, 0, size, espLabel)
		if err != nil {
			t.Fatalf("%v of %d MiB: %v", typ, size/miB, err)
		}
		if err := writeFAT(context.Background(), fsys, []fatFile{{Path: "/loader/entries/x.conf", Data: []byte("x")}}, quietProgress{}); err != nil {
			t.Fatal(err)
		}
		if err := freeFAT16Cluster2(f, 0); err != nil {
			t.Fatal(err)
		}
		f.Close()
		if out, err := cmdOut("fsck.fat", "-n", p); err != nil {
			t.Errorf("%v of %d MiB fails fsck.fat -n: %v\n%s", typ, size/miB, err, out)
		}
		os.Remove(p)
	}
}

// readLayout reads the partitions' places with go-diskfs.
func readLayout(t *testing.T, img string) USBLayout {
	t.Helper()
	d, err := diskfs.Open(img, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	pt, err := d.GetPartitionTable()
	if err != nil {
		t.Fatal(err)
	}
	ps := pt.GetPartitions()
	if len(ps) != 2 {
		t.Fatalf("%d partitions", len(ps))
	}
	return USBLayout{DiskSize: d.Size, ESPStart: ps[0].GetStart(), ESPSize: ps[0].GetSize(), MetalISOStart: ps[1].GetStart(), MetalISOSize: ps[1].GetSize()}
}

// extract copies [start, start+size) of img into a new file.
func extract(t *testing.T, img string, start, size int64) string {
	t.Helper()
	in, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	p := filepath.Join(t.TempDir(), "part.img")
	out, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, io.NewSectionReader(in, start, size)); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

func tempData(t *testing.T, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "data")
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
