//go:build linux

package imager

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/siderolabs/go-blockdevice/v2/block"
	"golang.org/x/sys/unix"
)

// InspectTarget gathers what CheckTarget needs about device, without
// opening it for writing. From sysfs and procfs first, without opening the
// device at all: its kernel name and whether it is a partition, the disks
// backing / (the device of the root mount, followed through partitions
// and device-mapper/RAID slaves to whole disks), the mounts of it and its
// partitions (/proc/self/mountinfo), swap, holders, the removable flag. A
// device that holds the running system is returned then, unopened. Then
// go-blockdevice looks at the device: size, read-only flag, transport.
func InspectTarget(device string) (Target, error) {
	t := Target{Path: device}
	var st unix.Stat_t
	if err := unix.Stat(device, &st); err != nil {
		return t, fmt.Errorf("inspect %s: %w", device, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return t, fmt.Errorf("inspect %s: %w (image write writes whole disks such as /dev/sdb)", device, ErrNotBlockDevice)
	}
	maj, mnr := unix.Major(st.Rdev), unix.Minor(st.Rdev)
	name, parent, err := sysBlockName(maj, mnr)
	if err != nil {
		return t, fmt.Errorf("inspect %s: %w", device, err)
	}
	t.Name, t.Parent, t.Partition = name, parent, parent != ""
	disk := name
	if t.Partition {
		disk = parent
	}
	t.Removable = readSys(filepath.Join("/sys/block", disk, "removable")) == "1"

	mounts, err := readMountInfo()
	if err != nil {
		return t, fmt.Errorf("inspect %s: %w", device, err)
	}
	for _, m := range mounts {
		if m.MountPoint != "/" {
			continue
		}
		if disks, err := backingDisks(m.Major, m.Minor, 0); err == nil && len(disks) > 0 {
			t.SystemDisks = append(t.SystemDisks, disks...)
			t.RootKnown = true
		}
	}

	// The device and its partitions, as major:minor.
	devs := map[[2]uint32]string{{maj, mnr}: name}
	parts, _ := filepath.Glob(filepath.Join("/sys/block", name, name+"*", "partition"))
	for _, p := range parts {
		pdir := filepath.Dir(p)
		if m, n, ok := parseDevNo(readSys(filepath.Join(pdir, "dev"))); ok {
			devs[[2]uint32{m, n}] = filepath.Base(pdir)
		}
	}
	for _, m := range mounts {
		if _, ok := devs[[2]uint32{m.Major, m.Minor}]; ok {
			t.Mounts = append(t.Mounts, m)
		}
	}
	for key, n := range devs {
		if holders, _ := os.ReadDir(filepath.Join(sysDevDir(key[0], key[1]), "holders")); len(holders) > 0 {
			var hs []string
			for _, h := range holders {
				hs = append(hs, h.Name())
			}
			t.InUse = append(t.InUse, fmt.Sprintf("%s is held by %s", n, strings.Join(hs, ", ")))
		}
	}
	t.InUse = append(t.InUse, swapsOn(devs)...)
	if err := CheckTarget(t, -1, true); errors.Is(err, ErrSystemDisk) {
		return t, nil // never open the system disk
	}

	dev, err := block.NewFromPath(device)
	if err != nil {
		return t, fmt.Errorf("inspect %s: %w", device, err)
	}
	defer dev.Close()
	size, err := dev.GetSize()
	if err != nil {
		return t, fmt.Errorf("inspect %s: size: %w", device, err)
	}
	t.Size = int64(size)
	if t.ReadOnly, err = dev.IsReadOnly(); err != nil {
		return t, fmt.Errorf("inspect %s: read-only flag: %w", device, err)
	}
	if whole, err := dev.IsWholeDisk(); err == nil && !whole {
		t.Partition = true
	}
	if props, err := dev.GetProperties(); err == nil {
		t.Transport = props.Transport
	}
	return t, nil
}

// sysDevDir is the sysfs directory of a block device number.
func sysDevDir(maj, min uint32) string {
	return fmt.Sprintf("/sys/dev/block/%d:%d", maj, min)
}

// sysBlockName returns the kernel name of a block device and, for a
// partition, its disk's name.
func sysBlockName(maj, min uint32) (name, parent string, err error) {
	link, err := filepath.EvalSymlinks(sysDevDir(maj, min))
	if err != nil {
		return "", "", fmt.Errorf("no sysfs entry for block device %d:%d: %w", maj, min, err)
	}
	name = filepath.Base(link)
	if _, err := os.Stat(filepath.Join(link, "partition")); err == nil {
		parent = filepath.Base(filepath.Dir(link))
	}
	return name, parent, nil
}

// backingDisks returns the whole disks under a block device: the disk of a
// partition, the slaves of a device-mapper or RAID device, recursively.
func backingDisks(maj, min uint32, depth int) ([]string, error) {
	if depth > 8 {
		return nil, errors.New("block device stack too deep")
	}
	name, parent, err := sysBlockName(maj, min)
	if err != nil {
		return nil, err
	}
	if parent != "" {
		return []string{parent}, nil
	}
	slaves, _ := os.ReadDir(filepath.Join(sysDevDir(maj, min), "slaves"))
	if len(slaves) == 0 {
		return []string{name}, nil
	}
	var out []string
	for _, s := range slaves {
		m, n, ok := parseDevNo(readSys(filepath.Join("/sys/class/block", s.Name(), "dev")))
		if !ok {
			continue
		}
		d, err := backingDisks(m, n, depth+1)
		if err != nil {
			return nil, err
		}
		out = append(out, d...)
	}
	return out, nil
}

// swapsOn lists the swap areas of /proc/swaps on the given devices.
func swapsOn(devs map[[2]uint32]string) []string {
	data, err := os.ReadFile("/proc/swaps")
	if err != nil {
		return nil
	}
	var out []string
	for i, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if i == 0 || len(f) == 0 {
			continue
		}
		var st unix.Stat_t
		if unix.Stat(f[0], &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFBLK {
			continue
		}
		if n, ok := devs[[2]uint32{unix.Major(st.Rdev), unix.Minor(st.Rdev)}]; ok {
			out = append(out, fmt.Sprintf("%s is swap (%s)", n, f[0]))
		}
	}
	return out
}

func readMountInfo() ([]Mount, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mounts: %w", err)
	}
	defer f.Close()
	return ParseMountInfo(f)
}

