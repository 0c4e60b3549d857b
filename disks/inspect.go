// Package disks tells what is on a disk (partition tables, filesystem
// superblocks, Ceph bluestore labels at every offset Ceph keeps a copy)
// and wipes a stale Ceph disk so that Rook takes it: the first and last
// MiB and every bluestore label copy, nothing else. It reads and writes
// through io.ReaderAt/io.WriterAt, so the same code runs on a disk image
// in a test and on a block device on a machine.
package disks

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// Signature is one thing found on the disk, named as blkid names it.
type Signature struct {
	// Type: "gpt", "PMBR", "dos", "ext2", "ext3", "ext4", "xfs", "vfat",
	// "btrfs", "LVM2_member" or "ceph_bluestore".
	Type string
	// Offset is where its magic starts on the disk; MagicLen how many
	// bytes the magic has (what wipefs would erase).
	Offset   int64
	MagicLen int64
	// Partition is the 1-based partition it lives in (0: the whole disk).
	Partition int
	// UUID: the filesystem UUID, the GPT disk GUID or the OSD's uuid.
	UUID  string
	Label string // filesystem label, or the bluestore description
	// Problem says why the structure is damaged (a checksum mismatch);
	// empty when it is sound. A damaged one is still reported: blkid,
	// wipefs and Rook see it by its magic.
	Problem string
}

// Report is what Inspect found on one disk.
type Report struct {
	Size       int64
	Partitions []Partition // from the GPT (primary, else backup) or the MBR
	Signatures []Signature
}

// Clean reports whether the disk holds nothing Rook would refuse it for:
// no partition table, no filesystem, no bluestore label.
func (r Report) Clean() bool { return len(r.Signatures) == 0 }

// Labels returns the bluestore label copies found.
func (r Report) Labels() []Signature {
	var out []Signature
	for _, s := range r.Signatures {
		if s.Type == "ceph_bluestore" {
			out = append(out, s)
		}
	}
	return out
}

