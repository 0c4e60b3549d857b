package disks

// Partition tables: GPT headers and entries (UEFI spec 2.10, 5.3) and the
// MBR (classic or the protective MBR in front of a GPT).

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"unicode/utf16"

	"github.com/google/uuid"
)

const gptSignature = "EFI PART"

// maxGPTEntryBytes bounds the partition entry array we read (the spec's
// minimum is 16 KiB; tools write 128 x 128 bytes).
const maxGPTEntryBytes = 1 << 20

// ErrNoGPT means the block does not hold a GPT header signature.
var ErrNoGPT = errors.New("no GPT header")

// GPTHeader is a parsed, checksum-verified GPT header.
type GPTHeader struct {
	Revision       uint32
	HeaderSize     uint32
	MyLBA          uint64
	AlternateLBA   uint64
	FirstUsableLBA uint64
	LastUsableLBA  uint64
	DiskGUID       uuid.UUID
	EntriesLBA     uint64
	NumEntries     uint32
	EntrySize      uint32
	EntriesCRC     uint32
}

// Partition is one used GPT or MBR partition entry, in bytes.
type Partition struct {
	Index  int // 1-based, as the kernel numbers them
	Offset int64
	Length int64
	Type   string // GPT type GUID, or MBR type as "0x83"
	Name   string // GPT partition name
}

// guidFromGPT converts GPT's mixed-endian GUID bytes.
func guidFromGPT(b []byte) uuid.UUID {
	var u uuid.UUID
	u[0], u[1], u[2], u[3] = b[3], b[2], b[1], b[0]
	u[4], u[5] = b[5], b[4]
	u[6], u[7] = b[7], b[6]
	copy(u[8:], b[8:16])
	return u
}

// ParseGPTHeader parses and verifies a GPT header block (one logical
// block, at least 92 bytes): signature, size and header CRC32.
func ParseGPTHeader(b []byte) (GPTHeader, error) {
	if len(b) < 92 || string(b[:8]) != gptSignature {
		return GPTHeader{}, ErrNoGPT
	}
	le := binary.LittleEndian
	h := GPTHeader{
		Revision:       le.Uint32(b[8:]),
		HeaderSize:     le.Uint32(b[12:]),
		MyLBA:          le.Uint64(b[24:]),
		AlternateLBA:   le.Uint64(b[32:]),
		FirstUsableLBA: le.Uint64(b[40:]),
		LastUsableLBA:  le.Uint64(b[48:]),
		DiskGUID:       guidFromGPT(b[56:72]),
		EntriesLBA:     le.Uint64(b[72:]),
		NumEntries:     le.Uint32(b[80:]),
		EntrySize:      le.Uint32(b[84:]),
		EntriesCRC:     le.Uint32(b[88:]),
	}
	if h.HeaderSize < 92 || int(h.HeaderSize) > len(b) {
		return GPTHeader{}, fmt.Errorf("GPT header size %d outside 92..%d", h.HeaderSize, len(b))
	}
	hdr := bytes.Clone(b[:h.HeaderSize])
	clear(hdr[16:20])
	if got, want := crc32.ChecksumIEEE(hdr), le.Uint32(b[16:]); got != want {
		return GPTHeader{}, fmt.Errorf("GPT header checksum mismatch: stored %08x, computed %08x", want, got)
	}
	if h.EntrySize < 128 || h.EntrySize%8 != 0 {
		return GPTHeader{}, fmt.Errorf("GPT partition entry size %d is not a multiple of 8 of at least 128", h.EntrySize)
	}
	if uint64(h.NumEntries)*uint64(h.EntrySize) > maxGPTEntryBytes {
		return GPTHeader{}, fmt.Errorf("GPT partition array of %d x %d bytes is larger than %d", h.NumEntries, h.EntrySize, maxGPTEntryBytes)
	}
	return h, nil
}

// ParseGPTEntries verifies the entry array's CRC32 against the header and
// returns the used entries (type GUID not zero), in bytes for the given
// logical block size.
func ParseGPTEntries(h GPTHeader, b []byte, sectorSize int64) ([]Partition, error) {
	n := int(h.NumEntries) * int(h.EntrySize)
	if len(b) < n {
		return nil, fmt.Errorf("GPT partition array truncated: %d of %d bytes", len(b), n)
	}
	if got := crc32.ChecksumIEEE(b[:n]); got != h.EntriesCRC {
		return nil, fmt.Errorf("GPT partition array checksum mismatch: stored %08x, computed %08x", h.EntriesCRC, got)
	}
	le := binary.LittleEndian
	var parts []Partition
	for i := 0; i < int(h.NumEntries); i++ {
		e := b[i*int(h.EntrySize):][:h.EntrySize]
		typ := guidFromGPT(e[0:16])
		if typ == uuid.Nil {
			continue
		}
		first, last := le.Uint64(e[32:]), le.Uint64(e[40:])
		if last < first || last > (1<<62)/uint64(sectorSize) {
			return nil, fmt.Errorf("GPT partition %d has a bad extent %d..%d", i+1, first, last)
		}
		u16 := make([]uint16, 0, 36)
		for j := 56; j+1 < 128; j += 2 {
			c := le.Uint16(e[j:])
			if c == 0 {
				break
			}
			u16 = append(u16, c)
		}
		parts = append(parts, Partition{
			Index:  i + 1,
			Offset: int64(first) * sectorSize,
			Length: int64(last-first+1) * sectorSize,
			Type:   typ.String(),
			Name:   string(utf16.Decode(u16)),
		})
	}
	return parts, nil
}

// MBR is a parsed master boot record.
type MBR struct {
	Protective bool // a 0xEE entry: the MBR in front of a GPT
	Partitions []Partition
}

// ErrNoMBR means sector 0 holds no plausible MBR.
var ErrNoMBR = errors.New("no MBR")

// ParseMBR parses sector 0 (at least 512 bytes). Like blkid it accepts it
// only with the 0x55AA signature, valid boot flags and at least one used
// entry, and not when the sector is a FAT boot sector (which has the same
// signature).
func ParseMBR(b []byte) (MBR, error) {
	if len(b) < 512 || b[510] != 0x55 || b[511] != 0xaa {
		return MBR{}, ErrNoMBR
	}
	if _, ok := parseVFAT(b); ok {
		return MBR{}, ErrNoMBR
	}
	le := binary.LittleEndian
	var m MBR
	for i := range 4 {
		e := b[446+16*i:][:16]
		if e[0] != 0 && e[0] != 0x80 {
			return MBR{}, ErrNoMBR
		}
		typ := e[4]
		if typ == 0 {
			continue
		}
		if typ == 0xee {
			m.Protective = true
		}
		start, n := le.Uint32(e[8:]), le.Uint32(e[12:])
		m.Partitions = append(m.Partitions, Partition{
			Index:  i + 1,
			Offset: int64(start) * 512,
			Length: int64(n) * 512,
			Type:   fmt.Sprintf("0x%02x", typ),
		})
	}
	if len(m.Partitions) == 0 {
		return MBR{}, ErrNoMBR
	}
	return m, nil
}
