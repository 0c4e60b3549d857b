package imager

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// EnvSourceDateEpoch is the environment variable of reproducible builds
// (https://reproducible-builds.org/specs/source-date-epoch/).
const EnvSourceDateEpoch = "SOURCE_DATE_EPOCH"

// ParseSourceDateEpoch reads a SOURCE_DATE_EPOCH value: decimal seconds since
// 1970 UTC. ok is false for an empty value.
func ParseSourceDateEpoch(v string) (t time.Time, ok bool, err error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return time.Time{}, false, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 || n > 253402300799 { // 9999-12-31T23:59:59Z
		return time.Time{}, false, fmt.Errorf("%s=%q is not a number of seconds since 1970", EnvSourceDateEpoch, v)
	}
	return time.Unix(n, 0).UTC(), true, nil
}

// ISO 9660 (ECMA-119) and RRIP offsets used by NormalizeISOTimes.
const (
	isoSector        = 2048
	isoFirstVD       = 16
	isoMaxVDs        = 64
	vdTypePrimary    = 1
	vdTypeSupplement = 2
	vdTypeTerminator = 255
	vdRootRecord     = 156 // root directory record in a PVD/SVD (34 bytes)
	vdBlockSize      = 128 // logical block size, both-endian uint16
	vdCreation       = 813 // 17-byte dec-datetimes
	vdModification   = 830
	vdExpiration     = 847
	vdEffective      = 864
	drRecordingTime  = 18 // 7-byte datetime in a directory record
	drFlags          = 25
	drNameLen        = 32
	drName           = 33
	drFlagDir        = 0x02
	// maxDirBytes bounds one directory extent (a sanity limit for the
	// walk; go-diskfs directories are a few sectors).
	maxDirBytes = 16 << 20
	// maxDirs bounds the number of directories walked.
	maxDirs = 1 << 16
	// maxCE bounds the continuation areas followed from one record.
	maxCE = 64
	// maxCEBytes bounds one continuation area and its offset.
	maxCEBytes = 1 << 16
)

// ErrNotISO is returned by NormalizeISOTimes for data that is not an
// ISO 9660 volume.
var ErrNotISO = errors.New("not an ISO 9660 volume")

// ISOTimesStats counts what NormalizeISOTimes rewrote.
type ISOTimesStats struct {
	VolumeDescriptors int // PVDs and SVDs
	Records           int // directory records
	TFEntries         int // Rock Ridge TF entries
	PXEntries         int // Rock Ridge PX entries (owner set to 0:0)
}

// isoRW is what NormalizeISOTimes works on (an *os.File).
type isoRW interface {
	io.ReaderAt
	io.WriterAt
}

// NormalizeISOTimes makes an ISO 9660 image independent of when and by whom
// it was built, in place: the creation, modification and effective dates
// of every primary and supplementary volume descriptor become t (the
// expiration date "not specified"); every directory record's recording
// time and every Rock Ridge TF timestamp (RRIP 4.1.6, short or long form,
// in System Use areas and their CE continuations) become t in UTC; every
// Rock Ridge PX owner and group become 0. go-diskfs ignores
// SOURCE_DATE_EPOCH for ISO 9660 (BOOT-MEDIA.md); this is the
// post-processing that makes two builds byte-identical.
func NormalizeISOTimes(f isoRW, t time.Time) (ISOTimesStats, error) {
	var st ISOTimesStats
	t = t.UTC()
	if t.Year() < 1900 || t.Year() > 2155 {
		return st, fmt.Errorf("normalize ISO times: %s cannot be written in ISO 9660's 7-byte dates", t)
	}
	n := &isoNormalizer{f: f, t: t, st: &st, seen: map[uint32]bool{}}
	var roots []dirExtent
	vd := make([]byte, isoSector)
	for i := 0; i < isoMaxVDs; i++ {
		off := int64(isoFirstVD+i) * isoSector
		if _, err := f.ReadAt(vd, off); err != nil {
			return st, fmt.Errorf("normalize ISO times: read volume descriptor %d: %w", isoFirstVD+i, err)
		}
		if string(vd[1:6]) != "CD001" {
			if i == 0 {
				return st, fmt.Errorf("normalize ISO times: %w (no CD001 at sector 16)", ErrNotISO)
			}
			return st, fmt.Errorf("normalize ISO times: %w: volume descriptor %d has no CD001 and no terminator came before", ErrNotISO, isoFirstVD+i)
		}
		typ := vd[0]
		if typ == vdTypeTerminator {
			break
		}
		if typ != vdTypePrimary && typ != vdTypeSupplement {
			continue // boot record, partition descriptor: no times
		}
		if bs := binary.LittleEndian.Uint16(vd[vdBlockSize:]); bs != isoSector {
			return st, fmt.Errorf("normalize ISO times: logical block size %d, only %d is supported", bs, isoSector)
		}
		for _, o := range []int{vdCreation, vdModification, vdEffective} {
			putDecDateTime(vd[o:o+17], t)
		}
		putDecDateTime(vd[vdExpiration:vdExpiration+17], time.Time{})
		root := vd[vdRootRecord : vdRootRecord+34]
		putDirDateTime(root[drRecordingTime:drRecordingTime+7], t)
		if _, err := f.WriteAt(vd, off); err != nil {
			return st, fmt.Errorf("normalize ISO times: write volume descriptor: %w", err)
		}
		st.VolumeDescriptors++
		roots = append(roots, dirExtent{
			loc:  binary.LittleEndian.Uint32(root[2:]),
			size: binary.LittleEndian.Uint32(root[10:]),
		})
	}
	if st.VolumeDescriptors == 0 {
		return st, fmt.Errorf("normalize ISO times: %w (no primary volume descriptor)", ErrNotISO)
	}
	for _, r := range roots {
		if err := n.walk(r); err != nil {
			return st, fmt.Errorf("normalize ISO times: %w", err)
		}
	}
	return st, nil
}

