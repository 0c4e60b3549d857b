package disks

// Ceph's bluestore device label: the 4 KiB block BlueStore writes at the
// start of an OSD's block device and, since Ceph 19.2.1, also at 1, 10,
// 100 and 1000 GiB (see docs/DESIGN.md, "Wiping Ceph disks", for the Ceph
// source this follows).
//
// On-disk format (bluestore_bdev_label_t::encode, bluestore_types.cc, and
// BlueStore::_write_bdev_label):
//
//	"bluestore block device\n"        23 bytes, the magic
//	OSD uuid as text + "\n"           37 bytes (60 bytes so far; decode skips them)
//	u8 struct_v (2), u8 compat (1), u32 length of the rest   ENCODE_START(2, 1)
//	uuid (16 raw bytes)               osd_uuid
//	u64 size                          device size when the label was written
//	u32 sec, u32 nsec                 btime (utime_t)
//	u32 length + bytes                description ("main", "bluefs db"...)
//	u32 count + (u32 len + key, u32 len + value)...   meta (struct_v >= 2)
//	u32 crc32c                        over every byte above, seed -1, no final xor
//	zeros up to 4096
//
// All integers little-endian (Ceph's encoding).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"sort"
	"time"

	"github.com/google/uuid"
)

// LabelBlockSize is the size of one bluestore label copy
// (BDEV_LABEL_BLOCK_SIZE in Ceph's bluestore_common.h).
const LabelBlockSize = 4096

// labelMagic starts every bluestore label; blkid and wipefs know the
// device as "ceph_bluestore" by it, Rook by its first 22 bytes.
const labelMagic = "bluestore block device\n"

// labelPrefixLen is the text prefix (magic + uuid text + newline) that
// Ceph's decoder skips before the encoded struct.
const labelPrefixLen = 60

// labelPositions are Ceph's bdev_label_positions (BlueStore.cc): where a
// main device keeps a label copy when the device is large enough.
var labelPositions = [...]int64{0, 1 << 30, 10 << 30, 100 << 30, 1000 << 30}

// LabelCopies returns the offsets at which Ceph (>= 19.2.1) keeps a copy
// of the bluestore label on a main device of the given size: every
// position whose whole 4 KiB block fits on the device.
func LabelCopies(size int64) []int64 {
	var out []int64
	for _, p := range labelPositions {
		if p+LabelBlockSize <= size {
			out = append(out, p)
		}
	}
	return out
}

// ErrNoLabel means the block does not start with the bluestore magic.
var ErrNoLabel = errors.New("no bluestore label")

// ErrLabelChecksum means the block has the bluestore magic but its crc32c
// does not match: Ceph would refuse it (EIO), blkid, wipefs and Rook
// still see a bluestore device.
var ErrLabelChecksum = errors.New("bluestore label checksum mismatch")

// Label is a decoded bluestore label.
type Label struct {
	OSDUUID     uuid.UUID
	Size        uint64 // device size recorded by Ceph
	Birth       time.Time
	Description string            // "main" for an OSD's data device
	Meta        map[string]string // osd_key, whoami, ceph_fsid, multi, epoch...
}

// cephCRC32C is Ceph's ceph_crc32c(seed, data): CRC-32C with the given
// seed and no final inversion. Go's crc32.Update inverts on the way in
// and out, so undo both.
func cephCRC32C(seed uint32, b []byte) uint32 {
	return ^crc32.Update(^seed, crc32.MakeTable(crc32.Castagnoli), b)
}

