package imager

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	diskfs "github.com/diskfs/go-diskfs"
	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"

	"github.com/dotfile/rackboot/imager/bootloaders"
	"github.com/dotfile/rackboot/profiles"
	"github.com/dotfile/rackboot/pxe"
)

// testEpoch is the SOURCE_DATE_EPOCH of the reproducibility tests.
const testEpoch = 1700000000

// needTool fails the test (never skips) when a Debian tool is missing.
func needTool(t testing.TB, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s not found: install the Debian package %s (make deps)", tool, pkg)
	}
	return p
}

// run runs a command and returns its combined output, failing on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// testLoaders materializes the boot loaders with the project's script into
// a temporary directory, once per test binary.
func testLoaders(t testing.TB) string {
	t.Helper()
	loadersOnce.Do(func() {
		script := filepath.Join(moduleRoot(), "scripts", "materialize-bootloaders.sh")
		// One fixed directory, replaced by the script on each run.
		dir := filepath.Join(os.TempDir(), "rackboot-test-bootloaders-"+strconv.Itoa(os.Getuid()))
		out, err := exec.Command(script, dir).CombinedOutput()
		if err != nil {
			loadersErr = errors.New(string(out) + err.Error() + " (needs the Debian packages isolinux syslinux-common systemd-boot-efi)")
			return
		}
		loadersDir = dir
	})
	if loadersErr != nil {
		t.Fatalf("materialize boot loaders: %v", loadersErr)
	}
	return loadersDir
}