// Summary is a one-line description for the user, e.g. "GPT with 1
// partition (backup header only); ext4 in partition 1; Ceph OSD
// 1f0e...'s bluestore label at 0, 1 GiB, 10 GiB".
func (r Report) Summary() string {
	if r.Clean() {
		return "clean: no partition table, filesystem or Ceph label"
	}
	var parts []string
	var gptAt []string
	sawGPT := false
	osds := map[string][]string{}
	var osdOrder []string
	for _, s := range r.Signatures {
		switch s.Type {
		case "gpt":
			gptAt = append(gptAt, s.Problem)
			if s.Problem == "" {
				gptAt = gptAt[:len(gptAt)-1]
			}
			sawGPT = true
		case "PMBR":
		case "dos":
			parts = append(parts, fmt.Sprintf("MBR partition table with %s", plural(len(r.Partitions), "partition")))
		case "ceph_bluestore":
			key := s.UUID
			if s.Problem != "" {
				key += " (damaged)"
			}
			if _, ok := osds[key]; !ok {
				osdOrder = append(osdOrder, key)
			}
			osds[key] = append(osds[key], FormatOffset(s.Offset))
		default:
			where := "on the whole disk"
			if s.Partition > 0 {
				where = fmt.Sprintf("in partition %d", s.Partition)
			}
			parts = append(parts, fmt.Sprintf("%s %s", s.Type, where))
		}
	}
	if sawGPT {
		g := fmt.Sprintf("GPT with %s", plural(len(r.Partitions), "partition"))
		if len(gptAt) > 0 {
			g += " (" + strings.Join(gptAt, ", ") + ")"
		}
		parts = append([]string{g}, parts...)
	}
	for _, k := range osdOrder {
		parts = append(parts, fmt.Sprintf("Ceph bluestore label of OSD %s at %s", k, strings.Join(osds[k], ", ")))
	}
	return strings.Join(parts, "; ")
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// FormatOffset writes a byte offset the way people say it: "0", "1 GiB",
// "1 MiB + 1 GiB" is written "1025 MiB", odd ones in bytes.
func FormatOffset(off int64) string {
	switch {
	case off == 0:
		return "0"
	case off%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", off>>30)
	case off%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", off>>20)
	case off%(1<<10) == 0:
		return fmt.Sprintf("%d KiB", off>>10)
	}
	return fmt.Sprintf("%d bytes", off)
}

// lvmDataOffset is where LVM puts the first physical extent by default
// (pe_start, 1 MiB): a ceph-volume "lvm" OSD's logical volume, and so its
// bluestore labels, start there.
const lvmDataOffset = 1 << 20

// labelCandidates are the offsets Inspect reads for a bluestore label:
// Ceph's positions from the start of the disk, of LVM's data area and of
// each partition.
func labelCandidates(size int64, parts []Partition) []int64 {
	bases := []int64{0, lvmDataOffset}
	for _, p := range parts {
		bases = append(bases, p.Offset)
	}
	var out []int64
	for _, b := range bases {
		for _, p := range labelPositions {
			if off := b + p; off+int64(len(labelMagic)) <= size {
				out = append(out, off)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Inspect reads what is on a disk of the given size: the MBR, the GPT
// (primary and backup, 512- and 4096-byte sectors), filesystems on the
// whole disk and in each partition, and bluestore labels at every offset
// Ceph may have written one.
func Inspect(r io.ReaderAt, size int64) (Report, error) {
	rep := Report{Size: size}
	if size <= 0 {
		return rep, nil
	}
	head, err := readAt(r, 0, 512, size)
	if err != nil {
		return rep, fmt.Errorf("inspect disk: %w", err)
	}
	mbr, mbrErr := ParseMBR(head)
	gptParts, gptSigs, err := inspectGPT(r, size)
	if err != nil {
		return rep, fmt.Errorf("inspect disk: %w", err)
	}
	if mbrErr == nil {
		typ := "dos"
		if mbr.Protective {
			typ = "PMBR"
		}
		rep.Signatures = append(rep.Signatures, Signature{Type: typ, Offset: 510, MagicLen: 2})
	}
	rep.Signatures = append(rep.Signatures, gptSigs...)
	switch {
	case len(gptSigs) > 0:
		rep.Partitions = gptParts
	case mbrErr == nil && !mbr.Protective:
		rep.Partitions = mbr.Partitions
	}

	// A filesystem on the whole disk, then in each partition.
	if fi, ok, err := detectFS(r, 0, size); err != nil {
		return rep, fmt.Errorf("inspect disk: %w", err)
	} else if ok {
		rep.Signatures = append(rep.Signatures, Signature{Type: fi.Type, Offset: fi.Offset, MagicLen: fi.Length, UUID: fi.UUID, Label: fi.Label})
	}
	for _, p := range rep.Partitions {
		if p.Offset <= 0 || p.Offset >= size {
			continue
		}
		fi, ok, err := detectFS(r, p.Offset, min(p.Length, size-p.Offset))
		if err != nil {
			return rep, fmt.Errorf("inspect partition %d: %w", p.Index, err)
		}
		if ok {
			rep.Signatures = append(rep.Signatures, Signature{Type: fi.Type, Offset: p.Offset + fi.Offset, MagicLen: fi.Length, Partition: p.Index, UUID: fi.UUID, Label: fi.Label})
		}
	}

	for _, off := range labelCandidates(size, rep.Partitions) {
		b, err := readAt(r, off, LabelBlockSize, size)
		if err != nil {
			return rep, fmt.Errorf("inspect bluestore label at %s: %w", FormatOffset(off), err)
		}
		l, err := ParseLabel(b)
		if err == ErrNoLabel {
			continue
		}
		s := Signature{Type: "ceph_bluestore", Offset: off, MagicLen: int64(len(labelMagic)), UUID: l.OSDUUID.String(), Label: l.Description}
		for _, p := range rep.Partitions {
			if off >= p.Offset && off < p.Offset+p.Length {
				s.Partition = p.Index
			}
		}
		if err != nil {
			s.Problem = err.Error()
			if l.OSDUUID == [16]byte{} {
				s.UUID = strings.TrimSpace(string(b[len(labelMagic):min(len(b), labelPrefixLen)]))
			}
		}
		rep.Signatures = append(rep.Signatures, s)
	}
	slices.SortStableFunc(rep.Signatures, func(a, b Signature) int {
		switch {
		case a.Offset < b.Offset:
			return -1
		case a.Offset > b.Offset:
			return 1
		}
		return 0
	})
	return rep, nil
}

// inspectGPT finds GPT headers: the primary at LBA 1 and the backup at
// the last LBA (or where the primary says), for 512- and 4096-byte
// logical blocks. Partitions come from the first valid header whose
// entry array checks out.
func inspectGPT(r io.ReaderAt, size int64) ([]Partition, []Signature, error) {
	for _, ss := range []int64{512, 4096} {
		if size < 3*ss {
			continue
		}
		lastLBA := size/ss - 1
		var sigs []Signature
		var parts []Partition
		found := map[int64]bool{}
		try := func(lba int64, which string) error {
			if lba <= 0 || lba > lastLBA || found[lba] {
				return nil
			}
			b, err := readAt(r, lba*ss, ss, size)
			if err != nil {
				return err
			}
			h, err := ParseGPTHeader(b)
			if err == ErrNoGPT {
				return nil
			}
			sig := Signature{Type: "gpt", Offset: lba * ss, MagicLen: 8}
			if err != nil {
				sig.Problem = which + " header damaged: " + err.Error()
				sigs = append(sigs, sig)
				found[lba] = true
				return nil
			}
			sig.UUID = h.DiskGUID.String()
			found[lba] = true
			if parts == nil && int64(h.EntriesLBA) <= lastLBA {
				eb, err := readAt(r, int64(h.EntriesLBA)*ss, int64(h.NumEntries)*int64(h.EntrySize), size)
				if err != nil {
					return err
				}
				p, err := ParseGPTEntries(h, eb, ss)
				if err != nil {
					sig.Problem = which + " partition array damaged: " + err.Error()
				} else {
					parts = p
					if parts == nil {
						parts = []Partition{}
					}
				}
			}
			sigs = append(sigs, sig)
			if which == "primary" && h.AlternateLBA != uint64(lastLBA) && h.AlternateLBA <= uint64(lastLBA) {
				return tryBackup(r, size, ss, int64(h.AlternateLBA), found, &sigs, &parts)
			}
			return nil
		}
		if err := try(1, "primary"); err != nil {
			return nil, nil, err
		}
		if err := try(lastLBA, "backup"); err != nil {
			return nil, nil, err
		}
		if len(sigs) == 0 {
			continue
		}
		if len(sigs) == 1 && sigs[0].Problem == "" {
			if sigs[0].Offset == ss {
				sigs[0].Problem = "primary header only, backup missing"
			} else {
				sigs[0].Problem = "backup header only, primary missing"
			}
		}
		return parts, sigs, nil
	}
	return nil, nil, nil
}

// tryBackup reads a backup header at a position the primary names that is
// not the last LBA (a disk that grew after partitioning).
func tryBackup(r io.ReaderAt, size, ss, lba int64, found map[int64]bool, sigs *[]Signature, parts *[]Partition) error {
	if found[lba] {
		return nil
	}
	b, err := readAt(r, lba*ss, ss, size)
	if err != nil {
		return err
	}
	h, err := ParseGPTHeader(b)
	if err == ErrNoGPT {
		return nil
	}
	found[lba] = true
	sig := Signature{Type: "gpt", Offset: lba * ss, MagicLen: 8}
	if err != nil {
		sig.Problem = "backup header damaged: " + err.Error()
	} else {
		sig.UUID = h.DiskGUID.String()
	}
	*sigs = append(*sigs, sig)
	return nil
}
