package ipxe

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
)

// The embedded binaries are exactly what sits in bin/ at build time; without
// bin/ FS says ErrNoIPXE.
func TestFSMatchesBinDir(t *testing.T) {
	fsys, err := FS()
	if _, statErr := os.Stat(filepath.Join("bin", EFI)); statErr != nil {
		if !errors.Is(err, ErrNoIPXE) {
			t.Fatalf("no bin/%s, FS() error = %v, want ErrNoIPXE", EFI, err)
		}
		t.Fatalf("bin/ is not materialized: run scripts/materialize-ipxe.sh pxe/ipxe/bin (Debian package ipxe); FS() correctly says %v", err)
	}
	if err != nil {
		t.Fatalf("FS(): %v", err)
	}
	for _, n := range []string{BIOS, EFI, SNP} {
		got, err := fs.ReadFile(fsys, n)
		if err != nil {
			t.Fatalf("read embedded %s: %v", n, err)
		}
		want, err := os.ReadFile(filepath.Join("bin", n))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) || len(got) == 0 {
			t.Errorf("embedded %s differs from bin/%s (%d vs %d bytes)", n, n, len(got), len(want))
		}
	}
	if Source() == "" {
		t.Error("Source() is empty though bin/ is materialized")
	}
}

func TestDir(t *testing.T) {
	if _, err := Dir(t.TempDir()); err == nil {
		t.Error("Dir(empty) succeeded")
	}
	if _, err := Dir(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Error("Dir(missing) succeeded")
	}
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, SNP), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	fsys, err := Dir(d)
	if err != nil {
		t.Fatalf("Dir with %s: %v", SNP, err)
	}
	if b, err := fs.ReadFile(fsys, SNP); err != nil || string(b) != "x" {
		t.Errorf("read %s = %q, %v", SNP, b, err)
	}
}

func TestIsBinary(t *testing.T) {
	for name, want := range map[string]bool{
		"ipxe.efi": true, "undionly.kpxe": true, "snponly.efi": true, "ipxe-arm64.efi": true,
		"SOURCE": false, "README.md": false, "/ipxe.efi": false, "../ipxe.efi": false, "IPXE.EFI": false, "": false,
	} {
		if got := IsBinary(name); got != want {
			t.Errorf("IsBinary(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestTemplates(t *testing.T) {
	tm, err := Templates()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"boot.ipxe.tmpl", "machine.ipxe.tmpl", "local.ipxe.tmpl", "unknown.ipxe.tmpl"} {
		if tm.Lookup(n) == nil {
			t.Errorf("template %s missing", n)
		}
	}
}