// testBuilder returns a Builder with materialized boot loaders and the
// given options.
func testBuilder(t testing.TB, opts ...BuilderOption) *Builder {
	t.Helper()
	fsys, err := bootloaders.Dir(testLoaders(t))
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewBuilder(fsys, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// moduleRoot is the repository root: go test runs in the package's folder
// (runtime.Caller would give a module path under -trimpath).
func moduleRoot() string {
	root, err := filepath.Abs("..")
	if err != nil {
		panic(err)
	}
	return root
}

// testConfig is machine cp1's real Talos config from profiles' test rack
// and fixed test secrets, and its kernel arguments for metal-iso.
func testConfig(t testing.TB, name string) ([]byte, string) {
	t.Helper()
	root := moduleRoot()
	r, err := profiles.LoadFile(filepath.Join(root, "profiles", "testdata", "good.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, "profiles", "testdata", "secrets.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	// LoadSecrets insists on mode 0600: use a private copy.
	sec := filepath.Join(t.TempDir(), "secrets.yaml")
	if err := os.WriteFile(sec, data, 0o600); err != nil {
		t.Fatal(err)
	}
	b, err := profiles.LoadSecrets(sec)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := profiles.GenerateConfig(r, name, b)
	if err != nil {
		t.Fatal(err)
	}
	args, err := profiles.KernelArgs(r.Cluster.TalosVersion, "amd64", nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg, strings.Join(append(args, "talos.config=metal-iso"), " ")
}

// fakeBootFiles writes a small kernel-shaped file and an initramfs of n
// random bytes.
func fakeBootFiles(t testing.TB, n int64) (kernel, initrd string) {
	t.Helper()
	dir := t.TempDir()
	kernel = filepath.Join(dir, "vmlinuz")
	k := make([]byte, 600*1024)
	copy(k[0x1fe:], "\x55\xaa")
	copy(k[0x202:], "HdrS")
	if err := os.WriteFile(kernel, k, 0o644); err != nil {
		t.Fatal(err)
	}
	initrd = filepath.Join(dir, "initrd")
	f, err := os.Create(initrd)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, n); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return kernel, initrd
}

func testSpec(t testing.TB, kernel, initrd string) ImageSpec {
	cfg, cmdline := testConfig(t, "cp1")
	return ImageSpec{Name: "cp1", Cmdline: cmdline + " console=ttyS0", Config: cfg, Kernel: kernel, Initramfs: initrd}
}

func TestImageSpecValidate(t *testing.T) {
	kernel, initrd := fakeBootFiles(t, 1024)
	good := ImageSpec{Name: "cp1", Cmdline: "talos.config=metal-iso", Config: []byte("x"), Kernel: kernel, Initramfs: initrd}
	if err := good.Validate(); err != nil {
		t.Fatalf("good spec: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*ImageSpec)
		want   string
	}{
		{"bad name", func(s *ImageSpec) { s.Name = "../x" }, "name"},
		{"empty name", func(s *ImageSpec) { s.Name = "" }, "name"},
		{"newline", func(s *ImageSpec) { s.Cmdline = "a\nb" }, "line break"},
		{"long cmdline", func(s *ImageSpec) { s.Cmdline = strings.Repeat("a", pxe.MaxCmdline+1) }, "at most 2047"},
		{"no config", func(s *ImageSpec) { s.Config = nil }, "empty machine config"},
		{"no kernel", func(s *ImageSpec) { s.Kernel = "" }, "no kernel"},
		{"missing initrd", func(s *ImageSpec) { s.Initramfs = "/nonexistent" }, "initramfs"},
		{"dir kernel", func(s *ImageSpec) { s.Kernel = t.TempDir() }, "not a regular file"},
	} {
		s := good
		tc.change(&s)
		err := s.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: Validate() = %v, want an error containing %q", tc.name, err, tc.want)
		}
	}
}

func TestNewBuilderNeedsLoaders(t *testing.T) {
	if _, err := NewBuilder(nil); !errors.Is(err, bootloaders.ErrMissing) {
		t.Fatalf("NewBuilder(nil) = %v, want ErrMissing", err)
	}
	if _, err := NewBuilder(os.DirFS(t.TempDir())); err == nil || !strings.Contains(err.Error(), "isolinux.bin") {
		t.Fatalf("NewBuilder(empty dir) = %v, want the missing files named", err)
	}
}

// TestISOReaders builds an ISO and reads it back with xorriso and go-diskfs.
func TestISOReaders(t *testing.T) {
	needTool(t, "xorriso", "xorriso")
	kernel, initrd := fakeBootFiles(t, 3<<20)
	spec := testSpec(t, kernel, initrd)
	out := filepath.Join(t.TempDir(), "cp1.iso")
	img, err := testBuilder(t).ISO(context.Background(), spec, out)
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(out)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("ISO mode %v, want 0600 (it holds secrets)", st.Mode().Perm())
	}
	if st.Size() != img.Size || st.Size()%2048 != 0 {
		t.Errorf("ISO size %d, result says %d (must be whole 2 KiB sectors)", st.Size(), img.Size)
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".*")); len(left) > 0 {
		t.Errorf("temporary files left: %v", left)
	}

	// xorriso: both El Torito entries, the label, the files.
	rep := run(t, "xorriso", "-indev", out, "-report_el_torito", "plain")
	for _, want := range []string{"El Torito boot img :   1  BIOS", "El Torito boot img :   2  UEFI", "El Torito img path :   1  /isolinux/isolinux.bin", "El Torito img path :   2  /boot/efiboot.img", "Volume id    : 'metal-iso'", "El Torito img opts :   1  boot-info-table"} {
		if !strings.Contains(rep, want) {
			t.Errorf("xorriso -report_el_torito lacks %q:\n%s", want, rep)
		}
	}
	if !regexpMatch(`El Torito boot img :   1  BIOS  y   none  0x0000  0x00      4`, rep) {
		t.Errorf("BIOS entry is not no-emulation with load size 4:\n%s", rep)
	}
	find := run(t, "xorriso", "-indev", out, "-find", "/", "-type", "f")
	for _, want := range []string{"'/config.yaml'", "'/isolinux/isolinux.bin'", "'/isolinux/ldlinux.c32'", "'/isolinux/isolinux.cfg'", "'/boot/vmlinuz'", "'/boot/initrd.img'", "'/boot/efiboot.img'"} {
		if !strings.Contains(find, want) {
			t.Errorf("xorriso -find lacks %s:\n%s", want, find)
		}
	}
	if strings.Contains(rep, "Joliet") && !strings.Contains(rep, "Joliet    : no") {
		// Joliet must stay off (SeaBIOS cannot boot it from go-diskfs).
		t.Logf("xorriso report mentions Joliet:\n%s", rep)
	}
	got := filepath.Join(t.TempDir(), "config.yaml")
	run(t, "xorriso", "-osirrox", "on", "-indev", out, "-extract", "/config.yaml", got)
	if b, _ := os.ReadFile(got); !bytes.Equal(b, spec.Config) {
		t.Errorf("xorriso extracted a config.yaml of %d bytes that differs from the %d given", len(b), len(spec.Config))
	}
	gotInitrd := filepath.Join(t.TempDir(), "initrd")
	run(t, "xorriso", "-osirrox", "on", "-indev", out, "-extract", "/boot/initrd.img", gotInitrd)
	run(t, "cmp", gotInitrd, initrd)

	// go-diskfs reads it back: label, isolinux.cfg with the command line.
	d, err := diskfs.Open(out, diskfs.WithOpenMode(diskfs.ReadOnly))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	d.LogicalBlocksize = 2048
	fsys, err := d.GetFilesystem(0)
	if err != nil {
		t.Fatal(err)
	}
	iso, ok := fsys.(*iso9660.FileSystem)
	if !ok {
		t.Fatalf("go-diskfs reads a %T", fsys)
	}
	if l := iso.Label(); strings.TrimRight(l, " ") != "metal-iso" {
		t.Errorf("go-diskfs label %q, want metal-iso", l)
	}
	f, err := iso.OpenFile("/isolinux/isolinux.cfg", os.O_RDONLY)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := io.ReadAll(f)
	if string(cfg) != ISOLinuxConfig(InstallMediaCmdline(spec.Cmdline)) || !strings.Contains(string(cfg), "talos.config=metal-iso") || !strings.Contains(string(cfg), HaltIfInstalled) {
		t.Errorf("isolinux.cfg = %q", cfg)
	}

	// The ESP inside: systemd-boot, the loader entry, kernel, initramfs.
	espImg := filepath.Join(t.TempDir(), "esp.img")
	run(t, "xorriso", "-osirrox", "on", "-indev", out, "-extract", "/boot/efiboot.img", espImg)
	checkESP(t, espImg, 0, spec)
}

// TestInstallMediaCmdline: talos.halt_if_installed=1 goes where Talos's
// imager puts it on an ISO (after talos.platform= and the consoles, before
// the defaults), once, and an explicit setting is kept.
func TestInstallMediaCmdline(t *testing.T) {
	for in, want := range map[string]string{
		"talos.platform=metal console=ttyS0 console=tty0 init_on_alloc=1 talos.config=metal-iso": "talos.platform=metal console=ttyS0 console=tty0 talos.halt_if_installed=1 init_on_alloc=1 talos.config=metal-iso",
		"talos.platform=metal init_on_alloc=1":                                                   "talos.platform=metal talos.halt_if_installed=1 init_on_alloc=1",
		"quiet console=ttyS0":                                                                    "talos.halt_if_installed=1 quiet console=ttyS0",
		"talos.platform=metal talos.halt_if_installed=0 console=tty0":                            "talos.platform=metal talos.halt_if_installed=0 console=tty0",
		"talos.platform=metal console=tty0":                                                      "talos.platform=metal console=tty0 talos.halt_if_installed=1",
	} {
		if got := InstallMediaCmdline(in); got != want {
			t.Errorf("InstallMediaCmdline(%q)\n got %q\nwant %q", in, got, want)
		}
	}
}

func regexpMatch(pattern, s string) bool {
	return strings.Contains(strings.Join(strings.Fields(s), " "), strings.Join(strings.Fields(pattern), " "))
}

// checkESP reads an ESP at byte offset off of img with mtools and
// fsck.fat, and checks its boot files.
func checkESP(t *testing.T, img string, off int64, spec ImageSpec) {
	t.Helper()
	needTool(t, "mdir", "mtools")
	at := img + "@@" + strconv.FormatInt(off, 10)
	env := append(os.Environ(), "MTOOLS_SKIP_CHECK=1")
	mtool := func(args ...string) string {
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	list := mtool("mdir", "-/", "-b", "-i", at, "::")
	for _, want := range []string{"::/EFI/BOOT/BOOTX64.EFI", "::/loader/loader.conf", "::/loader/entries/" + spec.Name + ".conf", "::/vmlinuz", "::/initrd.img"} {
		if !strings.Contains(list, want) {
			t.Errorf("ESP lacks %s:\n%s", want, list)
		}
	}
	entry := mtool("mtype", "-i", at, "::/loader/entries/"+spec.Name+".conf")
	if entry != LoaderEntry(spec.Name, InstallMediaCmdline(spec.Cmdline)) || !strings.Contains(entry, HaltIfInstalled) {
		t.Errorf("loader entry = %q", entry)
	}
	dst := filepath.Join(t.TempDir(), "initrd")
	mtool("mcopy", "-i", at, "::/initrd.img", dst)
	run(t, "cmp", dst, spec.Initramfs)
	if off == 0 {
		needTool(t, "fsck.fat", "dosfstools")
		run(t, "fsck.fat", "-n", img)
	}
}

// TestISOReproducible builds twice with SOURCE_DATE_EPOCH, a second apart
// and from different staging directories: the bytes must be identical.
func TestISOReproducible(t *testing.T) {
	t.Setenv(EnvSourceDateEpoch, strconv.Itoa(testEpoch))
	kernel, initrd := fakeBootFiles(t, 1<<20)
	spec := testSpec(t, kernel, initrd)
	var sums []string
	for i := range 2 {
		clock := time.Unix(1800000000+int64(i)*3600, 0)
		b := testBuilder(t, WithSourceDateEpoch(time.Unix(testEpoch, 0)), WithBuilderClock(func() time.Time { return clock }))
		out := filepath.Join(t.TempDir(), "cp1.iso")
		img, err := b.ISO(context.Background(), spec, out)
		if err != nil {
			t.Fatal(err)
		}
		sums = append(sums, img.SHA256)
		if i == 0 {
			// Stamp the source files differently for the second build.
			later := time.Unix(1900000000, 0)
			os.Chtimes(kernel, later, later)
			os.Chtimes(initrd, later, later)
			time.Sleep(1100 * time.Millisecond) // go-diskfs reads the wall clock for ISO dates; cross a second
		}
	}
	if sums[0] != sums[1] {
		t.Fatalf("two builds differ: %s vs %s", sums[0], sums[1])
	}
}

// TestReproducibleNeedsEnvironment: asking for a reproducible build without
// the same SOURCE_DATE_EPOCH in the environment fails clearly.
func TestReproducibleNeedsEnvironment(t *testing.T) {
	kernel, initrd := fakeBootFiles(t, 1024)
	spec := testSpec(t, kernel, initrd)
	b := testBuilder(t, WithSourceDateEpoch(time.Unix(testEpoch, 0)), WithBuilderGetenv(func(string) string { return "" }))
	out := filepath.Join(t.TempDir(), "x.iso")
	_, err := b.ISO(context.Background(), spec, out)
	if err == nil || !strings.Contains(err.Error(), "SOURCE_DATE_EPOCH=1700000000") {
		t.Fatalf("ISO() = %v, want an error naming SOURCE_DATE_EPOCH=1700000000", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Errorf("a failed build left %s", out)
	}
}

// The boot loaders are materialized once per test binary.
var (
	loadersOnce sync.Once
	loadersDir  string
	loadersErr  error
)

// cmdOut runs a command and returns its combined output and error.
func cmdOut(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).CombinedOutput()
	return string(out), err
}

// cmdEnv runs a command with extra environment, failing on error.
func cmdEnv(t testing.TB, env []string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// fileBackend wraps a file for go-diskfs.
func fileBackend(f *os.File) backend.Storage { return file.New(f, false) }
