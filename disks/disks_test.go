package disks

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
)

const (
	kib = int64(1) << 10
	mib = int64(1) << 20
	gib = int64(1) << 30
)

func TestWipePlan(t *testing.T) {
	type r = [2]int64 // offset, length
	tests := []struct {
		name string
		size int64
		want []r
	}{
		{"empty", 0, nil},
		{"tiny disk: all of it", 100 * kib, []r{{0, 100 * kib}}},
		{"2 MiB: both ends and the LVM block touch", 2 * mib, []r{{0, 2 * mib}}},
		{"1 GiB exactly: no copy fits", gib, []r{{0, mib + 4*kib}, {gib - mib, mib}}},
		{"1 GiB + 4 KiB: the 1 GiB copy is in the last MiB", gib + 4*kib, []r{{0, mib + 4*kib}, {gib + 4*kib - mib, mib}}},
		{"12 GiB: copies at 1 and 10 GiB, and 1 MiB further", 12 * gib, []r{
			{0, mib + 4*kib}, {gib, 4 * kib}, {gib + mib, 4 * kib}, {10 * gib, 4 * kib}, {10*gib + mib, 4 * kib}, {12*gib - mib, mib}}},
		{"8 TB (Lailah's disks): all five positions", 8e12, []r{
			{0, mib + 4*kib}, {gib, 4 * kib}, {gib + mib, 4 * kib}, {10 * gib, 4 * kib}, {10*gib + mib, 4 * kib},
			{100 * gib, 4 * kib}, {100*gib + mib, 4 * kib}, {1000 * gib, 4 * kib}, {1000*gib + mib, 4 * kib}, {8e12 - mib, mib}}},
		{"odd size: the last range ends at the disk's end", 10*gib + 2*kib, []r{
			{0, mib + 4*kib}, {gib, 4 * kib}, {gib + mib, 4 * kib}, {10*gib + 2*kib - mib, mib}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []r
			for _, x := range WipePlan(tt.size) {
				got = append(got, r{x.Offset, x.Length})
				if x.Why == "" {
					t.Errorf("range %v has no reason", x)
				}
				if x.End() > tt.size {
					t.Errorf("range %v runs past the disk's %d bytes", x, tt.size)
				}
			}
			if !slices.Equal(got, tt.want) {
				t.Errorf("WipePlan(%d) =\n %v\nwant\n %v", tt.size, got, tt.want)
			}
		})
	}
}

// Every label copy Ceph writes lies inside the plan, at every size around
// the positions.
func TestWipePlanCoversLabelCopies(t *testing.T) {
	for _, p := range labelPositions {
		for _, size := range []int64{p - 1, p, p + 1, p + LabelBlockSize - 1, p + LabelBlockSize, p + mib, p + 2*mib, p + 5*gib} {
			if size <= 0 {
				continue
			}
			plan := WipePlan(size)
			for _, c := range LabelCopies(size) {
				if !slices.ContainsFunc(plan, func(r Range) bool { return r.Offset <= c && c+LabelBlockSize <= r.End() }) {
					t.Errorf("size %d: label copy at %d not covered by %v", size, c, plan)
				}
			}
		}
	}
}

func TestLabelCopies(t *testing.T) {
	for _, tt := range []struct {
		size int64
		want []int64
	}{
		{4095, nil},
		{4096, []int64{0}},
		{gib + 4095, []int64{0}},
		{gib + 4096, []int64{0, gib}},
		{12 * gib, []int64{0, gib, 10 * gib}},
		{8e12, []int64{0, gib, 10 * gib, 100 * gib, 1000 * gib}},
	} {
		if got := LabelCopies(tt.size); !slices.Equal(got, tt.want) {
			t.Errorf("LabelCopies(%d) = %v, want %v", tt.size, got, tt.want)
		}
	}
}

