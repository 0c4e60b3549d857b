package disks

// Issue #15's disk check, on a real sparse disk image with real tools:
// sgdisk writes a GPT, mkfs.ext4 a filesystem in partition 1, our encoder
// bluestore labels at 0, 1 GiB and 10 GiB; wipefs, blkid and Ceph's own
// ceph-bluestore-tool see them; Inspect sees the same; after Wipe nothing
// is left at any of those places, a marker outside the plan is intact and
// the file stayed sparse.

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"
)

// tool returns the path of a program, failing the test with the Debian
// package that has it.
func tool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install the Debian package %s (apt-get install %s)", name, pkg, pkg)
	}
	return p
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// allocated is the file's allocated size on disk.
func allocated(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Blocks * 512
}

// wipefsEntry is one signature as `wipefs -n -J` reports it.
type wipefsEntry struct {
	Device string `json:"device"`
	Offset string `json:"offset"`
	Type   string `json:"type"`
	UUID   string `json:"uuid"`
}

func wipefsList(t *testing.T, wipefs, path string) []wipefsEntry {
	t.Helper()
	out := run(t, wipefs, "-n", "-J", path)
	if strings.TrimSpace(out) == "" {
		return nil
	}
	var v struct {
		Signatures []wipefsEntry `json:"signatures"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("wipefs -J output: %v\n%s", err, out)
	}
	return v.Signatures
}

// blkidProbe runs `blkid -p -o export [-O off] path`; exit status 2 means
// nothing found.
func blkidProbe(t *testing.T, blkid, path string, off int64) map[string]string {
	t.Helper()
	args := []string{"-p", "-o", "export"}
	if off > 0 {
		args = append(args, "-O", strconv.FormatInt(off, 10))
	}
	out, err := exec.Command(blkid, append(args, path)...).Output()
	if ee, ok := err.(*exec.ExitError); ok && ee.ExitCode() == 2 {
		return nil
	}
	if err != nil {
		t.Fatalf("blkid -p %s: %v", path, err)
	}
	kv := map[string]string{}
	for _, l := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			kv[k] = v
		}
	}
	return kv
}

func TestSeededDiskWipedWithRealTools(t *testing.T) {
	sgdisk := tool(t, "sgdisk", "gdisk")
	mkfs := tool(t, "mkfs.ext4", "e2fsprogs")
	wipefs := tool(t, "wipefs", "util-linux")
	blkid := tool(t, "blkid", "util-linux")
	hexdump := tool(t, "hexdump", "bsdextrautils")
	cbt := tool(t, "ceph-bluestore-tool", "ceph-osd")

	const size = 12<<30 + 8<<20 // ≥ 12 GiB, not a round number
	const partStart = 1 << 20   // partition 1: 1 MiB, 64 MiB, ext4
	const partLen = 64 << 20
	path := filepath.Join(t.TempDir(), "disk.img")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}

	run(t, sgdisk, "--new=1:2048:+64M", "--typecode=1:8300", "--change-name=1:old-data",
		"--new=2:0:+2G", "--typecode=2:8300", path)
	run(t, mkfs, "-q", "-F", "-L", "olddata", "-E", "offset="+strconv.Itoa(partStart), path, strconv.Itoa(partLen>>10)+"k")
	fsUUID := blkidProbe(t, blkid, path, partStart)["UUID"]
	if fsUUID == "" {
		t.Fatalf("blkid -O %d finds no filesystem after mkfs.ext4", partStart)
	}

	osd := uuid.MustParse("7c1b8a0e-3d52-4b8e-9a51-2f4c6d8e0b13")
	label, err := EncodeLabel(Label{
		OSDUUID: osd, Size: size, Birth: time.Unix(1735689600, 0), Description: "main",
		Meta: map[string]string{"multi": "yes", "epoch": "1", "whoami": "3", "ceph_fsid": "0c1a7f3e-2b5d-4c6e-8f90-a1b2c3d4e5f6"},
	})
	if err != nil {
		t.Fatal(err)
	}
	labelsAt := []int64{0, 1 << 30, 10 << 30}
	for _, off := range labelsAt {
		if _, err := f.WriteAt(label, off); err != nil {
			t.Fatal(err)
		}
	}
	// Markers outside the plan: right after the 1 GiB label block, in the
	// middle of partition 2, and in the ext4 filesystem's data blocks.
	marker := []byte("rackboot marker: must survive the wipe")
	markers := []int64{1<<30 + LabelBlockSize, 5 << 30, partStart + 32<<20}
	for _, off := range markers {
		if _, err := f.WriteAt(marker, off); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}

	// Before: the real tools see the labels and the partition table.
	before := wipefsList(t, wipefs, path)
	t.Logf("wipefs -n before: %+v", before)
	var wfTypes []string
	for _, s := range before {
		wfTypes = append(wfTypes, s.Type)
	}
	if !slices.Contains(wfTypes, "ceph_bluestore") || !slices.Contains(wfTypes, "gpt") {
		t.Fatalf("wipefs -n sees %v, want ceph_bluestore and gpt", wfTypes)
	}
	if got := blkidProbe(t, blkid, path, 0)["TYPE"]; got != "ceph_bluestore" {
		t.Fatalf("blkid -p TYPE = %q, want ceph_bluestore", got)
	}
	for _, off := range labelsAt {
		if got := blkidProbe(t, blkid, path, off)["TYPE"]; got != "ceph_bluestore" {
			t.Errorf("blkid -p -O %d TYPE = %q, want ceph_bluestore", off, got)
		}
	}
	out := run(t, cbt, "show-label", "--dev", path)
	if !strings.Contains(out, osd.String()) || !strings.Contains(out, `"multi": "yes"`) {
		t.Fatalf("ceph-bluestore-tool show-label does not read our label:\n%s", out)
	}

	// Inspect sees the same, and more (the copies wipefs does not look for).
	rep, err := Inspect(f, size)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Inspect before: %s", rep.Summary())
	for _, s := range before {
		off, err := strconv.ParseInt(strings.TrimPrefix(s.Offset, "0x"), 16, 64)
		if err != nil {
			t.Fatalf("wipefs offset %q: %v", s.Offset, err)
		}
		if !slices.ContainsFunc(rep.Signatures, func(g Signature) bool {
			return g.Type == s.Type && g.Offset <= off && off < g.Offset+max(g.MagicLen, 8)
		}) {
			t.Errorf("wipefs sees %s at %#x, Inspect does not: %+v", s.Type, off, rep.Signatures)
		}
	}
	var labelOffs []int64
	for _, l := range rep.Labels() {
		labelOffs = append(labelOffs, l.Offset)
		if l.UUID != osd.String() || l.Problem != "" || l.Label != "main" {
			t.Errorf("label at %d: %+v, want OSD %s, sound, main", l.Offset, l, osd)
		}
	}
	if !slices.Equal(labelOffs, labelsAt) {
		t.Errorf("Inspect finds labels at %v, want %v", labelOffs, labelsAt)
	}
	if !slices.ContainsFunc(rep.Signatures, func(s Signature) bool {
		return s.Type == "ext4" && s.Partition == 1 && s.UUID == fsUUID && s.Label == "olddata"
	}) {
		t.Errorf("Inspect misses the ext4 filesystem %s in partition 1: %+v", fsUUID, rep.Signatures)
	}
	if len(rep.Partitions) != 2 || rep.Partitions[0].Offset != partStart || rep.Partitions[0].Name != "old-data" {
		t.Errorf("partitions = %+v, want 2 (from the backup GPT), the first at 1 MiB named old-data", rep.Partitions)
	}
	if rep.Clean() {
		t.Fatal("seeded disk reported clean")
	}

	// Wipe.
	allocBefore := allocated(t, path)
	res, err := Wipe(f, size)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	t.Logf("wiped %d bytes in %d ranges; allocated %d KiB before, %d KiB after", res.Bytes, len(res.Ranges), allocBefore>>10, allocated(t, path)>>10)

	if after := wipefsList(t, wipefs, path); len(after) != 0 {
		t.Errorf("wipefs -n after the wipe still sees %+v", after)
	}
	for _, off := range append([]int64{0, partStart}, labelsAt...) {
		if kv := blkidProbe(t, blkid, path, off); kv != nil {
			t.Errorf("blkid -p -O %d after the wipe finds %v", off, kv)
		}
	}
	if out, err := exec.Command(cbt, "show-label", "--dev", path).CombinedOutput(); err == nil {
		t.Errorf("ceph-bluestore-tool still reads a label after the wipe:\n%s", out)
	}
	rep, err = Inspect(f, size)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Clean() {
		t.Errorf("after the wipe Inspect reports %s", rep.Summary())
	}
	for _, off := range labelsAt {
		out := run(t, hexdump, "-C", "-s", strconv.FormatInt(off, 10), "-n", strconv.Itoa(LabelBlockSize), path)
		// hexdump -C folds repeated lines: all zeros is one line, "*", the end offset.
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 3 || !strings.Contains(lines[0], "00 00 00 00 00 00 00 00  00 00 00 00 00 00 00 00") || lines[1] != "*" {
			t.Errorf("hexdump at %d is not all zeros:\n%s", off, out)
		}
	}
	for _, off := range markers {
		got := make([]byte, len(marker))
		if _, err := f.ReadAt(got, off); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, marker) {
			t.Errorf("marker at %d changed: %q", off, got)
		}
	}
	// Sparse: the wipe wrote a few MiB of zeros, not the disk.
	if a := allocated(t, path); a > 64<<20 {
		t.Errorf("image allocates %d MiB after the wipe, want it sparse (< 64 MiB)", a>>20)
	}
}