type dirExtent struct{ loc, size uint32 }

type isoNormalizer struct {
	f    isoRW
	t    time.Time
	st   *ISOTimesStats
	seen map[uint32]bool
}

// walk rewrites every directory reachable from root, breadth first.
func (n *isoNormalizer) walk(root dirExtent) error {
	queue := []dirExtent{root}
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		if n.seen[d.loc] {
			continue
		}
		n.seen[d.loc] = true
		if len(n.seen) > maxDirs {
			return fmt.Errorf("more than %d directories", maxDirs)
		}
		if d.size == 0 || d.size > maxDirBytes {
			return fmt.Errorf("directory at sector %d has size %d", d.loc, d.size)
		}
		buf := make([]byte, d.size)
		if _, err := n.f.ReadAt(buf, int64(d.loc)*isoSector); err != nil {
			return fmt.Errorf("read directory at sector %d: %w", d.loc, err)
		}
		subdirs, err := n.records(buf, d.loc)
		if err != nil {
			return err
		}
		if _, err := n.f.WriteAt(buf, int64(d.loc)*isoSector); err != nil {
			return fmt.Errorf("write directory at sector %d: %w", d.loc, err)
		}
		queue = append(queue, subdirs...)
	}
	return nil
}

// records rewrites the records of one directory extent in buf and returns
// its subdirectories.
func (n *isoNormalizer) records(buf []byte, loc uint32) ([]dirExtent, error) {
	var subdirs []dirExtent
	for pos := 0; pos < len(buf); {
		l := int(buf[pos])
		if l == 0 {
			// Records do not cross sectors: the rest of this one is padding.
			pos = (pos/isoSector + 1) * isoSector
			continue
		}
		if l < drName+1 || pos+l > len(buf) {
			return nil, fmt.Errorf("directory at sector %d: bad record length %d at byte %d", loc, l, pos)
		}
		rec := buf[pos : pos+l]
		nameLen := int(rec[drNameLen])
		if drName+nameLen > l {
			return nil, fmt.Errorf("directory at sector %d: name of %d bytes overruns its record at byte %d", loc, nameLen, pos)
		}
		putDirDateTime(rec[drRecordingTime:drRecordingTime+7], n.t)
		n.st.Records++
		su := drName + nameLen
		if nameLen%2 == 0 {
			su++ // padding byte after an even-length name
		}
		if su < l {
			if err := n.susp(rec[su:], 0); err != nil {
				return nil, fmt.Errorf("directory at sector %d, record at byte %d: %w", loc, pos, err)
			}
		}
		name := rec[drName : drName+nameLen]
		self := nameLen == 1 && (name[0] == 0 || name[0] == 1)
		if rec[drFlags]&drFlagDir != 0 && !self {
			subdirs = append(subdirs, dirExtent{
				loc:  binary.LittleEndian.Uint32(rec[2:]),
				size: binary.LittleEndian.Uint32(rec[10:]),
			})
		}
		pos += l
	}
	return subdirs, nil
}

