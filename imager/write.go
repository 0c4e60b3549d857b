package imager

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"
)

// Errors of image write, for errors.Is.
var (
	// ErrSystemDisk: the device holds the running system (the disk backing /).
	ErrSystemDisk = errors.New("device holds the running system")
	// ErrMounted: the device or one of its partitions is mounted, used as
	// swap, or held by another device (LVM, dm-crypt, RAID).
	ErrMounted = errors.New("device is in use")
	// ErrNotRemovable: the device is not marked removable (override with force).
	ErrNotRemovable = errors.New("device is not removable")
	// ErrNotWholeDisk: the device is a partition; images go on whole disks.
	ErrNotWholeDisk = errors.New("device is a partition, not a whole disk")
	// ErrNotBlockDevice: the target is not a block device.
	ErrNotBlockDevice = errors.New("not a block device")
	// ErrTooSmall: the image does not fit the device.
	ErrTooSmall = errors.New("image larger than the device")
	// ErrReadOnly: the device is read-only.
	ErrReadOnly = errors.New("device is read-only")
	// ErrVerify: what was read back differs from the image.
	ErrVerify = errors.New("read-back check failed")
	// ErrWriteUnsupported: image write exists only on Linux.
	ErrWriteUnsupported = errors.New("image write needs Linux; use dd or Etcher")
)

// WriteChunk is the size of each write to the device.
const WriteChunk = 4 << 20

// Mount is one line of /proc/self/mountinfo.
type Mount struct {
	Major, Minor uint32
	MountPoint   string
	FSType       string
	Source       string
}

// ParseMountInfo reads /proc/<pid>/mountinfo (proc(5)): for each line the
// device number, the mount point (octal escapes undone), the filesystem
// type and the source.
func ParseMountInfo(r io.Reader) ([]Mount, error) {
	var out []Mount
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		if strings.TrimSpace(text) == "" {
			continue
		}
		f := strings.Fields(text)
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if len(f) < 7 || sep < 0 || sep+2 >= len(f) {
			return nil, fmt.Errorf("mountinfo line %d: %q has not the 10 or more fields of proc(5)", line, text)
		}
		majs, mins, ok := strings.Cut(f[2], ":")
		maj, err1 := strconv.ParseUint(majs, 10, 32)
		min, err2 := strconv.ParseUint(mins, 10, 32)
		if !ok || err1 != nil || err2 != nil {
			return nil, fmt.Errorf("mountinfo line %d: device %q is not major:minor", line, f[2])
		}
		out = append(out, Mount{
			Major: uint32(maj), Minor: uint32(min),
			MountPoint: unescapeMount(f[4]),
			FSType:     f[sep+1],
			Source:     unescapeMount(f[sep+2]),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// unescapeMount undoes the kernel's \ooo escapes of space, tab, newline
// and backslash.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Target is what image write knows of a device before touching it.
type Target struct {
	// Path is the device as given; Name its kernel name (sdb).
	Path, Name string
	// Partition is set when the device is a partition of Parent.
	Partition bool
	Parent    string
	Removable bool
	ReadOnly  bool
	Size      int64
	// Transport is the bus (usb, sata, nvme...) as go-blockdevice reports it.
	Transport string
	// Mounts are the mounts of the device or its partitions.
	Mounts []Mount
	// InUse lists other uses of the device or its partitions: swap,
	// holders (device-mapper, RAID).
	InUse []string
	// SystemDisks are the kernel names of the disks backing /.
	SystemDisks []string
	// RootKnown is false when the disk backing / could not be found (a
	// root on a network or overlay filesystem); then no disk is one.
	RootKnown bool
}

// CheckTarget decides whether an image of imageSize bytes (negative:
// unknown yet) may be written to t. It refuses, in this order, the disk
// holding the running system, a partition, a read-only device, a device
// in use (mounted, swap, held), a device too small, and, unless force, a
// device that is not removable. The message says what was found.
func CheckTarget(t Target, imageSize int64, force bool) error {
	for _, s := range t.SystemDisks {
		if s == t.Name || (t.Partition && s == t.Parent) {
			return fmt.Errorf("%s: %w: the root filesystem lives on %s; refusing to overwrite it", t.Path, ErrSystemDisk, s)
		}
	}
	if t.Partition {
		return fmt.Errorf("%s: %w: write the image to the whole disk /dev/%s", t.Path, ErrNotWholeDisk, t.Parent)
	}
	if t.ReadOnly {
		return fmt.Errorf("%s: %w (write-protect switch?)", t.Path, ErrReadOnly)
	}
	if len(t.Mounts) > 0 {
		var ms []string
		for _, m := range t.Mounts {
			ms = append(ms, fmt.Sprintf("%s on %s (%s)", m.Source, m.MountPoint, m.FSType))
		}
		return fmt.Errorf("%s: %w: mounted: %s; unmount it first", t.Path, ErrMounted, strings.Join(ms, ", "))
	}
	if len(t.InUse) > 0 {
		return fmt.Errorf("%s: %w: %s", t.Path, ErrMounted, strings.Join(t.InUse, ", "))
	}
	if imageSize >= 0 && imageSize > t.Size {
		return fmt.Errorf("%s: %w: the image has %d bytes, the device %d", t.Path, ErrTooSmall, imageSize, t.Size)
	}
	if !t.Removable && !force {
		tr := t.Transport
		if tr == "" {
			tr = "unknown"
		}
		return fmt.Errorf("%s: %w (/sys/block/%s/removable is 0, transport %s, %d bytes): if this really is the stick to overwrite, pass --force",
			t.Path, ErrNotRemovable, t.Name, tr, t.Size)
	}
	return nil
}

// WriteOptions configure WriteImage.
type WriteOptions struct {
	// Force allows a device that is not marked removable. Nothing else is
	// ever overridden.
	Force bool
	// Progress shows the write and the read-back (default: nothing).
	Progress Progress
	// Log receives what was decided (default: discard).
	Log *slog.Logger
}

// WriteResult describes a finished write.
type WriteResult struct {
	Device string
	Bytes  int64
	SHA256 string
	Took   time.Duration
}

func (o *WriteOptions) defaults() {
	if o.Progress == nil {
		o.Progress = quietProgress{}
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}
