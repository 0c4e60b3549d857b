// Package diskstest makes disk images for tests: sparse files with a GPT
// (sgdisk), an ext4 partition (mkfs.ext4) and Ceph bluestore labels (the
// disks package's encoder), as a stale Ceph disk from an old server holds.
// A missing tool fails the test with the Debian package to install.
package diskstest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/dotfile/rackboot/disks"
)

// Partition 1 of a seeded image: 1 MiB, 64 MiB, GPT name old-data,
// holding ext4 labelled olddata.
const (
	PartStart = 1 << 20
	PartLen   = 64 << 20
)

// OSDUUID is the OSD uuid in the seeded bluestore labels.
var OSDUUID = uuid.MustParse("7c1b8a0e-3d52-4b8e-9a51-2f4c6d8e0b13")

// Tool returns the path of a program, failing the test with the Debian
// package that has it.
func Tool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install the Debian package %s (apt-get install %s)", name, pkg, pkg)
	}
	return p
}

// Seed writes a sparse image of size at path (making its directory); gpt
// adds partition 1 with its ext4; labels are the offsets of bluestore
// labels written over whatever is there (one at 0 overwrites the primary
// GPT header, as on a real stale OSD disk).
func Seed(t testing.TB, path string, size int64, gpt bool, labels ...int64) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	if gpt {
		run(t, Tool(t, "sgdisk", "gdisk"), "--new=1:2048:+64M", "--typecode=1:8300", "--change-name=1:old-data", path)
		run(t, Tool(t, "mkfs.ext4", "e2fsprogs"), "-q", "-F", "-L", "olddata", "-E", "offset="+strconv.Itoa(PartStart), path, strconv.Itoa(PartLen>>10)+"k")
	}
	label, err := disks.EncodeLabel(disks.Label{
		OSDUUID: OSDUUID, Size: uint64(size), Birth: time.Unix(1735689600, 0), Description: "main",
		Meta: map[string]string{"multi": "yes", "epoch": "1", "whoami": "3"},
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range labels {
		if _, err := f.WriteAt(label, off); err != nil {
			t.Fatal(err)
		}
	}
}

// Inspect is disks.Inspect of the image at path.
func Inspect(t testing.TB, path string) disks.Report {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	rep, err := disks.Inspect(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// LoopDevice attaches path to a free loop device (losetup) and detaches it
// when the test ends. It needs root: a test run as another user fails
// with that reason (make test and CI run as root).
func LoopDevice(t testing.TB, path string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("this test attaches a loop device: run it as root (make test does)")
	}
	losetup := Tool(t, "losetup", "mount")
	out, err := exec.Command(losetup, "--find", "--show", path).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup --find --show %s: %v\n%s", path, err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command(losetup, "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v\n%s", dev, err, out)
		}
	})
	return dev
}
