package bootloaders

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"testing/fstest"
)

func TestCheck(t *testing.T) {
	full := fstest.MapFS{ISOLinux: {Data: []byte("x")}, LDLinux: {Data: []byte("x")}, SystemdBoot: {Data: []byte("x")}}
	if err := Check(full); err != nil {
		t.Fatalf("Check(all files) = %v", err)
	}
	part := fstest.MapFS{ISOLinux: {Data: []byte("x")}, LDLinux: {Data: nil}}
	err := Check(part)
	if err == nil || !strings.Contains(err.Error(), LDLinux) || !strings.Contains(err.Error(), SystemdBoot) || strings.Contains(err.Error(), ISOLinux) {
		t.Fatalf("Check(partial) = %v, want ldlinux.c32 and systemd-bootx64.efi named", err)
	}
	if _, err := Dir(t.TempDir()); err == nil {
		t.Fatal("Dir(empty) succeeded")
	}
	if _, err := Dir(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Fatal("Dir(missing) succeeded")
	}
}

// TestMaterialize runs the script and checks that it copies Debian's files
// byte for byte, with a SOURCE naming each package.
func TestMaterialize(t *testing.T) {
	// go test runs in the package's folder (runtime.Caller would give a
	// module path under -trimpath).
	script, err := filepath.Abs(filepath.Join("..", "..", "scripts", "materialize-bootloaders.sh"))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "bin")
	cmd := exec.Command(script, out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s\n(needs the Debian packages isolinux syslinux-common systemd-boot-efi, or apt access)", script, err, b)
	}
	if _, err := Dir(out); err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile(filepath.Join(out, Source))
	if err != nil {
		t.Fatal(err)
	}
	for _, pkg := range []string{"isolinux", "syslinux-common", "systemd-boot-efi"} {
		if !bytes.Contains(src, []byte("package: "+pkg+"\n")) {
			t.Errorf("SOURCE does not name %s:\n%s", pkg, src)
		}
	}
	// isolinux.bin carries the "ISOLINUX" banner; systemd-boot is a PE image.
	iso, _ := os.ReadFile(filepath.Join(out, ISOLinux))
	if !bytes.Contains(iso, []byte("ISOLINUX")) {
		t.Errorf("%s has no ISOLINUX banner", ISOLinux)
	}
	efi, _ := os.ReadFile(filepath.Join(out, SystemdBoot))
	if !bytes.HasPrefix(efi, []byte("MZ")) {
		t.Errorf("%s is not a PE image", SystemdBoot)
	}
	// The embedded copy, when this build has one, is the same pinned files.
	if emb, err := FS(); err == nil {
		for _, n := range Files {
			a, _ := os.ReadFile(filepath.Join(out, n))
			b, err := fs.ReadFile(emb, n)
			if err != nil || !bytes.Equal(a, b) {
				t.Errorf("embedded %s differs from the materialized one (rerun make bootloaders)", n)
			}
		}
	} else if !errors.Is(err, ErrMissing) {
		t.Errorf("FS() = %v, want nil or ErrMissing", err)
	}
}