func testLabel() Label {
	return Label{
		OSDUUID:     uuid.MustParse("c6416047-1e71-412a-9b61-ca398b815e50"),
		Size:        8e12,
		Birth:       time.Unix(1700000000, 123).UTC(),
		Description: "main",
		Meta:        map[string]string{"multi": "yes", "epoch": "2", "whoami": "0"},
	}
}

func TestLabelRoundTrip(t *testing.T) {
	want := testLabel()
	b, err := EncodeLabel(want)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != LabelBlockSize || !bytes.HasPrefix(b, []byte("bluestore block device\nc6416047-1e71-412a-9b61-ca398b815e50\n\x02\x01")) {
		t.Fatalf("label block starts %q", b[:70])
	}
	got, err := ParseLabel(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.OSDUUID != want.OSDUUID || got.Size != want.Size || !got.Birth.Equal(want.Birth) || got.Description != want.Description || len(got.Meta) != 3 || got.Meta["multi"] != "yes" {
		t.Errorf("round trip: got %+v, want %+v", got, want)
	}
}

func TestParseLabelErrors(t *testing.T) {
	good, err := EncodeLabel(testLabel())
	if err != nil {
		t.Fatal(err)
	}
	flip := func(i int) []byte { b := bytes.Clone(good); b[i] ^= 0x40; return b }
	if _, err := ParseLabel(make([]byte, LabelBlockSize)); !errors.Is(err, ErrNoLabel) {
		t.Errorf("zeros: %v, want ErrNoLabel", err)
	}
	// A flipped byte in the size field: the crc catches it, the uuid is still read.
	l, err := ParseLabel(flip(60 + 6 + 16))
	if !errors.Is(err, ErrLabelChecksum) || l.OSDUUID != testLabel().OSDUUID {
		t.Errorf("flipped size byte: %v (uuid %s), want ErrLabelChecksum with the uuid", err, l.OSDUUID)
	}
	if _, err := ParseLabel(good[:100]); err == nil || errors.Is(err, ErrNoLabel) {
		t.Errorf("truncated: %v, want a truncation error", err)
	}
	// Ceph's decoder refuses a compat version newer than it knows.
	if _, err := ParseLabel(flip(61)); err == nil {
		t.Error("compat 0x41 accepted")
	}
	// An encoded length past the block.
	b := bytes.Clone(good)
	binary.LittleEndian.PutUint32(b[62:], 1<<20)
	if _, err := ParseLabel(b); err == nil {
		t.Error("length past the block accepted")
	}
	// Too much meta for one block.
	big := testLabel()
	big.Meta["osd_key"] = strings.Repeat("k", LabelBlockSize)
	if _, err := EncodeLabel(big); err == nil {
		t.Error("label larger than a block encoded")
	}
}

// Ceph's crc32c: CRC-32C without final inversion, e.g. for seed -1 over
// "123456789" (the standard check value 0xe3069283 is with inversion).
func TestCephCRC32C(t *testing.T) {
	if got := cephCRC32C(0xffffffff, []byte("123456789")); got != ^uint32(0xe3069283) {
		t.Errorf("cephCRC32C = %08x, want %08x", got, ^uint32(0xe3069283))
	}
}

// gptDisk builds an in-memory disk with sgdisk's help-free layout: a
// protective MBR, primary and backup GPT with the given partitions.
func gptDisk(t *testing.T, size int64, parts [][2]int64) []byte {
	t.Helper()
	ss := int64(512)
	d := make([]byte, size)
	last := size/ss - 1
	// protective MBR
	d[446+4] = 0xee
	binary.LittleEndian.PutUint32(d[446+8:], 1)
	binary.LittleEndian.PutUint32(d[446+12:], uint32(min(last, 0xffffffff)))
	d[510], d[511] = 0x55, 0xaa
	entries := make([]byte, 128*128)
	linux := []byte{0xaf, 0x3d, 0xc6, 0x0f, 0x83, 0x84, 0x72, 0x47, 0x8e, 0x79, 0x3d, 0x69, 0xd8, 0x47, 0x7d, 0xe4}
	for i, p := range parts {
		e := entries[i*128:]
		copy(e, linux)
		e[16] = byte(i + 1)
		binary.LittleEndian.PutUint64(e[32:], uint64(p[0]/ss))
		binary.LittleEndian.PutUint64(e[40:], uint64((p[0]+p[1])/ss-1))
		for j, c := range "part" {
			binary.LittleEndian.PutUint16(e[56+2*j:], uint16(c))
		}
	}
	ecrc := crc32.ChecksumIEEE(entries)
	header := func(my, alt, entriesLBA int64) []byte {
		h := make([]byte, 92)
		copy(h, gptSignature)
		binary.LittleEndian.PutUint32(h[8:], 0x10000)
		binary.LittleEndian.PutUint32(h[12:], 92)
		binary.LittleEndian.PutUint64(h[24:], uint64(my))
		binary.LittleEndian.PutUint64(h[32:], uint64(alt))
		binary.LittleEndian.PutUint64(h[40:], 34)
		binary.LittleEndian.PutUint64(h[48:], uint64(last-33))
		copy(h[56:72], []byte{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
		binary.LittleEndian.PutUint64(h[72:], uint64(entriesLBA))
		binary.LittleEndian.PutUint32(h[80:], 128)
		binary.LittleEndian.PutUint32(h[84:], 128)
		binary.LittleEndian.PutUint32(h[88:], ecrc)
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h))
		return h
	}
	copy(d[ss:], header(1, last, 2))
	copy(d[2*ss:], entries)
	copy(d[last*ss:], header(last, 1, last-32))
	copy(d[(last-32)*ss:], entries)
	return d
}

func TestInspectGPT(t *testing.T) {
	d := gptDisk(t, 16*mib, [][2]int64{{mib, 4 * mib}, {5 * mib, 8 * mib}})
	rep, err := Inspect(bytes.NewReader(d), int64(len(d)))
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, s := range rep.Signatures {
		types = append(types, s.Type)
		if s.Problem != "" {
			t.Errorf("%s at %d: %s", s.Type, s.Offset, s.Problem)
		}
	}
	if !slices.Equal(types, []string{"PMBR", "gpt", "gpt"}) {
		t.Errorf("signatures %v, want PMBR gpt gpt", types)
	}
	if len(rep.Partitions) != 2 || rep.Partitions[1].Offset != 5*mib || rep.Partitions[1].Length != 8*mib || rep.Partitions[0].Name != "part" ||
		rep.Partitions[0].Type != "0fc63daf-8483-4772-8e79-3d69d8477de4" {
		t.Errorf("partitions %+v", rep.Partitions)
	}
	if got, want := rep.Summary(), "GPT with 2 partitions"; got != want {
		t.Errorf("Summary = %q, want %q", got, want)
	}

	// Damage the primary header: reported, and partitions come from the backup.
	d[512+40] ^= 1
	rep, err = Inspect(bytes.NewReader(d), int64(len(d)))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Partitions) != 2 || !strings.Contains(rep.Summary(), "primary header damaged: GPT header checksum mismatch") {
		t.Errorf("damaged primary: %d partitions, %q", len(rep.Partitions), rep.Summary())
	}

	// After Wipe, nothing.
	w := &memDisk{b: d}
	if _, err := Wipe(w, int64(len(d))); err != nil {
		t.Fatal(err)
	}
	rep, err = Inspect(bytes.NewReader(d), int64(len(d)))
	if err != nil || !rep.Clean() {
		t.Errorf("after wipe: %v, %s", err, rep.Summary())
	}
}