// EncodeLabel returns the 4 KiB block Ceph would write for l, checksum
// included. Tests use it to seed disks with labels that Ceph's own reader
// (ceph-bluestore-tool show-label) accepts.
func EncodeLabel(l Label) ([]byte, error) {
	var body bytes.Buffer
	le := binary.LittleEndian
	put32 := func(v uint32) { body.Write(le.AppendUint32(nil, v)) }
	putStr := func(s string) { put32(uint32(len(s))); body.WriteString(s) }

	body.Write(l.OSDUUID[:])
	body.Write(le.AppendUint64(nil, l.Size))
	var sec, nsec uint32
	if !l.Birth.IsZero() {
		sec, nsec = uint32(l.Birth.Unix()), uint32(l.Birth.Nanosecond())
	}
	put32(sec)
	put32(nsec)
	putStr(l.Description)
	keys := make([]string, 0, len(l.Meta))
	for k := range l.Meta {
		keys = append(keys, k)
	}
	sort.Strings(keys) // std::map order
	put32(uint32(len(keys)))
	for _, k := range keys {
		putStr(k)
		putStr(l.Meta[k])
	}

	var b bytes.Buffer
	b.WriteString(labelMagic)
	b.WriteString(l.OSDUUID.String())
	b.WriteString("\n")
	b.Write([]byte{2, 1}) // struct_v, compat
	b.Write(le.AppendUint32(nil, uint32(body.Len())))
	b.Write(body.Bytes())
	b.Write(le.AppendUint32(nil, cephCRC32C(0xffffffff, b.Bytes())))
	if b.Len() > LabelBlockSize {
		return nil, fmt.Errorf("bluestore label is %d bytes, more than one %d-byte block: shorten its description or meta", b.Len(), LabelBlockSize)
	}
	out := make([]byte, LabelBlockSize)
	copy(out, b.Bytes())
	return out, nil
}

// labelReader decodes Ceph's little-endian encoding with bounds checks.
type labelReader struct {
	b   []byte
	off int
	err error
}

func (r *labelReader) take(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b)-r.off {
		r.err = fmt.Errorf("bluestore label truncated at byte %d", r.off)
		return nil
	}
	p := r.b[r.off : r.off+n]
	r.off += n
	return p
}

func (r *labelReader) u8() uint8 {
	if p := r.take(1); p != nil {
		return p[0]
	}
	return 0
}

func (r *labelReader) u32() uint32 {
	if p := r.take(4); p != nil {
		return binary.LittleEndian.Uint32(p)
	}
	return 0
}

func (r *labelReader) u64() uint64 {
	if p := r.take(8); p != nil {
		return binary.LittleEndian.Uint64(p)
	}
	return 0
}

func (r *labelReader) str() string {
	n := r.u32()
	return string(r.take(int(min(n, uint32(len(r.b))+1))))
}

// ParseLabel decodes a bluestore label block (at least the encoded bytes;
// normally LabelBlockSize). It returns ErrNoLabel when the magic is
// missing and an error wrapping ErrLabelChecksum, with the label decoded
// as far as possible, when the crc does not match.
func ParseLabel(b []byte) (Label, error) {
	if !bytes.HasPrefix(b, []byte(labelMagic)) {
		return Label{}, ErrNoLabel
	}
	r := &labelReader{b: b, off: labelPrefixLen}
	v, compat := r.u8(), r.u8()
	n := r.u32()
	if r.err != nil {
		return Label{}, r.err
	}
	if compat > 2 {
		return Label{}, fmt.Errorf("bluestore label struct compat version %d is newer than 2", compat)
	}
	end := r.off + int(min(n, uint32(len(b)))) // bounded; checked below
	if uint64(r.off)+uint64(n) > uint64(len(b)) {
		return Label{}, fmt.Errorf("bluestore label length %d runs past its %d-byte block", n, len(b))
	}
	var l Label
	copy(l.OSDUUID[:], r.take(16))
	l.Size = r.u64()
	sec, nsec := r.u32(), r.u32()
	if sec != 0 || nsec != 0 {
		l.Birth = time.Unix(int64(sec), int64(nsec)).UTC()
	}
	l.Description = r.str()
	if v >= 2 {
		count := r.u32()
		for i := uint32(0); i < count && r.err == nil; i++ {
			k, val := r.str(), r.str()
			if r.err == nil {
				if l.Meta == nil {
					l.Meta = map[string]string{}
				}
				l.Meta[k] = val
			}
		}
	}
	if r.err != nil {
		return Label{}, r.err
	}
	if r.off > end {
		return Label{}, fmt.Errorf("bluestore label fields run past its encoded length %d", n)
	}
	// DECODE_FINISH skips whatever a newer struct_v added.
	r.off = end
	sum := r.u32()
	if r.err != nil {
		return Label{}, r.err
	}
	if got := cephCRC32C(0xffffffff, b[:end]); got != sum {
		return l, fmt.Errorf("%w: stored %08x, computed %08x", ErrLabelChecksum, sum, got)
	}
	return l, nil
}
