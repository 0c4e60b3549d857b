package install

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/siderolabs/go-blockdevice/v2/partitioning/gpt"

	"github.com/dotfile/rackboot/lab/standin/marker"
)

// TestInstallRoundTrip lays out a disk image, then reads it back: META is
// there (the stand-in's and Talos's "installed"), the config comes back
// from STATE, and util-linux and dosfstools see the ESP's files.
func TestInstallRoundTrip(t *testing.T) {
	dir := t.TempDir()
	kernel := filepath.Join(dir, "vmlinuz")
	initrd := filepath.Join(dir, "initrd")
	if err := os.WriteFile(kernel, bytes.Repeat([]byte{'k'}, 3<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(initrd, bytes.Repeat([]byte{'i'}, 5<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(128 << 20); err != nil {
		t.Fatal(err)
	}
	dev, err := gpt.DeviceFromFile(f)
	if err != nil {
		t.Fatal(err)
	}
	p := Payload{Loader: []byte("MZ fake loader"), Kernel: kernel, Initramfs: initrd, Cmdline: "console=ttyS0 talos.platform=metal", Config: []byte("version: v1alpha1\n" + strings.Repeat("# padding\n", 500))}
	l, err := Partition(dev, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := Fill(context.Background(), f, l, p); err != nil {
		t.Fatal(err)
	}
	if len(l) != 3 || l[0].Name != ESPName || l[1].Name != marker.Name || l[2].Name != StateName {
		t.Fatalf("layout %+v", l)
	}
	if ok, err := marker.Has(dev); err != nil || !ok {
		t.Fatalf("META: %v %v", ok, err)
	}
	state, err := FindState(dev)
	if err != nil || state != l[2] {
		t.Fatalf("FindState = %+v, %v; want %+v", state, err, l[2])
	}
	cfg, err := ReadConfig(f, state)
	if err != nil || string(cfg) != string(p.Config) {
		t.Fatalf("ReadConfig = %q, %v", cfg, err)
	}

	out, err := exec.Command("sfdisk", "--dump", img).CombinedOutput()
	if err != nil {
		t.Fatalf("sfdisk: %v\n%s", err, out)
	}
	dump := string(out)
	for _, want := range []string{`type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=`, `name="EFI"`, `name="META"`, `name="STATE"`} {
		if !strings.Contains(dump, want) {
			t.Errorf("sfdisk --dump lacks %s:\n%s", want, dump)
		}
	}
	// The ESP as the UEFI boot entry names it, as sfdisk sees it.
	esp0, err := FindESPPath(img)
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("start=%12d, size=%12d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=%s, name=\"EFI\"",
		esp0.StartLBA, esp0.SizeLBAs, strings.ToUpper(esp0.GUID.String()))
	if esp0.Number != 1 || int64(esp0.StartLBA)*512 != l[0].Start || int64(esp0.SizeLBAs)*512 != l[0].Size || !strings.Contains(dump, img+"1 : "+want) {
		t.Errorf("FindESPPath = %+v; sfdisk --dump:\n%s", esp0, dump)
	}
	// The ESP alone, checked by dosfstools and listed by mtools.
	esp := filepath.Join(dir, "esp.img")
	b := make([]byte, l[0].Size)
	if _, err := f.ReadAt(b, l[0].Start); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(esp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("fsck.fat", "-n", esp).CombinedOutput(); err != nil {
		t.Errorf("fsck.fat -n ESP: %v\n%s", err, out)
	}
	out, err = exec.Command("mtype", "-i", esp, "::/loader/entries/talos.conf").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "options console=ttyS0 talos.platform=metal") || !strings.Contains(string(out), "linux /vmlinuz") {
		t.Errorf("loader entry: %v\n%s", err, out)
	}
}

// TestUpgrade installs on a disk image, then upgrades it: the ESP holds
// the new kernel and initramfs (read back by mtools), STATE keeps the
// config and names the new image, META stays; boot files too large for
// the ESP are refused and leave the disk as it was.
func TestUpgrade(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, b byte, size int) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, bytes.Repeat([]byte{b}, size), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	img := filepath.Join(dir, "disk.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 128<<20); err != nil {
		t.Fatal(err)
	}
	cfg := []byte("version: v1alpha1\n")
	p := Payload{Loader: []byte("MZ fake loader"), Kernel: write("k1", 'k', 3<<20), Initramfs: write("i1", 'i', 5<<20), Cmdline: "console=ttyS0", Config: cfg}
	l := installImage(t, img, p)
	if got, err := ReadUpgradedImagePath(img); err != nil || got != "" {
		t.Fatalf("a fresh install names an upgraded image: %q, %v", got, err)
	}

	const image = "factory.talos.dev/installer/abc:v1.13.1"
	u := Upgrade{Loader: p.Loader, Kernel: write("k2", 'K', 3<<20+1), Initramfs: write("i2", 'I', 5<<20+7), Cmdline: "console=ttyS0 quiet", Image: image}
	if err := UpgradePath(context.Background(), img, u); err != nil {
		t.Fatal(err)
	}
	esp := espImage(t, img, l[0])
	for path, want := range map[string]string{"::/vmlinuz": u.Kernel, "::/initrd.img": u.Initramfs} {
		got, err := exec.Command("mtype", "-i", esp, path).Output()
		if err != nil {
			t.Fatalf("mtype %s: %v", path, err)
		}
		w, _ := os.ReadFile(want)
		if !bytes.Equal(got, w) {
			t.Errorf("%s on the ESP: %d bytes, want the upgrade's %d", path, len(got), len(w))
		}
	}
	if out, err := exec.Command("mtype", "-i", esp, "::/loader/entries/talos.conf").Output(); err != nil || !strings.Contains(string(out), "options console=ttyS0 quiet\n") {
		t.Errorf("loader entry: %v\n%s", err, out)
	}
	if out, err := exec.Command("fsck.fat", "-n", esp).CombinedOutput(); err != nil {
		t.Errorf("fsck.fat -n ESP: %v\n%s", err, out)
	}
	if got, err := ReadConfigPath(img); err != nil || !bytes.Equal(got, cfg) {
		t.Errorf("config after the upgrade: %q, %v", got, err)
	}
	if got, err := ReadUpgradedImagePath(img); err != nil || got != image {
		t.Errorf("upgraded image %q, %v; want %q", got, err, image)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev, err := gpt.DeviceFromFile(f)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := marker.Has(dev); err != nil || !ok {
		t.Errorf("META after the upgrade: %v %v", ok, err)
	}

	before, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	big := Upgrade{Loader: p.Loader, Kernel: u.Kernel, Initramfs: write("i3", 'X', int(l[0].Size)), Image: "factory.talos.dev/installer/abc:v1.13.2"}
	err = UpgradePath(context.Background(), img, big)
	if err == nil || !strings.Contains(err.Error(), "reinstall the machine") {
		t.Errorf("too large for the ESP: %v", err)
	}
	if after, _ := os.ReadFile(img); !bytes.Equal(before, after) {
		t.Error("a refused upgrade changed the disk")
	}
}

// espImage copies the ESP out of the disk image (for mtools).
func espImage(t *testing.T, img string, esp Part) string {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, esp.Size)
	if _, err := f.ReadAt(b, esp.Start); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "esp.img")
	if err := os.WriteFile(out, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return out
}

// installImage installs p on the disk image at img.
func installImage(t *testing.T, img string, p Payload) Layout {
	t.Helper()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dev, err := gpt.DeviceFromFile(f)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Partition(dev, p)
	if err != nil {
		t.Fatal(err)
	}
	if err := Fill(context.Background(), f, l, p); err != nil {
		t.Fatal(err)
	}
	return l
}