// memDisk is an io.WriterAt over a byte slice that records writes.
type memDisk struct {
	b      []byte
	writes [][2]int64
}

func (m *memDisk) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, errors.New("write past the end of the disk")
	}
	m.writes = append(m.writes, [2]int64{off, int64(len(p))})
	return copy(m.b[off:], p), nil
}

type failingDisk struct{}

func (failingDisk) WriteAt([]byte, int64) (int, error) { return 0, errors.New("I/O error") }

func TestWipeWritesOnlyThePlan(t *testing.T) {
	size := 3 * mib
	d := &memDisk{b: bytes.Repeat([]byte{0xa5}, int(size))}
	res, err := Wipe(d, size)
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != 2*mib+4*kib || len(res.Ranges) != 2 {
		t.Errorf("3 MiB disk: %d bytes in %v, want the first MiB + 4 KiB and the last MiB", res.Bytes, res.Ranges)
	}
	for i, c := range d.b {
		if zeroed := int64(i) < mib+4*kib || int64(i) >= 2*mib; zeroed != (c == 0) {
			t.Fatalf("byte %d is %#x after the wipe", i, c)
		}
	}
	size = 2*gib + 16*mib
	var total int64
	for _, r := range WipePlan(size) {
		total += r.Length
	}
	sd := &sparseDisk{}
	res, err = Wipe(sd, size)
	if err != nil {
		t.Fatal(err)
	}
	if res.Bytes != total || sd.bytes != total {
		t.Errorf("wrote %d bytes (result says %d), plan has %d", sd.bytes, res.Bytes, total)
	}
	if _, err := Wipe(failingDisk{}, size); err == nil || !strings.Contains(err.Error(), "first MiB") {
		t.Errorf("failing disk: %v, want an error naming the range", err)
	}
}

