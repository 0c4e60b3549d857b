package disks

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ZeroOptions says which device ZeroDevice zeroes, what it must be, and
// where.
type ZeroOptions struct {
	// Device is the block device, e.g. /dev/sda (in the Job: the node's
	// /dev mounted at /host/dev).
	Device string
	// Serial is the disk's identity as Talos reports it (Disk.Serial);
	// for a loop device, which has none, its backing file. The device
	// must have it (see Identities) or nothing is written.
	Serial string
	// WWID names a disk Talos reports no serial for (Disk.WWID: an AHCI
	// SATA disk); the device's sysfs wwid must be it. Give Serial or
	// WWID, not both.
	WWID string
	// Size, when not 0, is the size in bytes the device must have.
	Size int64
	// Ranges to zero; each must lie within the device.
	Ranges []Range
	// SysRoot is where sysfs is (default /sys); DevRoot where the node's
	// /dev is, for its disk/by-id links (default: Device's directory).
	SysRoot, DevRoot string
}

// ZeroReport says what ZeroDevice did.
type ZeroReport struct {
	Device   string
	Identity string // which identity matched Serial: "sysfs serial", "by-id ata-...", "loop backing file"
	Size     int64
	Ranges   []ZeroedRange
	Bytes    int64
}

// ZeroedRange is one range zeroed, how, and that it read back as zeros.
type ZeroedRange struct {
	Range
	How string // "BLKZEROOUT" or "write"
}

// WWIDIdentity is Identity.From for the device's WWID, the one identity
// ZeroOptions.WWID is checked against.
const WWIDIdentity = "sysfs wwid"

// Identity is one way a block device names itself.
type Identity struct {
	Value string
	From  string
}

// Identities reads what names the block device with device number rdev:
// the serial go-blockdevice reads for Talos (GetProperties:
// <sys>/serial, else <sys>/device/serial); the names of
// <devRoot>/disk/by-id links that resolve to it, less their bus prefix
// ("ata-", "scsi-", "nvme-", "virtio-": udev writes ID_SERIAL after it,
// which is what Talos reports for SATA and SCSI disks through ata_id and
// scsi_id); for a loop device, its backing file; and the WWID
// go-blockdevice reads for Talos's Disk.WWID (<sys>/wwid, else
// <sys>/device/wwid: for a SATA disk the T10 identifier libata builds from
// the drive's model and serial, "t10.ATA     <model> <serial>").
func Identities(sysRoot, devRoot string, rdev uint64) []Identity {
	sys := filepath.Join(sysRoot, "dev", "block", fmt.Sprintf("%d:%d", unix.Major(rdev), unix.Minor(rdev)))
	var out []Identity
	read := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			return ""
		}
		return string(bytes.TrimSpace(b))
	}
	if s := read(filepath.Join(sys, "serial")); s != "" {
		out = append(out, Identity{s, "sysfs serial"})
	} else if s := read(filepath.Join(sys, "device", "serial")); s != "" {
		out = append(out, Identity{s, "sysfs device/serial"})
	}
	if s := read(filepath.Join(sys, "loop", "backing_file")); s != "" {
		out = append(out, Identity{s, "loop backing file"})
	}
	if s := read(filepath.Join(sys, "wwid")); s != "" {
		out = append(out, Identity{s, WWIDIdentity})
	} else if s := read(filepath.Join(sys, "device", "wwid")); s != "" {
		out = append(out, Identity{s, WWIDIdentity})
	}
	byID := filepath.Join(devRoot, "disk", "by-id")
	ents, _ := os.ReadDir(byID)
	for _, e := range ents {
		var st unix.Stat_t
		if unix.Stat(filepath.Join(byID, e.Name()), &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK || st.Rdev != rdev {
			continue
		}
		if bus, serial, ok := strings.Cut(e.Name(), "-"); ok && serial != "" {
			out = append(out, Identity{serial, "by-id " + bus + "-"})
		}
	}
	return out
}