func readSys(p string) string {
	b, err := os.ReadFile(p)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func parseDevNo(s string) (uint32, uint32, bool) {
	a, b, ok := strings.Cut(s, ":")
	maj, err1 := strconv.ParseUint(a, 10, 32)
	min, err2 := strconv.ParseUint(b, 10, 32)
	return uint32(maj), uint32(min), ok && err1 == nil && err2 == nil
}

// WriteImage writes the image file to the whole-disk block device: it
// inspects and checks the device first (CheckTarget: never the disk holding
// /, never a mounted or otherwise used device, never a partition; a device
// not marked removable only with Force), then opens it exclusively (O_EXCL:
// the kernel refuses a device in use) and writes the image in 4 MiB chunks
// (no O_DIRECT), fsyncs, drops the device's page cache and reads the image's
// length back, comparing sha256 sums.
func WriteImage(ctx context.Context, image, device string, o WriteOptions) (*WriteResult, error) {
	o.defaults()
	start := time.Now()
	t, err := InspectTarget(device)
	if err != nil {
		return nil, fmt.Errorf("image write: %w", err)
	}
	if err := CheckTarget(t, -1, o.Force); err != nil {
		return nil, fmt.Errorf("image write: %w", err)
	}
	in, err := os.Open(image)
	if err != nil {
		return nil, fmt.Errorf("image write: %w", err)
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return nil, fmt.Errorf("image write: %w", err)
	}
	if !st.Mode().IsRegular() || st.Size() == 0 {
		return nil, fmt.Errorf("image write: %s is not a non-empty regular file", image)
	}
	size := st.Size()
	if err := CheckTarget(t, size, o.Force); err != nil {
		return nil, fmt.Errorf("image write: %w", err)
	}
	o.Log.Info("writing image", "image", image, "device", device, "name", t.Name, "bytes", size, "device_bytes", t.Size, "removable", t.Removable, "transport", t.Transport)

	dev, err := block.NewFromPath(device, block.OpenForWrite(), block.OpenAssertNotMounted())
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil, fmt.Errorf("image write: %s: %w: the kernel reports it busy (mounted or held)", device, ErrMounted)
		}
		return nil, fmt.Errorf("image write: open %s: %w", device, err)
	}
	defer dev.Close()
	if err := dev.TryLock(true); err != nil {
		return nil, fmt.Errorf("image write: %s is locked by another program: %w", device, err)
	}
	out := dev.File()

	h := sha256.New()
	buf := make([]byte, WriteChunk)
	o.Progress.Begin("write "+t.Name, 0, size)
	var written int64
	for written < size {
		if err := ctx.Err(); err != nil {
			o.Progress.End(err)
			return nil, fmt.Errorf("image write: interrupted after %d of %d bytes (the device holds a partial image): %w", written, size, err)
		}
		n, err := io.ReadFull(in, buf[:min(int64(len(buf)), size-written)])
		if err != nil {
			o.Progress.End(err)
			return nil, fmt.Errorf("image write: read %s: %w", image, err)
		}
		h.Write(buf[:n])
		if _, err := out.WriteAt(buf[:n], written); err != nil {
			o.Progress.End(err)
			return nil, fmt.Errorf("image write: write %s at %d: %w", device, written, err)
		}
		written += int64(n)
		o.Progress.Advance(n)
	}
	if err := out.Sync(); err != nil {
		o.Progress.End(err)
		return nil, fmt.Errorf("image write: fsync %s: %w", device, err)
	}
	o.Progress.End(nil)
	sum := hex.EncodeToString(h.Sum(nil))

	// Read back from the device, not from the page cache.
	_ = unix.IoctlSetInt(int(out.Fd()), unix.BLKFLSBUF, 0)
	_ = unix.Fadvise(int(out.Fd()), 0, 0, unix.FADV_DONTNEED)
	back, err := os.Open(device)
	if err != nil {
		return nil, fmt.Errorf("image write: reopen %s to verify: %w", device, err)
	}
	defer back.Close()
	_ = unix.Fadvise(int(back.Fd()), 0, 0, unix.FADV_DONTNEED)
	rh := sha256.New()
	o.Progress.Begin("verify "+t.Name, 0, size)
	n, err := io.CopyBuffer(io.MultiWriter(rh, advancer{o.Progress}), onlyReader{io.LimitReader(back, size)}, buf)
	o.Progress.End(err)
	if err != nil {
		return nil, fmt.Errorf("image write: read back %s: %w", device, err)
	}
	got := hex.EncodeToString(rh.Sum(nil))
	if n != size || got != sum {
		return nil, fmt.Errorf("image write: %s: %w: read %d bytes with sha256 %s, wrote %d with %s (a failing stick?)", device, ErrVerify, n, got, size, sum)
	}
	res := &WriteResult{Device: device, Bytes: size, SHA256: sum, Took: time.Since(start)}
	o.Log.Info("image written and verified", "device", device, "bytes", size, "sha256", sum, "took", res.Took.Round(time.Millisecond))
	return res, nil
}
