//go:build linux

package imager

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// needRoot fails (never skips) when the test cannot manage loop devices.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test attaches loop devices and mounts them: run it as root")
	}
	needTool(t, "losetup", "mount")
}

// loopDevice attaches file to a free loop device (with partition scanning
// when partscan) and detaches it when the test ends.
func loopDevice(t *testing.T, file string, partscan bool) string {
	t.Helper()
	args := []string{"-f", "--show"}
	if partscan {
		args = append(args, "-P")
	}
	dev := strings.TrimSpace(run(t, "losetup", append(args, file)...))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v %s", dev, err, out)
		}
	})
	return dev
}

// waitFor waits for a device node the kernel creates asynchronously.
func waitFor(t *testing.T, p string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(p); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear", p)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// usbTestImage builds a small USB image to write.
func usbTestImage(t *testing.T) string {
	t.Helper()
	kernel, initrd := fakeBootFiles(t, 2<<20)
	out := filepath.Join(t.TempDir(), "cp1.img")
	if _, err := testBuilder(t).USB(context.Background(), testSpec(t, kernel, initrd), out); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestWriteToLoopDevice writes a USB image to a loop device: refused as not
// removable without --force, written and verified with it, and the device
// then holds the image (checked with cmp and sgdisk).
func TestWriteToLoopDevice(t *testing.T) {
	needRoot(t)
	img := usbTestImage(t)
	backing := filepath.Join(t.TempDir(), "stick")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, 64<<20); err != nil {
		t.Fatal(err)
	}
	dev := loopDevice(t, backing, false)

	_, err := WriteImage(context.Background(), img, dev, WriteOptions{})
	if !errors.Is(err, ErrNotRemovable) || !strings.Contains(err.Error(), "--force") {
		t.Fatalf("WriteImage to a non-removable loop device = %v, want ErrNotRemovable naming --force", err)
	}
	p := &countProgress{}
	res, err := WriteImage(context.Background(), img, dev, WriteOptions{Force: true, Progress: p})
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(img)
	if res.Bytes != st.Size() || p.advanced != 2*st.Size() || p.begun != 2 {
		t.Errorf("wrote %d bytes, progress saw %d in %d steps; image has %d", res.Bytes, p.advanced, p.begun, st.Size())
	}
	run(t, "cmp", "-n", itoa(st.Size()), img, dev)
	if out := run(t, "sgdisk", "-p", dev); !strings.Contains(out, "metal-iso") {
		t.Errorf("sgdisk -p %s:\n%s", dev, out)
	}

	// Too small: a 16 MiB device for a larger image.
	small := filepath.Join(t.TempDir(), "small")
	os.WriteFile(small, nil, 0o600)
	os.Truncate(small, 16<<20)
	sdev := loopDevice(t, small, false)
	if _, err := WriteImage(context.Background(), img, sdev, WriteOptions{Force: true}); !errors.Is(err, ErrTooSmall) {
		t.Errorf("WriteImage to a 16 MiB device = %v, want ErrTooSmall", err)
	}
	// A regular file is not a device.
	if _, err := WriteImage(context.Background(), img, backing, WriteOptions{Force: true}); !errors.Is(err, ErrNotBlockDevice) {
		t.Errorf("WriteImage to a regular file = %v, want ErrNotBlockDevice", err)
	}
}

// TestWriteRefusesMountedPartition: with one partition of the loop device
// mounted, the write is refused (even with --force) and nothing changes.
// The partition gets an ext4 filesystem: the host kernel may have no vfat.
func TestWriteRefusesMountedPartition(t *testing.T) {
	needRoot(t)
	needTool(t, "mkfs.ext4", "e2fsprogs")
	needTool(t, "partx", "util-linux")
	img := usbTestImage(t)
	backing := filepath.Join(t.TempDir(), "stick")
	run(t, "cp", img, backing)
	dev := loopDevice(t, backing, true)
	part := dev + "p2"
	if _, err := os.Stat(filepath.Join("/sys/block", filepath.Base(dev), filepath.Base(part))); err != nil {
		// A kernel without GPT parsing (CONFIG_EFI_PARTITION off): add
		// the partitions from user space.
		run(t, "partx", "-a", dev)
	}
	waitFor(t, part)
	run(t, "mkfs.ext4", "-q", "-F", part)
	mnt := t.TempDir()
	run(t, "mount", "-o", "ro", part, mnt)
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v %s", mnt, err, out)
		}
	})
	before := run(t, "sha256sum", backing)
	other := filepath.Join(t.TempDir(), "other.img")
	os.WriteFile(other, []byte(strings.Repeat("x", 4096)), 0o600)
	_, err := WriteImage(context.Background(), other, dev, WriteOptions{Force: true})
	if !errors.Is(err, ErrMounted) || !strings.Contains(err.Error(), part) || !strings.Contains(err.Error(), mnt) {
		t.Fatalf("WriteImage to %s with %s mounted = %v, want ErrMounted naming %s and %s", dev, part, err, part, mnt)
	}
	t.Logf("refused: %v", err)
	if _, err := WriteImage(context.Background(), other, part, WriteOptions{Force: true}); !errors.Is(err, ErrNotWholeDisk) {
		t.Errorf("WriteImage to partition %s = %v, want ErrNotWholeDisk", part, err)
	}
	if after := run(t, "sha256sum", backing); after != before {
		t.Error("the refused write changed the device")
	}
}

// TestWriteRefusesRootDisk: the disk holding / is refused before the image
// is even opened (the image path does not exist, so a check that let the
// write through would fail differently and touch nothing).
func TestWriteRefusesRootDisk(t *testing.T) {
	needRoot(t)
	needTool(t, "findmnt", "util-linux")
	src := strings.TrimSpace(run(t, "findmnt", "-n", "-o", "SOURCE", "/"))
	if !strings.HasPrefix(src, "/dev/") {
		t.Fatalf("the root filesystem comes from %q, not a block device: this test needs a machine whose / is on a disk", src)
	}
	disk := src
	if pk := strings.TrimSpace(run(t, "lsblk", "-n", "-d", "-o", "PKNAME", src)); pk != "" {
		disk = "/dev/" + pk
	}
	for _, dev := range []string{disk, src} {
		_, err := WriteImage(context.Background(), "/nonexistent/rackboot-test.img", dev, WriteOptions{Force: true})
		if !errors.Is(err, ErrSystemDisk) {
			t.Fatalf("WriteImage to the root disk %s = %v, want ErrSystemDisk", dev, err)
		}
		t.Logf("refused: %v", err)
	}
	tg, err := InspectTarget(disk)
	if err != nil {
		t.Fatal(err)
	}
	if !tg.RootKnown || len(tg.Mounts) == 0 {
		t.Errorf("InspectTarget(%s) = %+v: the root mount should be seen", disk, tg)
	}
}

type countProgress struct {
	begun    int
	advanced int64
}

func (p *countProgress) Begin(string, int64, int64) { p.begun++ }
func (p *countProgress) Advance(n int)              { p.advanced += int64(n) }
func (p *countProgress) End(error)                  {}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