// ZeroDevice zeroes ranges of a block device after checking it is the
// disk meant: it opens the device exclusively (O_EXCL: refused while it
// or a partition of it is mounted or held by LVM, md or a running OSD),
// checks it is a block device with identity Serial or WWID (Identities) and,
// when given, Size; only then writes. Each range is zeroed with
// BLKZEROOUT when its ends are aligned to the logical block size, else
// (or when the device refuses BLKZEROOUT) with writes of zeros; then the
// device is fsynced and every range read back and checked to be zeros.
func ZeroDevice(o ZeroOptions) (ZeroReport, error) {
	rep := ZeroReport{Device: o.Device}
	if (o.Serial == "") == (o.WWID == "") {
		return rep, errors.New("give the disk's serial or, for a disk without one, its WWID (not both): the disk to zero is named as `rackboot disks` lists it")
	}
	what, want := "serial", o.Serial
	if o.WWID != "" {
		what, want = "WWID", o.WWID
	}
	if o.SysRoot == "" {
		o.SysRoot = "/sys"
	}
	if o.DevRoot == "" {
		o.DevRoot = filepath.Dir(o.Device)
	}
	fd, err := unix.Open(o.Device, unix.O_RDWR|unix.O_EXCL|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return rep, fmt.Errorf("%s is in use (mounted, or held by LVM, md or a running Ceph OSD): nothing was written: %w", o.Device, err)
		}
		return rep, fmt.Errorf("open %s: %w", o.Device, err)
	}
	f := os.NewFile(uintptr(fd), o.Device)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return rep, fmt.Errorf("stat %s: %w", o.Device, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return rep, fmt.Errorf("%s is not a block device: nothing was written", o.Device)
	}
	ids := Identities(o.SysRoot, o.DevRoot, st.Rdev)
	i := slices.IndexFunc(ids, func(id Identity) bool {
		// A WWID is checked against the WWID only, a serial against the rest.
		return id.Value == want && (id.From == WWIDIdentity) == (o.WWID != "")
	})
	if i < 0 {
		var have []string
		for _, id := range ids {
			have = append(have, fmt.Sprintf("%q (%s)", id.Value, id.From))
		}
		if len(have) == 0 {
			have = []string{"none readable"}
		}
		return rep, fmt.Errorf("%s is not the disk with %s %q: its identities are %s; nothing was written", o.Device, what, want, strings.Join(have, ", "))
	}
	rep.Identity = ids[i].From
	var size uint64
	if err := ioctlPtr(fd, unix.BLKGETSIZE64, unsafe.Pointer(&size)); err != nil {
		return rep, fmt.Errorf("size of %s: %w", o.Device, err)
	}
	rep.Size = int64(size)
	if o.Size != 0 && rep.Size != o.Size {
		return rep, fmt.Errorf("%s holds %d bytes, not the %d expected of %s %s: nothing was written", o.Device, rep.Size, o.Size, what, want)
	}
	for _, r := range o.Ranges {
		if r.Offset < 0 || r.Length <= 0 || r.End() > rep.Size {
			return rep, fmt.Errorf("range %d+%d is not within %s (%d bytes): nothing was written", r.Offset, r.Length, o.Device, rep.Size)
		}
	}
	sector, err := unix.IoctlGetInt(fd, unix.BLKSSZGET)
	if err != nil || sector <= 0 {
		sector = 512
	}
	for _, r := range o.Ranges {
		how, err := zeroRange(f, fd, r, int64(sector))
		if err != nil {
			return rep, fmt.Errorf("zero %s of %s: %w", r, o.Device, err)
		}
		rep.Ranges = append(rep.Ranges, ZeroedRange{Range: r, How: how})
		rep.Bytes += r.Length
	}
	if err := f.Sync(); err != nil {
		return rep, fmt.Errorf("fsync %s: %w", o.Device, err)
	}
	// Drop the device's page cache so the read-back comes from the disk.
	_ = unix.IoctlSetInt(fd, unix.BLKFLSBUF, 0)
	for _, r := range o.Ranges {
		if err := checkZeros(f, r); err != nil {
			return rep, fmt.Errorf("read back %s of %s: %w", r, o.Device, err)
		}
	}
	return rep, nil
}

func zeroRange(f *os.File, fd int, r Range, sector int64) (string, error) {
	if r.Offset%sector == 0 && r.Length%sector == 0 {
		arg := [2]uint64{uint64(r.Offset), uint64(r.Length)}
		err := ioctlPtr(fd, unix.BLKZEROOUT, unsafe.Pointer(&arg[0]))
		if err == nil {
			return "BLKZEROOUT", nil
		}
		if !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOTTY) {
			return "", fmt.Errorf("BLKZEROOUT: %w", err)
		}
	}
	zero := make([]byte, min(r.Length, 1<<20))
	for off := r.Offset; off < r.End(); {
		n := min(int64(len(zero)), r.End()-off)
		if _, err := f.WriteAt(zero[:n], off); err != nil {
			return "", err
		}
		off += n
	}
	return "write", nil
}

func checkZeros(f *os.File, r Range) error {
	buf := make([]byte, min(r.Length, 1<<20))
	for off := r.Offset; off < r.End(); {
		n := min(int64(len(buf)), r.End()-off)
		if _, err := f.ReadAt(buf[:n], off); err != nil {
			return err
		}
		if i := slices.IndexFunc(buf[:n], func(b byte) bool { return b != 0 }); i >= 0 {
			return fmt.Errorf("byte %d is not zero after the write", off+int64(i))
		}
		off += n
	}
	return nil
}

func ioctlPtr(fd int, req uint, arg unsafe.Pointer) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(req), uintptr(arg))
	if e != 0 {
		return e
	}
	return nil
}