// sparseDisk checks every write lies in the plan, without holding 2 GiB.
type sparseDisk struct{ bytes int64 }

func (s *sparseDisk) WriteAt(p []byte, off int64) (int, error) {
	for _, b := range p {
		if b != 0 {
			return 0, errors.New("non-zero write")
		}
	}
	s.bytes += int64(len(p))
	return len(p), nil
}

func TestInspectFilesystems(t *testing.T) {
	mk := func(fill func([]byte)) []byte { b := make([]byte, 4*mib); fill(b); return b }
	xfs := mk(func(b []byte) {
		copy(b, "XFSB")
		binary.BigEndian.PutUint32(b[4:], 4096)
		copy(b[32:], []byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})
		copy(b[108:], "scratch")
	})
	btrfs := mk(func(b []byte) {
		sb := b[btrfsSuper:]
		copy(sb[0x20:], []byte{0xb7, 0x2f, 0, 0, 0, 0, 0x40, 0, 0x80, 0, 0, 0, 0, 0, 0, 1})
		copy(sb[0x40:], "_BHRfS_M")
		copy(sb[0x12b:], "pool")
	})
	ext4 := mk(func(b []byte) {
		sb := b[1024:]
		binary.LittleEndian.PutUint16(sb[56:], 0xef53)
		binary.LittleEndian.PutUint32(sb[96:], 0x40)
		copy(sb[120:], "root")
	})
	lvm := mk(func(b []byte) {
		copy(b[512:], "LABELONE")
		copy(b[512+24:], "LVM2 001")
		copy(b[512+32:], "AbCdEfGhIjKlMnOpQrStUvWxYz012345")
	})
	for _, tt := range []struct {
		name, typ, label string
		disk             []byte
	}{
		{"xfs", "xfs", "scratch", xfs},
		{"btrfs", "btrfs", "pool", btrfs},
		{"ext4", "ext4", "root", ext4},
		{"lvm", "LVM2_member", "", lvm},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rep, err := Inspect(bytes.NewReader(tt.disk), int64(len(tt.disk)))
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Signatures) != 1 || rep.Signatures[0].Type != tt.typ || rep.Signatures[0].Label != tt.label {
				t.Fatalf("signatures %+v, want one %s labelled %q", rep.Signatures, tt.typ, tt.label)
			}
			if got, want := rep.Summary(), tt.typ+" on the whole disk"; got != want {
				t.Errorf("Summary = %q, want %q", got, want)
			}
			if _, err := Wipe(&memDisk{b: tt.disk}, int64(len(tt.disk))); err != nil {
				t.Fatal(err)
			}
			if rep, _ := Inspect(bytes.NewReader(tt.disk), int64(len(tt.disk))); !rep.Clean() {
				t.Errorf("after wipe: %s", rep.Summary())
			}
		})
	}
}

