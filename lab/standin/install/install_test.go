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