// susp rewrites the TF and PX entries of a System Use area and follows its
// CE continuation areas (read, rewritten and written back in place).
func (n *isoNormalizer) susp(area []byte, depth int) error {
	if depth > maxCE {
		return fmt.Errorf("more than %d SUSP continuation areas", maxCE)
	}
	for pos := 0; pos+4 <= len(area); {
		sig := string(area[pos : pos+2])
		l := int(area[pos+2])
		if l < 4 || pos+l > len(area) {
			// Padding or a malformed tail: SUSP says stop here.
			return nil
		}
		e := area[pos : pos+l]
		switch sig {
		case "ST":
			return nil
		case "TF":
			if err := n.tf(e); err != nil {
				return err
			}
		case "PX":
			if l >= 36 {
				for o := 20; o < 36; o++ { // uid, gid: both-endian uint32 each
					e[o] = 0
				}
				n.st.PXEntries++
			}
		case "CE":
			if l < 28 {
				return fmt.Errorf("SUSP CE entry of %d bytes", l)
			}
			block := binary.LittleEndian.Uint32(e[4:])
			off := binary.LittleEndian.Uint32(e[12:])
			size := binary.LittleEndian.Uint32(e[20:])
			if size == 0 || size > maxCEBytes || off > maxCEBytes {
				return fmt.Errorf("SUSP CE entry points at %d bytes at offset %d of sector %d", size, off, block)
			}
			ce := make([]byte, size)
			at := int64(block)*isoSector + int64(off)
			if _, err := n.f.ReadAt(ce, at); err != nil {
				return fmt.Errorf("read SUSP continuation at sector %d: %w", block, err)
			}
			if err := n.susp(ce, depth+1); err != nil {
				return err
			}
			if _, err := n.f.WriteAt(ce, at); err != nil {
				return fmt.Errorf("write SUSP continuation at sector %d: %w", block, err)
			}
		}
		pos += l
	}
	return nil
}

// tf rewrites the timestamps of one RRIP TF entry: flags bit 7 selects the
// 17-byte form, bits 0-6 say which of 7 stamps are present.
func (n *isoNormalizer) tf(e []byte) error {
	if len(e) < 5 {
		return fmt.Errorf("a Rock Ridge TF entry of %d bytes", len(e))
	}
	flags := e[4]
	width := 7
	if flags&0x80 != 0 {
		width = 17
	}
	pos := 5
	for bit := 0; bit < 7; bit++ {
		if flags&(1<<bit) == 0 {
			continue
		}
		if pos+width > len(e) {
			return fmt.Errorf("a Rock Ridge TF entry of %d bytes is too short for its flags %#x", len(e), flags)
		}
		if width == 7 {
			putDirDateTime(e[pos:pos+7], n.t)
		} else {
			putDecDateTime(e[pos:pos+17], n.t)
		}
		pos += width
	}
	n.st.TFEntries++
	return nil
}

// putDirDateTime writes ISO 9660's 7-byte directory record time (9.1.5):
// years since 1900, month, day, hour, minute, second, GMT offset in 15
// minutes (0: t is UTC).
func putDirDateTime(b []byte, t time.Time) {
	t = t.UTC()
	b[0] = byte(t.Year() - 1900)
	b[1] = byte(t.Month())
	b[2] = byte(t.Day())
	b[3] = byte(t.Hour())
	b[4] = byte(t.Minute())
	b[5] = byte(t.Second())
	b[6] = 0
}

// putDecDateTime writes the 17-byte volume descriptor date (8.4.26.1):
// "YYYYMMDDHHMMSScc" and a GMT offset; the zero time is "not specified"
// (all digits zero, offset zero).
func putDecDateTime(b []byte, t time.Time) {
	if t.IsZero() {
		copy(b, "0000000000000000")
		b[16] = 0
		return
	}
	t = t.UTC()
	copy(b, fmt.Sprintf("%04d%02d%02d%02d%02d%02d%02d", t.Year(), int(t.Month()), t.Day(), t.Hour(), t.Minute(), t.Second(), t.Nanosecond()/1e7))
	b[16] = 0
}
