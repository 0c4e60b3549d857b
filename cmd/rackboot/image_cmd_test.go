package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dotfile/rackboot/imager"
	"github.com/dotfile/rackboot/profiles"
)

// imageTestLoaders copies Debian's boot loader files into a directory for
// --bootloaders (the build's embedded copy may not be materialized).
func imageTestLoaders(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for name, src := range map[string]string{
		"isolinux.bin":        "/usr/lib/ISOLINUX/isolinux.bin",
		"ldlinux.c32":         "/usr/lib/syslinux/modules/bios/ldlinux.c32",
		"systemd-bootx64.efi": "/usr/lib/systemd/boot/efi/systemd-bootx64.efi",
	} {
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatalf("%v: install the Debian packages isolinux syslinux-common systemd-boot-efi", err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// imageTestRack is profiles' small valid rack (cp1, w1) in a temporary directory.
func imageTestRack(t *testing.T) (rack string) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "profiles", "testdata", "good.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	rack = filepath.Join(t.TempDir(), "rack.yaml")
	if err := os.WriteFile(rack, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return rack
}

// fakeTalos writes a bzImage-shaped kernel and a gzip-shaped initramfs.
func fakeTalos(t *testing.T) (string, string) {
	t.Helper()
	dir := t.TempDir()
	k := make([]byte, 64<<10)
	copy(k[0x1fe:], "\x55\xaa")
	copy(k[0x202:], "HdrS")
	kernel, initrd := filepath.Join(dir, "vmlinuz"), filepath.Join(dir, "initramfs")
	if err := os.WriteFile(kernel, k, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, append([]byte("\x1f\x8b"), make([]byte, 100<<10)...), 0o644); err != nil {
		t.Fatal(err)
	}
	return kernel, initrd
}

func TestImageISOFromCache(t *testing.T) {
	rack := imageTestRack(t)
	state := filepath.Join(filepath.Dir(rack), ".rackboot")
	loaders := imageTestLoaders(t)
	out := filepath.Join(t.TempDir(), "cp1.iso")

	// Nothing cached: the error names the pull command; nothing is written.
	_, _, err := runRackboot(t, "-f", rack, "image", "iso", "cp1", "-o", out, "--bootloaders", loaders)
	if err == nil || !strings.Contains(err.Error(), "rackboot assets pull --version v1.13.0 --schematic "+imager.VanillaSchematicID+" --arch amd64") {
		t.Fatalf("image iso without cached assets = %v, want the pull command named", err)
	}
	if _, err := os.Stat(out); !os.IsNotExist(err) {
		t.Fatalf("%s written without assets", out)
	}

	// Import the set the rack boots, then build.
	r, err := profiles.LoadFile(rack)
	if err != nil {
		t.Fatal(err)
	}
	id, err := profiles.SchematicID(r.Schematic(r.Machine("cp1")))
	if err != nil {
		t.Fatal(err)
	}
	cache, err := imager.OpenCache(filepath.Join(state, "assets"))
	if err != nil {
		t.Fatal(err)
	}
	kernel, initrd := fakeTalos(t)
	if _, err := cache.Import(imager.Set{Version: r.Cluster.TalosVersion, Schematic: id, Arch: "amd64"}, kernel, initrd); err != nil {
		t.Fatal(err)
	}
	cache.Close()
	stdout, stderr, err := runRackboot(t, "-f", rack, "image", "iso", "cp1", "-o", out, "--bootloaders", loaders, "--kernel-arg", "console=ttyS0")
	if err != nil {
		t.Fatalf("image iso: %v\n%s", err, stderr)
	}
	if !strings.Contains(stdout, "wrote "+out) || !strings.Contains(stderr, "contains the cluster's secrets") {
		t.Errorf("stdout %q stderr %q: want the image named and the secrets warning", stdout, stderr)
	}
	st, err := os.Stat(out)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("%s: %v mode %v, want 0600", out, err, st.Mode())
	}
	iso, _ := os.ReadFile(out)
	cmdline := "talos.platform=metal"
	if !strings.Contains(string(iso), cmdline) || !strings.Contains(string(iso), "console=ttyS0 talos.config=metal-iso") {
		t.Error("the ISO's isolinux.cfg lacks the Talos arguments, the extra one and talos.config=metal-iso")
	}
	if !strings.Contains(string(iso), "hostname: cp1") {
		t.Error("the ISO does not carry cp1's config")
	}
}

func TestImageUSBAllWithStandin(t *testing.T) {
	rack := imageTestRack(t)
	loaders := imageTestLoaders(t)
	kernel, initrd := fakeTalos(t)
	dir := filepath.Join(t.TempDir(), "images")
	t.Setenv(imager.EnvSourceDateEpoch, "1700000000")
	stdout, stderr, err := runRackboot(t, "-f", rack, "image", "usb", "--all", "-o", dir, "--kernel", kernel, "--initrd", initrd, "--bootloaders", loaders)
	if err != nil {
		t.Fatalf("image usb --all: %v\n%s", err, stderr)
	}
	for _, name := range []string{"cp1.img", "w1.img"} {
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v", name, err)
		}
	}
	if !strings.Contains(stdout, "w1.img") {
		t.Errorf("stdout: %s", stdout)
	}
	first, _ := os.ReadFile(filepath.Join(dir, "cp1.img"))
	if _, stderr, err := runRackboot(t, "-f", rack, "image", "usb", "cp1", "-o", filepath.Join(dir, "again.img"), "--kernel", kernel, "--initrd", initrd, "--bootloaders", loaders); err != nil {
		t.Fatalf("%v\n%s", err, stderr)
	}
	again, _ := os.ReadFile(filepath.Join(dir, "again.img"))
	if string(first) != string(again) {
		t.Error("two builds with SOURCE_DATE_EPOCH differ")
	}
}

func TestImageBadInvocations(t *testing.T) {
	rack := imageTestRack(t)
	kernel, _ := fakeTalos(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"image", "iso"}, "one machine name"},
		{[]string{"image", "iso", "cp1", "--all", "-o", "x"}, "not both"},
		{[]string{"image", "iso", "--all"}, "--all needs -o DIR"},
		{[]string{"image", "usb", "nope"}, `no machine named "nope"`},
		{[]string{"image", "iso", "cp1", "--kernel", kernel}, "--kernel and --initrd go together"},
		{[]string{"image", "iso", "cp1", "--bootloaders", t.TempDir(), "--kernel", kernel, "--initrd", kernel}, "missing"},
		{[]string{"image", "write", kernel, kernel}, "not a block device"},
		{[]string{"image", "write", kernel}, "accepts 2 arg"},
	} {
		_, _, err := runRackboot(t, append([]string{"-f", rack}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("rackboot %s = %v, want an error containing %q", strings.Join(tc.args, " "), err, tc.want)
		}
	}
}