// A real FAT filesystem made by mkfs.vfat, with a real MBR from sfdisk
// around a second one: Inspect tells the FAT boot sector from an MBR.
func TestInspectVFATAndMBR(t *testing.T) {
	mkfs := tool(t, "mkfs.vfat", "dosfstools")
	sfdisk := tool(t, "sfdisk", "fdisk")
	blkid := tool(t, "blkid", "util-linux")
	path := filepath.Join(t.TempDir(), "fat.img")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 32*mib); err != nil {
		t.Fatal(err)
	}
	run(t, mkfs, "-n", "EFI", "-i", "1234ABCD", path)
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Inspect(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	want := blkidProbe(t, blkid, path, 0)
	if len(rep.Signatures) != 1 || rep.Signatures[0].Type != want["TYPE"] || rep.Signatures[0].UUID != want["UUID"] || rep.Signatures[0].Label != want["LABEL"] {
		t.Errorf("Inspect: %+v; blkid: %v", rep.Signatures, want)
	}

	// An MBR-partitioned disk with the FAT in partition 1.
	disk := filepath.Join(t.TempDir(), "mbr.img")
	if err := os.WriteFile(disk, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(disk, 64*mib); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sfdisk, "--quiet", disk)
	cmd.Stdin = strings.NewReader("label: dos\nstart=2048, size=65536, type=c\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	d, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	copy(d[mib:], b)
	rep, err = Inspect(bytes.NewReader(d), int64(len(d)))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := rep.Summary(), "MBR partition table with 1 partition; vfat in partition 1"; got != want {
		t.Errorf("Summary = %q, want %q", got, want)
	}
}

func TestSummaryLabels(t *testing.T) {
	l, err := EncodeLabel(testLabel())
	if err != nil {
		t.Fatal(err)
	}
	size := 3*gib + 16*mib
	d := &holeDisk{size: size, at: map[int64][]byte{0: l, gib: l, 2 * gib: l}}
	damaged := bytes.Clone(l)
	damaged[100] ^= 1
	d.at[gib+mib] = damaged // a ceph-volume LVM OSD's copy, damaged
	rep, err := Inspect(d, size)
	if err != nil {
		t.Fatal(err)
	}
	want := "Ceph bluestore label of OSD c6416047-1e71-412a-9b61-ca398b815e50 at 0, 1 GiB; " +
		"Ceph bluestore label of OSD c6416047-1e71-412a-9b61-ca398b815e50 (damaged) at 1025 MiB"
	if got := rep.Summary(); got != want {
		t.Errorf("Summary =\n %q\nwant\n %q", got, want)
	}
	if c := (Report{}); !c.Clean() || !strings.HasPrefix(c.Summary(), "clean") {
		t.Errorf("empty report: %q", c.Summary())
	}
}

// holeDisk is a sparse io.ReaderAt: zeros except the given blocks.
type holeDisk struct {
	size int64
	at   map[int64][]byte
}

func (h *holeDisk) ReadAt(p []byte, off int64) (int, error) {
	clear(p)
	for o, b := range h.at {
		if o < off+int64(len(p)) && off < o+int64(len(b)) {
			s := max(o, off)
			e := min(o+int64(len(b)), off+int64(len(p)))
			copy(p[s-off:e-off], b[s-o:e-o])
		}
	}
	return len(p), nil
}

func TestFormatOffset(t *testing.T) {
	for off, want := range map[int64]string{0: "0", gib: "1 GiB", 1000 * gib: "1000 GiB", gib + mib: "1025 MiB", 4 * kib: "4 KiB", 1000: "1000 bytes"} {
		if got := FormatOffset(off); got != want {
			t.Errorf("FormatOffset(%d) = %q, want %q", off, got, want)
		}
	}
}
