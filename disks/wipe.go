package disks

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// edgeWipe is how much of each end of the disk a wipe zeroes, the same
// as Talos's fast wipe (go-blockdevice block.FastWipeRange): MBR, both
// GPT headers and arrays, every filesystem superblock blkid reads at the
// start, LVM's label and metadata area (pe_start is 1 MiB), md RAID
// superblocks 0.90/1.0 (end) and 1.1/1.2 (start), DDF anchors (end).
const edgeWipe = 1 << 20

// Range is a byte range a wipe zeroes, and why.
type Range struct {
	Offset int64
	Length int64
	Why    string
}

// End is the first byte after the range.
func (r Range) End() int64 { return r.Offset + r.Length }

func (r Range) String() string {
	return fmt.Sprintf("%d+%d (%s)", r.Offset, r.Length, r.Why)
}

// WipePlan returns the byte ranges a safe Ceph wipe of a disk of the
// given size zeroes, sorted, merged where they overlap or touch, within
// the disk:
//   - the first and last MiB (partition tables, superblocks, LVM and md
//     metadata);
//   - a 4 KiB bluestore label block at each of Ceph's label positions
//     (0, 1, 10, 100, 1000 GiB) below the size;
//   - the same positions 1 MiB further on, where a ceph-volume "lvm" OSD's
//     logical volume starts (LVM's default pe_start).
func WipePlan(size int64) []Range {
	if size <= 0 {
		return nil
	}
	var rs []Range
	add := func(off, n int64, why string) {
		if off >= size || n <= 0 {
			return
		}
		rs = append(rs, Range{Offset: off, Length: min(n, size-off), Why: why})
	}
	add(0, edgeWipe, "first MiB: partition table, superblocks, LVM label")
	add(max(0, size-edgeWipe), edgeWipe, "last MiB: backup GPT, md/RAID metadata")
	for _, p := range labelPositions {
		add(p, LabelBlockSize, "bluestore label at "+FormatOffset(p))
	}
	for _, p := range labelPositions[1:] {
		add(lvmDataOffset+p, LabelBlockSize, "bluestore label at "+FormatOffset(p)+" of an LVM volume")
	}
	add(lvmDataOffset, LabelBlockSize, "bluestore label at the start of an LVM volume")
	return mergeRanges(rs)
}

// mergeRanges sorts ranges and joins those that overlap or touch; the
// reasons of joined ranges are kept, in order, without repeats.
func mergeRanges(rs []Range) []Range {
	slices.SortStableFunc(rs, func(a, b Range) int {
		switch {
		case a.Offset < b.Offset:
			return -1
		case a.Offset > b.Offset:
			return 1
		}
		return 0
	})
	var out []Range
	for _, r := range rs {
		if n := len(out); n > 0 && r.Offset <= out[n-1].End() {
			last := &out[n-1]
			if r.End() > last.End() {
				last.Length = r.End() - last.Offset
			}
			if !slices.Contains(strings.Split(last.Why, "; "), r.Why) {
				last.Why += "; " + r.Why
			}
			continue
		}
		out = append(out, r)
	}
	return out
}

// WipeResult says what Wipe zeroed.
type WipeResult struct {
	Ranges []Range
	Bytes  int64 // total bytes zeroed
}

// Wipe zeroes WipePlan(size) through w. It does not sync: the caller
// fsyncs (and, on a block device, re-reads the partition table).
func Wipe(w io.WriterAt, size int64) (WipeResult, error) {
	var res WipeResult
	zero := make([]byte, 1<<20)
	for _, r := range WipePlan(size) {
		for off := r.Offset; off < r.End(); {
			n := min(int64(len(zero)), r.End()-off)
			if _, err := w.WriteAt(zero[:n], off); err != nil {
				return res, fmt.Errorf("zero %d bytes at offset %d (%s): %w", n, off, r.Why, err)
			}
			off += n
			res.Bytes += n
		}
		res.Ranges = append(res.Ranges, r)
	}
	return res, nil
}
