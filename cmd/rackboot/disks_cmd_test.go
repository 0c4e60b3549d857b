package main

// `rackboot disks` and `disks wipe` against the stand-in's Talos API on
// loopback, configured with formula's config from the state dir's secrets
// (mutual TLS with the admin talosconfig rackboot makes from them), over
// sparse disk images: sda a stale Ceph disk (GPT, ext4, bluestore labels
// at 0 and 1 GiB), sdb empty, sdc empty and, like a SATA disk on AHCI
// under Talos, with no serial but a WWID, vdb ext4 (not a Ceph
// candidate), nvme0n1 the install disk.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
	"github.com/siderolabs/talos/pkg/machinery/resources/block"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/dotfile/rackboot/disks/diskstest"
	"github.com/dotfile/rackboot/internal/kubetest"
	"github.com/dotfile/rackboot/lab/standin/apid"
	"github.com/dotfile/rackboot/profiles"
)

const cephDiskSize = 2 << 30

type disksLab struct {
	rack, state, root, addr string
	sda, sdc, vdb           string
}

// Disk identities of newDisksLab: sda has a serial and a WWID (an NAA
// one, as a SAS or NVMe disk reports), sdc a WWID only, the T10
// identifier libata builds for a SATA disk from its model and serial.
const (
	sdaWWID = "naa.5000cca26fd1e2a3"
	sdcWWID = "t10.ATA     WDC WD40EFRX-68N32N0                    WD-WCC7K4NLX3JT"
)

