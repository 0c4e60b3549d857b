package disks

// Filesystem and volume-manager superblocks, by their magic numbers and
// a few sanity fields, the way blkid finds them. We parse them ourselves
// rather than call go-blockdevice's blkid: its Probe takes an *os.File
// (not an io.ReaderAt), stops at the first match, knows no btrfs, and
// looks for bluestore only at offset 0 (see docs/DESIGN.md).

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"strings"

	"github.com/google/uuid"
)

// fsInfo is what a superblock parser found.
type fsInfo struct {
	Type   string // blkid's TYPE name
	UUID   string
	Label  string
	Offset int64 // of the magic, from the start of the filesystem
	Length int64 // of the magic
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return strings.TrimRight(string(b), " ")
}

// parseExt reads an ext2/3/4 superblock (the 1 KiB at offset 1024).
func parseExt(sb []byte) (fsInfo, bool) {
	if len(sb) < 256 || binary.LittleEndian.Uint16(sb[56:]) != 0xef53 {
		return fsInfo{}, false
	}
	le := binary.LittleEndian
	compat, incompat := le.Uint32(sb[92:]), le.Uint32(sb[96:])
	typ := "ext2"
	if compat&0x4 != 0 { // has_journal
		typ = "ext3"
	}
	if incompat&(0x40|0x80|0x200) != 0 { // extents, 64bit, flex_bg
		typ = "ext4"
	}
	u, _ := uuid.FromBytes(sb[104:120])
	return fsInfo{Type: typ, UUID: u.String(), Label: cString(sb[120:136]), Offset: 1024 + 56, Length: 2}, true
}

// parseXFS reads an XFS superblock (sector 0).
func parseXFS(b []byte) (fsInfo, bool) {
	if len(b) < 120 || string(b[:4]) != "XFSB" {
		return fsInfo{}, false
	}
	bs := binary.BigEndian.Uint32(b[4:])
	if bs < 512 || bs > 65536 || bs&(bs-1) != 0 {
		return fsInfo{}, false
	}
	u, _ := uuid.FromBytes(b[32:48])
	return fsInfo{Type: "xfs", UUID: u.String(), Label: cString(b[108:120]), Offset: 0, Length: 4}, true
}

// btrfsSuper is where btrfs keeps its primary superblock.
const btrfsSuper = 64 << 10

// parseBtrfs reads a btrfs superblock (the 4 KiB at 64 KiB).
func parseBtrfs(b []byte) (fsInfo, bool) {
	if len(b) < 0x12b+256 || string(b[0x40:0x48]) != "_BHRfS_M" {
		return fsInfo{}, false
	}
	u, _ := uuid.FromBytes(b[0x20:0x30])
	return fsInfo{Type: "btrfs", UUID: u.String(), Label: cString(b[0x12b : 0x12b+256]), Offset: btrfsSuper + 0x40, Length: 8}, true
}

// parseVFAT reads a FAT boot sector (sector 0).
func parseVFAT(b []byte) (fsInfo, bool) {
	if len(b) < 512 || b[510] != 0x55 || b[511] != 0xaa {
		return fsInfo{}, false
	}
	le := binary.LittleEndian
	bps := le.Uint16(b[11:])
	if bps < 512 || bps > 4096 || bps&(bps-1) != 0 || b[13] == 0 || b[13]&(b[13]-1) != 0 || b[16] == 0 {
		return fsInfo{}, false
	}
	var id uint32
	var label []byte
	var magicAt int64
	switch {
	case string(b[82:87]) == "FAT32":
		id, label, magicAt = le.Uint32(b[67:]), b[71:82], 82
	case string(b[54:57]) == "FAT":
		id, label, magicAt = le.Uint32(b[39:]), b[43:54], 54
	default:
		return fsInfo{}, false
	}
	l := cString(label)
	if l == "NO NAME" {
		l = ""
	}
	return fsInfo{Type: "vfat", UUID: fmt.Sprintf("%04X-%04X", id>>16, id&0xffff), Label: l, Offset: magicAt, Length: 8}, true
}

// parseLVM finds an LVM2 physical volume label in the first four sectors
// (2 KiB): "LABELONE" at a sector start, "LVM2 001" 24 bytes later.
func parseLVM(b []byte) (fsInfo, bool) {
	for s := 0; s+64 <= len(b) && s < 4*512; s += 512 {
		if string(b[s:s+8]) == "LABELONE" && string(b[s+24:s+32]) == "LVM2 001" {
			return fsInfo{Type: "LVM2_member", UUID: cString(b[s+32 : s+64]), Offset: int64(s) + 24, Length: 8}, true
		}
	}
	return fsInfo{}, false
}

// readAt reads up to n bytes at off, fewer at the end of the device.
func readAt(r io.ReaderAt, off, n, size int64) ([]byte, error) {
	if off < 0 || off >= size {
		return nil, nil
	}
	n = min(n, size-off)
	b := make([]byte, n)
	m, err := r.ReadAt(b, off)
	if err != nil && !(err == io.EOF && int64(m) == n) {
		return nil, fmt.Errorf("read %d bytes at offset %d: %w", n, off, err)
	}
	return b, nil
}

// detectFS looks for a filesystem or LVM label starting at base, within
// length bytes. It returns the first it finds (a device holds one).
func detectFS(r io.ReaderAt, base, length int64) (fsInfo, bool, error) {
	head, err := readAt(r, base, min(length, 4096), base+length)
	if err != nil {
		return fsInfo{}, false, err
	}
	for _, parse := range []func([]byte) (fsInfo, bool){parseXFS, parseVFAT, parseLVM} {
		if fi, ok := parse(head); ok {
			return fi, true, nil
		}
	}
	if len(head) >= 2048 {
		if fi, ok := parseExt(head[1024:2048]); ok {
			return fi, true, nil
		}
	}
	if length >= btrfsSuper+4096 {
		sb, err := readAt(r, base+btrfsSuper, 4096, base+length)
		if err != nil {
			return fsInfo{}, false, err
		}
		if fi, ok := parseBtrfs(sb); ok {
			return fi, true, nil
		}
	}
	return fsInfo{}, false, nil
}
