package ipxe

import (
	"bytes"
	"debug/pe"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
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
		t.Fatalf("bin/ is not materialized: run `make ipxe` (scripts/materialize-ipxe.sh pxe/ipxe/bin, Debian trixie's ipxe); FS() correctly says %v", err)
	}
	if err != nil {
		t.Fatalf("FS(): %v", err)
	}
	for _, n := range []string{BIOS, EFI, SNP, ARM64EFI} {
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

// The embedded build is the pinned trixie one: every binary, each EFI one a
// PE image for its CPU (arm64 included), undionly.kpxe a PXE boot program.
func TestEmbeddedBuilds(t *testing.T) {
	fsys, err := FS()
	if err != nil {
		t.Fatalf("FS(): %v (run `make ipxe`)", err)
	}
	for name, machine := range map[string]uint16{
		EFI:      pe.IMAGE_FILE_MACHINE_AMD64,
		SNP:      pe.IMAGE_FILE_MACHINE_AMD64,
		ARM64EFI: pe.IMAGE_FILE_MACHINE_ARM64,
	} {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			t.Fatalf("embedded FS has no %s: %v", name, err)
		}
		f, err := pe.NewFile(bytes.NewReader(b))
		if err != nil {
			t.Fatalf("%s is not a PE image: %v", name, err)
		}
		if f.Machine != machine {
			t.Errorf("%s: PE machine %#x, want %#x", name, f.Machine, machine)
		}
		// An EFI application (subsystem 10).
		if oh, ok := f.OptionalHeader.(*pe.OptionalHeader64); !ok || oh.Subsystem != pe.IMAGE_SUBSYSTEM_EFI_APPLICATION {
			t.Errorf("%s is not a 64-bit EFI application", name)
		}
	}
	kpxe, err := fs.ReadFile(fsys, BIOS)
	if err != nil || len(kpxe) < 64*1024 || !bytes.Contains(kpxe, []byte("PXENV+")) {
		t.Errorf("%s: %d bytes, %v: not a PXE boot program (its prefix looks for PXENV+)", BIOS, len(kpxe), err)
	}
	// SOURCE names the version pinned in the script, and every file.
	script, err := os.ReadFile(filepath.Join("..", "..", "scripts", "materialize-ipxe.sh"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^PIN_VERSION=(\S+)$`).FindSubmatch(script)
	if m == nil {
		t.Fatal("no PIN_VERSION= in materialize-ipxe.sh")
	}
	src := Source()
	if !strings.Contains(src, "version: "+string(m[1])+"\n") {
		t.Errorf("embedded SOURCE is not the pinned ipxe %s (rerun `make ipxe`):\n%s", m[1], src)
	}
	for _, n := range []string{BIOS, EFI, SNP, ARM64EFI} {
		if !strings.Contains(src, "file: "+n+" ") {
			t.Errorf("SOURCE does not list %s", n)
		}
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
	for _, n := range []string{"boot.ipxe.tmpl", "machine.ipxe.tmpl", "local.ipxe.tmpl", "unknown.ipxe.tmpl", "discovery.ipxe.tmpl"} {
		if tm.Lookup(n) == nil {
			t.Errorf("template %s missing", n)
		}
	}
}