// newDisksLab starts the lab; sdcLabels are offsets of bluestore labels on
// sdc (none: blank). The node probes its disks once at start, as Talos's
// discovery does until a change event, so a disk is seeded here.
func newDisksLab(t *testing.T, sdcLabels ...int64) disksLab {
	t.Helper()
	rack, state := writeExampleRack(t)
	l := disksLab{rack: rack, state: state, root: t.TempDir()}
	b, _, err := profiles.LoadOrCreateSecrets(state, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	r, err := profiles.LoadFile(rack)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := profiles.GenerateConfig(r, "formula", b)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := configloader.NewFromBytes(raw)
	if err != nil {
		t.Fatal(err)
	}
	l.sda = filepath.Join(l.root, "dev/sda")
	l.vdb = filepath.Join(l.root, "dev/vdb")
	l.sdc = filepath.Join(l.root, "dev/sdc")
	diskstest.Seed(t, filepath.Join(l.root, "dev/nvme0n1"), 128<<20, true)
	diskstest.Seed(t, l.sda, cephDiskSize, true, 0, 1<<30)
	diskstest.Seed(t, filepath.Join(l.root, "dev/sdb"), 64<<20, false)
	diskstest.Seed(t, l.sdc, 64<<20, false, sdcLabels...)
	diskstest.Seed(t, l.vdb, 128<<20, true)
	disk := func(name, serial, transport string, size uint64) block.DiskSpec {
		d := block.DiskSpec{DevPath: "/dev/" + name, Serial: serial, Transport: transport, SectorSize: 512, IOSize: 512, Model: "test " + transport}
		d.SetSize(size)
		return d
	}
	sda, sdc := disk("sda", "WD-OLD-1", "sata", cephDiskSize), disk("sdc", "", "sata", 64<<20)
	sda.WWID, sdc.WWID = sdaWWID, sdcWWID
	srv, err := apid.New(apid.Config{
		Version: "v1.13.0",
		Inventory: apid.Inventory{Disks: []block.DiskSpec{
			disk("nvme0n1", "NVME-INSTALL", "nvme", 128<<20),
			sda,
			disk("sdb", "WD-NEW-2", "sata", 64<<20),
			sdc,
			disk("vdb", "VD-DATA", "virtio", 128<<20),
		}},
		Addresses:  []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Hostname:   "formula",
		Installed:  true,
		SystemDisk: "/dev/nvme0n1",
		DevRoot:    l.root,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Configure(cfg); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	l.addr = ln.Addr().String()
	// No kubeconfig anywhere unless a test gives one.
	t.Setenv("KUBECONFIG", filepath.Join(l.root, "no-kubeconfig"))
	return l
}

// run runs rackboot with stdin.
func (l disksLab) run(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out, errOut bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errOut)
	root.SetIn(strings.NewReader(stdin))
	root.SetArgs(append([]string{"-f", l.rack, "--state", l.state}, args...))
	err := root.ExecuteContext(context.Background())
	if errOut.Len() > 0 {
		t.Logf("stderr of %v:\n%s", args, errOut.String())
	}
	return out.String(), err
}

func (l disksLab) report(t *testing.T) (map[string]diskRow, error) {
	t.Helper()
	out, err := l.run(t, "", "disks", "formula", "--node", "formula="+l.addr, "--json")
	var rep []machineDisks
	if jerr := json.Unmarshal([]byte(out), &rep); jerr != nil || len(rep) != 1 {
		t.Fatalf("disks --json: %v (%v)\n%s", jerr, err, out)
	}
	if rep[0].Error != "" {
		t.Fatalf("formula: %s", rep[0].Error)
	}
	rows := map[string]diskRow{}
	for _, d := range rep[0].Disks {
		rows[d.Name] = d
	}
	return rows, err
}

func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if err != nil {
		return -1
	}
	return 0
}

func TestDisksReport(t *testing.T) {
	l := newDisksLab(t)
	rows, err := l.report(t)
	if exitCode(err) != 1 {
		t.Errorf("disks with a stale Ceph disk: %v, want exit code 1", err)
	}
	if d := rows["nvme0n1"]; !d.Install || d.Ceph || d.Verdict != "" || d.PartitionTable != "gpt" {
		t.Errorf("nvme0n1 = %+v, want the install disk (GPT), no verdict", d)
	}
	if d := rows["sda"]; !d.Ceph || d.Verdict != "not clean" || !slices.Equal(d.CephLabels, []string{"sda"}) ||
		d.Wipe != "rackboot disks wipe formula --serial WD-OLD-1" {
		t.Errorf("sda = %+v, want a Ceph candidate not clean, bluestore, with its wipe command", d)
	}
	if d := rows["sdb"]; !d.Ceph || d.Verdict != "clean" || d.Wipe != "" {
		t.Errorf("sdb = %+v, want a clean Ceph candidate", d)
	}
	if d := rows["sdc"]; !d.Ceph || d.Verdict != "clean" || d.Serial != "" || d.WWID != sdcWWID {
		t.Errorf("sdc = %+v, want a clean Ceph candidate with no serial and WWID %q", d, sdcWWID)
	}
	if d := rows["vdb"]; d.Ceph || d.Verdict != "" || !slices.Equal(d.Filesystems, []string{"ext4 in vdb1 (olddata)"}) {
		t.Errorf("vdb = %+v, want not a candidate, ext4 in vdb1", d)
	}

	// The table, and a machine that does not answer.
	out, err := l.run(t, "", "disks", "formula", "urban", "--node", "formula="+l.addr, "--node", "urban=127.0.0.1:1", "--timeout", "3s")
	t.Logf("disks:\n%s", out)
	if exitCode(err) != 1 {
		t.Errorf("disks: %v, want exit code 1", err)
	}
	for _, want := range []string{
		"NOT CLEAN: rackboot disks wipe formula --serial WD-OLD-1",
		"Ceph bluestore label on sda",
		"urban    -",
		"not answering",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}

	// Read-only: no state directory, no secrets: an error, nothing created.
	l2 := l
	l2.state = filepath.Join(t.TempDir(), "none")
	if _, err := l2.run(t, "", "disks", "formula", "--node", "formula="+l.addr); err == nil || !strings.Contains(err.Error(), "no cluster secrets") {
		t.Errorf("disks without secrets: %v", err)
	}
	if _, err := os.Stat(l2.state); !os.IsNotExist(err) {
		t.Errorf("disks created the state directory: %v", err)
	}
}

func TestDisksWipeRefuses(t *testing.T) {
	l := newDisksLab(t)
	node := "formula=" + l.addr
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--serial", "NVME-INSTALL", "--no-cluster", "--yes"}, "formula's install disk: rackboot never wipes it"},
		{[]string{"--serial", "NOPE", "--no-cluster", "--yes"}, `formula has no disk with serial "NOPE"`},
		{[]string{"--serial", "VD-DATA", "--no-cluster", "--yes"}, "not a Ceph candidate of formula"},
		{[]string{"--serial", "WD-OLD-1", "--yes"}, "cannot ask the cluster whether a Rook OSD uses these disks"},
		{[]string{"--serial", "WD-OLD-1", "--no-cluster", "--method", "quick"}, `--method "quick": use fast or zeroes`},
		{[]string{"--no-cluster"}, "say which disks to wipe"},
		{[]string{"--wwid", "t10.ATA     NOPE", "--no-cluster", "--yes"}, `formula has no disk with WWID "t10.ATA     NOPE"; its disks: serial NVME-INSTALL (nvme0n1), serial WD-OLD-1 (sda), serial WD-NEW-2 (sdb), WWID "` + sdcWWID + `" (sdc), serial VD-DATA (vdb)`},
		{[]string{"--wwid", sdaWWID, "--no-cluster", "--yes"}, "sda has serial WD-OLD-1: name it with --serial WD-OLD-1"},
	} {
		out, err := l.run(t, "", append([]string{"disks", "wipe", "formula", "--node", node}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q\n%s", tc.args, err, tc.want, out)
		}
	}
	// Not confirmed: the wrong name typed.
	out, err := l.run(t, "urban\n", "disks", "wipe", "formula", "--node", node, "--serial", "WD-OLD-1", "--no-cluster")
	if err == nil || !strings.Contains(err.Error(), "not confirmed") || !strings.Contains(out, "Type the machine's name") {
		t.Errorf("wrong name typed: %v\n%s", err, out)
	}
	if len(diskstest.Inspect(t, l.sda).Labels()) != 2 {
		t.Error("a refused wipe touched sda")
	}
	if rep := diskstest.Inspect(t, l.vdb); len(rep.Partitions) != 1 {
		t.Errorf("a refused wipe touched vdb: %s", rep.Summary())
	}
}

// TestDisksWipe: the fast wipe, confirmed by typing the name, leaves
// Talos seeing nothing — and the label copy at 1 GiB on the disk, which
// the command says; then zeroes leaves nothing at all.
func TestDisksWipe(t *testing.T) {
	l := newDisksLab(t)
	node := "formula=" + l.addr
	out, err := l.run(t, "formula\n", "disks", "wipe", "formula", "--node", node, "--serial", "WD-OLD-1", "--no-cluster")
	t.Logf("wipe fast:\n%s", out)
	if err != nil {
		t.Fatalf("wipe: %v", err)
	}
	for _, want := range []string{"sda wiped (fast): Talos sees nothing on it now", "copies at 1 GiB", "--method zeroes"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	rep := diskstest.Inspect(t, l.sda)
	if ls := rep.Labels(); len(ls) != 1 || ls[0].Offset != 1<<30 {
		t.Errorf("after the fast wipe the image holds %s; want the label copy at 1 GiB only (Talos's real behaviour)", rep.Summary())
	}
	rows, err := l.report(t)
	if err != nil || rows["sda"].Verdict != "clean" {
		t.Errorf("after the fast wipe: %v, sda %+v; want clean as far as Talos can see", err, rows["sda"])
	}

	out, err = l.run(t, "", "disks", "wipe", "formula", "--node", node, "--serial", "WD-OLD-1", "--no-cluster", "--yes", "--method", "zeroes")
	t.Logf("wipe zeroes:\n%s", out)
	if err != nil {
		t.Fatalf("wipe zeroes: %v", err)
	}
	if rep := diskstest.Inspect(t, l.sda); !rep.Clean() {
		t.Errorf("after zeroes: %s", rep.Summary())
	}
}

// TestDisksWipeByWWID: a disk Talos reports no serial for (a SATA disk on
// AHCI) is named by its WWID: the report's wipe command says so, quoted for
// the shell, and that command wipes it.
func TestDisksWipeByWWID(t *testing.T) {
	l := newDisksLab(t, 0) // a bluestore label at 0 on sdc
	rows, _ := l.report(t)
	want := "rackboot disks wipe formula --wwid '" + sdcWWID + "'"
	if d := rows["sdc"]; d.Verdict != "not clean" || d.Wipe != want {
		t.Fatalf("sdc = %+v, want not clean with wipe command %q", d, want)
	}
	// The command as the report prints it, split as a shell would.
	args := []string{"disks", "wipe", "formula", "--wwid", sdcWWID, "--node", "formula=" + l.addr, "--no-cluster", "--yes"}
	out, err := l.run(t, "", args...)
	t.Logf("wipe by WWID:\n%s", out)
	if err != nil {
		t.Fatalf("wipe: %v", err)
	}
	for _, w := range []string{`formula: sdc (WWID "` + sdcWWID + `", 67.1 MB): Ceph bluestore label on sdc`, "sdc wiped (fast): Talos sees nothing on it now"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q", w)
		}
	}
	if rep := diskstest.Inspect(t, l.sdc); !rep.Clean() {
		t.Errorf("after the wipe sdc holds %s", rep.Summary())
	}
	if len(diskstest.Inspect(t, l.sda).Labels()) != 2 {
		t.Error("the wipe of sdc touched sda")
	}
}

func TestShellQuote(t *testing.T) {
	for in, want := range map[string]string{
		"WD-OLD-1":               "WD-OLD-1",
		"naa.5000cca26fd1e2a3":   "naa.5000cca26fd1e2a3",
		"t10.ATA     QEMU  QM01": "'t10.ATA     QEMU  QM01'",
		"it's":                   `'it'\''s'`,
		"":                       "''",
		"$(reboot)":              "'$(reboot)'",
	} {
		if got := shellQuote(in); got != want {
			t.Errorf("shellQuote(%q) = %s, want %s", in, got, want)
		}
		// A POSIX shell reads it back as the one word it was.
		out, err := exec.Command("sh", "-c", `printf %s `+shellQuote(in)).Output()
		if err != nil || string(out) != in {
			t.Errorf("sh reads %s as %q (%v), want %q", shellQuote(in), out, err, in)
		}
	}
}

// TestDisksWipeRookOSD: an OSD deployment of Rook's on that node with that
// device, in a real API server: refused; another node's: allowed.
func TestDisksWipeRookOSD(t *testing.T) {
	env := kubetest.Start(t)
	l := newDisksLab(t)
	cs, err := kubernetes.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	makeRookOSD(t, cs, "1", "urban", "/dev/sda")
	// An allowed fast wipe with a cluster runs the zeroing Job: the FAKE
	// KUBELET of zero_job_test.go runs it (see there).
	kl := &fakeKubelet{t: t, cs: cs, node: "formula", images: map[string]string{"sdb": filepath.Join(l.root, "dev/sdb")}}
	kl.start()
	seedZeroImage(t, l.state)
	wipe := func(serial string) []string {
		return []string{"disks", "wipe", "formula", "--node", "formula=" + l.addr, "--serial", serial, "--yes", "--kubeconfig", env.Kubeconfig, "--job-timeout", "2m"}
	}
	// Only another node's OSD: formula's disks may go.
	out, err := l.run(t, "", wipe("WD-NEW-2")...)
	if err != nil {
		t.Fatalf("wipe with another node's OSD: %v\n%s", err, out)
	}
	if n := len(kl.jobs()); n != 1 {
		t.Errorf("%d zeroing Jobs for the allowed wipe, want 1", n)
	}
	makeRookOSD(t, cs, "3", "formula", "/dev/sda")
	out, err = l.run(t, "", wipe("WD-OLD-1")...)
	if err == nil || !strings.Contains(err.Error(), "sda on formula is Rook's: OSD 3 (rook-ceph-osd-3) uses /dev/sda") {
		t.Errorf("wipe of an OSD's disk: %v\n%s", err, out)
	}
	if len(diskstest.Inspect(t, l.sda).Labels()) != 2 {
		t.Error("the refused wipe touched sda")
	}
	if n := len(kl.jobs()); n != 1 {
		t.Errorf("%d zeroing Jobs after the refused wipe, want still 1", n)
	}
}

func TestOSDUsing(t *testing.T) {
	dep := func(node, dev string) appsv1.Deployment {
		d := appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Name: "rook-ceph-osd-0", Labels: map[string]string{"ceph-osd-id": "0", "topology-location-host": node}}}
		if dev != "" {
			d.Spec.Template.Spec.Containers = []corev1.Container{{Env: []corev1.EnvVar{{Name: "ROOK_BLOCK_PATH", Value: dev}}}}
		}
		return d
	}
	sda := diskRow{Name: "sda", Serial: "WD-1", CephLabels: []string{"sda"}}
	sdaEmpty := diskRow{Name: "sda", Serial: "WD-1"}
	sdc := diskRow{Name: "sdc", WWID: "t10.ATA     X WD-3", CephLabels: []string{"sdc"}}
	sdcEmpty := diskRow{Name: "sdc", WWID: "t10.ATA     X WD-3"}
	sdcNAA := diskRow{Name: "sdc", WWID: "naa.5000cca26fd1e2a3"}
	names := []string{"nvme0n1", "sda", "sdb", "sdc"}
	for _, tc := range []struct {
		name string
		deps []appsv1.Deployment
		disk diskRow
		want string // substring; "" means allowed
	}{
		{"none", nil, sda, ""},
		{"other node", []appsv1.Deployment{dep("urban", "/dev/sda")}, sda, ""},
		{"by name", []appsv1.Deployment{dep("lailah", "/dev/sda")}, sda, "uses /dev/sda"},
		{"by id", []appsv1.Deployment{dep("lailah", "/dev/disk/by-id/ata-X_WD-1")}, sdaEmpty, "uses /dev/disk/by-id/ata-X_WD-1"},
		{"other disk", []appsv1.Deployment{dep("lailah", "/dev/sdb")}, sda, ""},
		{"renamed", []appsv1.Deployment{dep("lailah", "/dev/sdq")}, sda, "no longer has under that name"},
		{"renamed, disk without label", []appsv1.Deployment{dep("lailah", "/dev/sdq")}, sdaEmpty, ""},
		{"device unknown", []appsv1.Deployment{dep("lailah", "")}, sda, "its device is not recorded"},
		{"device unknown, disk without label", []appsv1.Deployment{dep("lailah", "")}, sdaEmpty, ""},
		{"by wwn", []appsv1.Deployment{dep("lailah", "/dev/disk/by-id/wwn-0x5000cca26fd1e2a3")}, sdcNAA, "uses /dev/disk/by-id/wwn-0x5000cca26fd1e2a3"},
		{"by id, disk without serial", []appsv1.Deployment{dep("lailah", "/dev/disk/by-id/ata-X_WD-9")}, sdc, "cannot be matched to sdc"},
		{"by id, disk without serial or label", []appsv1.Deployment{dep("lailah", "/dev/disk/by-id/ata-X_WD-9")}, sdcEmpty, ""},
		{"by id, another serial", []appsv1.Deployment{dep("lailah", "/dev/disk/by-id/ata-X_WD-9")}, sda, ""},
	} {
		got := osdUsing(tc.deps, "lailah", tc.disk, names)
		if (tc.want == "") != (got == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestDiskRows(t *testing.T) {
	ds := []block.DiskSpec{{DevPath: "/dev/nvme0n1", Serial: "N"}, {DevPath: "/dev/sda", Serial: "A"}, {DevPath: "/dev/sdb"}, {DevPath: "/dev/sdc", Serial: "C"},
		{DevPath: "/dev/sdd", WWID: "t10.ATA     X 1"}}
	vols := map[string]block.DiscoveredVolumeSpec{
		"nvme0n1":   {Type: "disk", Name: "gpt"},
		"nvme0n1p1": {Type: "partition", Parent: "nvme0n1", Name: "vfat", Label: "EFI"},
		"sda":       {Type: "disk", Name: "bluestore"},
		"sdb":       {Type: "disk", Name: "xfs"},
		"sdc":       {Type: "disk"},
		"sdd":       {Type: "disk", Name: "bluestore"},
	}
	rows := diskRows("lailah", ds, vols, "nvme0n1", regexp.MustCompile(`^sd[a-z]+$`))
	got := map[string]diskRow{}
	for _, r := range rows {
		got[r.Name] = r
	}
	if r := got["nvme0n1"]; !r.Install || r.Ceph || r.What != "GPT partition table with 1 partition(s); vfat in nvme0n1p1 (EFI)" {
		t.Errorf("nvme0n1: %+v", r)
	}
	if r := got["sda"]; r.Verdict != "not clean" || r.What != "Ceph bluestore label on sda" || r.Wipe != "rackboot disks wipe lailah --serial A" {
		t.Errorf("sda: %+v", r)
	}
	if r := got["sdb"]; r.Verdict != "not clean" || !strings.Contains(r.Wipe, "has no serial and no WWID") {
		t.Errorf("sdb: %+v", r)
	}
	if r := got["sdd"]; r.Verdict != "not clean" || r.Wipe != "rackboot disks wipe lailah --wwid 't10.ATA     X 1'" {
		t.Errorf("sdd: %+v", r)
	}
	if r := got["sdc"]; r.Verdict != "clean" || r.Wipe != "" {
		t.Errorf("sdc: %+v", r)
	}
	// The install disk is never a Ceph candidate, even when the filter
	// matches it.
	rows = diskRows("lailah", ds, vols, "sdc", regexp.MustCompile(`^sd[a-z]+$`))
	if r := rows[3]; !r.Install || r.Ceph || r.Verdict != "" {
		t.Errorf("install sdc: %+v", r)
	}
}

// makeRookOSD creates Rook's OSD deployment rook-ceph-osd-<id> on node
// (ROOK_BLOCK_PATH dev when not empty), and the rook-ceph namespace with
// the first one, as Rook's operator would.
func makeRookOSD(t *testing.T, cs kubernetes.Interface, id, node, dev string) {
	t.Helper()
	ctx := context.Background()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: rookNamespace}}
	if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	one := int32(1)
	labels := map[string]string{"app": "rook-ceph-osd", "ceph-osd-id": id}
	c := corev1.Container{Name: "osd", Image: "quay.io/ceph/ceph:v19.2.3"}
	if dev != "" {
		c.Env = []corev1.EnvVar{{Name: "ROOK_BLOCK_PATH", Value: dev}}
	}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "rook-ceph-osd-" + id, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					NodeSelector: map[string]string{"kubernetes.io/hostname": node},
					Containers:   []corev1.Container{c},
				},
			},
		},
	}
	if _, err := cs.AppsV1().Deployments(rookNamespace).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}
