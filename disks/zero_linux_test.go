package disks_test

// ZeroDevice on a real block device: a loop device over a sparse 12 GiB
// image seeded by diskstest (GPT, ext4, bluestore labels at 0, 1 GiB and
// 10 GiB). A loop device has no serial: its identity is its backing file
// (/sys/dev/block/M:m/loop/backing_file), so the "serial" given here is the
// image's path. Needs root (losetup); CI runs as root.

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/dotfile/rackboot/disks"
	"github.com/dotfile/rackboot/disks/diskstest"
)

func TestZeroDeviceLoop(t *testing.T) {
	const size = 12<<30 + 8<<20
	img := filepath.Join(t.TempDir(), "old-osd.img")
	diskstest.Seed(t, img, size, true, 0, 1<<30, 10<<30)
	// Markers just outside the plan's ranges, and inside the ext4 data.
	markers := []int64{1<<20 + 1<<20 + 4096, 1<<30 + 4096, 1<<20 + 1<<30 + 4096, 10<<30 + 4096, 30 << 20, size - 1<<20 - 512}
	marker := []byte("rackboot marker: must survive")
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range markers {
		if _, err := f.WriteAt(marker, off); err != nil {
			t.Fatal(err)
		}
	}
	f.Close()
	dev := diskstest.LoopDevice(t, img)
	cbt := diskstest.Tool(t, "ceph-bluestore-tool", "ceph-osd")
	wipefs := diskstest.Tool(t, "wipefs", "util-linux")
	blkid := diskstest.Tool(t, "blkid", "util-linux")
	if out, err := exec.Command(cbt, "show-label", "--dev", dev).CombinedOutput(); err != nil {
		t.Fatalf("before: ceph-bluestore-tool reads no label on %s: %v\n%s", dev, err, out)
	}
	plan := disks.WipePlan(size)

	// Refusals, with nothing written.
	if _, err := disks.ZeroDevice(disks.ZeroOptions{Device: dev, Serial: "WD-SOMETHING-ELSE", Ranges: plan}); err == nil ||
		!strings.Contains(err.Error(), `is not the disk with serial "WD-SOMETHING-ELSE"`) || !strings.Contains(err.Error(), img) {
		t.Errorf("wrong serial: %v", err)
	}
	if _, err := disks.ZeroDevice(disks.ZeroOptions{Device: dev, Serial: img, Size: size + 4096, Ranges: plan}); err == nil ||
		!strings.Contains(err.Error(), "not the 12893294592 expected") {
		t.Errorf("wrong size: %v", err)
	}
	if _, err := disks.ZeroDevice(disks.ZeroOptions{Device: img, Serial: img, Ranges: plan}); err == nil ||
		!strings.Contains(err.Error(), "not a block device") {
		t.Errorf("a regular file: %v", err)
	}
	held, err := unix.Open(dev, unix.O_RDONLY|unix.O_EXCL, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = disks.ZeroDevice(disks.ZeroOptions{Device: dev, Serial: img, Ranges: plan})
	unix.Close(held)
	if err == nil || !strings.Contains(err.Error(), "is in use") {
		t.Errorf("a device held exclusively by another: %v", err)
	}
	if n := len(diskstest.Inspect(t, img).Labels()); n != 3 {
		t.Fatalf("after refusals the image holds %d labels, want the 3 seeded", n)
	}

	rep, err := disks.ZeroDevice(disks.ZeroOptions{Device: dev, Serial: img, Size: size, Ranges: plan})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("zeroed %d bytes in %d ranges on %s (identity: %s): %+v", rep.Bytes, len(rep.Ranges), dev, rep.Identity, rep.Ranges)
	for _, r := range rep.Ranges {
		t.Logf("%s: %s", r.Range, r.How)
	}
	if rep.Identity != "loop backing file" || len(rep.Ranges) != len(plan) || rep.Size != size {
		t.Errorf("report %+v", rep)
	}

	if out, err := exec.Command(cbt, "show-label", "--dev", dev).CombinedOutput(); err == nil {
		t.Errorf("ceph-bluestore-tool still reads a label:\n%s", out)
	}
	if out, _ := exec.Command(wipefs, "-n", dev).CombinedOutput(); len(bytes.TrimSpace(out)) != 0 {
		t.Errorf("wipefs -n still sees:\n%s", out)
	}
	for _, off := range []string{"0", "1073741824", "10737418240"} {
		if out, err := exec.Command(blkid, "-p", "-O", off, dev).CombinedOutput(); err == nil {
			t.Errorf("blkid -p -O %s still finds: %s", off, out)
		}
	}
	if r := diskstest.Inspect(t, img); !r.Clean() {
		t.Errorf("Inspect after zeroing: %s", r.Summary())
	}
	f, err = os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, off := range markers {
		got := make([]byte, len(marker))
		if _, err := f.ReadAt(got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, marker) {
			t.Errorf("marker at %d changed: %q", off, got)
		}
	}
}

// TestZeroDeviceWWID: a disk Talos reports no serial for (a SATA disk on
// AHCI) is named by its WWID, which go-blockdevice reads from sysfs
// (<dev>/wwid, else <dev>/device/wwid). A loop device has no WWID, so the
// device is a real loop device and the sysfs it is checked against a tree
// written here with that device's numbers: the WWID libata gives a SATA
// disk at device/wwid, and the loop's backing file.
func TestZeroDeviceWWID(t *testing.T) {
	const size = 8 << 20
	const wwid = "t10.ATA     WDC WD40EFRX-68N32N0                    WD-WCC7K4NLX3JT"
	img := filepath.Join(t.TempDir(), "sata.img")
	diskstest.Seed(t, img, size, false, 0)
	dev := diskstest.LoopDevice(t, img)
	var st unix.Stat_t
	if err := unix.Stat(dev, &st); err != nil {
		t.Fatal(err)
	}
	sys := t.TempDir()
	blk := filepath.Join(sys, "dev", "block", fmt.Sprintf("%d:%d", unix.Major(st.Rdev), unix.Minor(st.Rdev)))
	for p, v := range map[string]string{"device/wwid": wwid + "\n", "loop/backing_file": img + "\n"} {
		if err := os.MkdirAll(filepath.Dir(filepath.Join(blk, p)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(blk, p), []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	plan := disks.WipePlan(size)
	opts := func(serial, w string) disks.ZeroOptions {
		return disks.ZeroOptions{Device: dev, Serial: serial, WWID: w, Size: size, Ranges: plan, SysRoot: sys, DevRoot: t.TempDir()}
	}
	for _, tc := range []struct {
		name         string
		serial, wwid string
		want         string
	}{
		{"another WWID", "", "t10.ATA     WDC WD40EFRX-68N32N0                    WD-OTHER", `is not the disk with WWID "t10.ATA     WDC WD40EFRX-68N32N0                    WD-OTHER": its identities are "` + img + `" (loop backing file), "` + wwid + `" (sysfs wwid)`},
		// Each kind is checked against its own: the backing file is no WWID,
		// the WWID no serial.
		{"the backing file as a WWID", "", img, "is not the disk with WWID"},
		{"the WWID as a serial", wwid, "", "is not the disk with serial"},
		{"both", img, wwid, "not both"},
		{"neither", "", "", "not both"},
	} {
		if _, err := disks.ZeroDevice(opts(tc.serial, tc.wwid)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.name, err, tc.want)
		}
	}
	if n := len(diskstest.Inspect(t, img).Labels()); n != 1 {
		t.Fatalf("after refusals the image holds %d labels, want the one seeded", n)
	}
	rep, err := disks.ZeroDevice(opts("", wwid))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Identity != disks.WWIDIdentity || !diskstest.Inspect(t, img).Clean() {
		t.Errorf("zeroed by %q, image now %s; want by %q and nothing left", rep.Identity, diskstest.Inspect(t, img).Summary(), disks.WWIDIdentity)
	}
}
