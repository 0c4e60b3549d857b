// Package bootloaders holds the boot loaders rackboot puts on its install
// images: isolinux (BIOS, El Torito) and systemd-boot (UEFI x86-64).
//
// They come from Debian's pinned isolinux, syslinux-common and
// systemd-boot-efi packages, copied into bin/ at build time by
// scripts/materialize-bootloaders.sh (bin/ is git-ignored) and embedded here.
// A build without them compiles and reports ErrMissing; Dir reads them from
// a directory instead (rackboot image --bootloaders).
package bootloaders

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
)

// The embed pattern must match something even when bin/ is absent (a fresh
// clone), so it takes the whole directory: the Go files are always there;
// bin/ joins them once materialized.
//
//go:embed *
var content embed.FS

// Names of the boot loader files.
const (
	// ISOLinux is isolinux.bin, the BIOS El Torito no-emulation loader.
	ISOLinux = "isolinux.bin"
	// LDLinux is ldlinux.c32, isolinux's core module; it must sit in the
	// same ISO directory as isolinux.bin.
	LDLinux = "ldlinux.c32"
	// SystemdBoot is systemd-boot for x86-64 UEFI, installed as
	// \EFI\BOOT\BOOTX64.EFI.
	SystemdBoot = "systemd-bootx64.efi"
	// Source records the packages and sums the files came from.
	Source = "SOURCE"
)

// Files are the boot loader files every image needs.
var Files = []string{ISOLinux, LDLinux, SystemdBoot}

// ErrMissing says the build carries no boot loaders.
var ErrMissing = errors.New("no boot loaders in this build: run `make bootloaders` " +
	"(scripts/materialize-bootloaders.sh imager/bootloaders/bin; Debian packages isolinux syslinux-common systemd-boot-efi) " +
	"or pass --bootloaders DIR")

// FS returns the embedded boot loaders, or an error wrapping ErrMissing
// that names the missing files.
func FS() (fs.FS, error) {
	sub, err := fs.Sub(content, "bin")
	if err != nil {
		return nil, fmt.Errorf("open embedded boot loaders: %w", err)
	}
	if err := Check(sub); err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrMissing, err)
	}
	return sub, nil
}

// Dir returns the boot loaders in dir (the output of
// scripts/materialize-bootloaders.sh), or an error naming what is missing.
func Dir(dir string) (fs.FS, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("boot loader directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("boot loader directory %s is not a directory", dir)
	}
	fsys := os.DirFS(dir)
	if err := Check(fsys); err != nil {
		return nil, fmt.Errorf("boot loader directory %s: %w", dir, err)
	}
	return fsys, nil
}

// Check returns an error naming each of Files that fsys lacks (or holds
// empty).
func Check(fsys fs.FS) error {
	var missing []string
	for _, n := range Files {
		st, err := fs.Stat(fsys, n)
		if err != nil || !st.Mode().IsRegular() || st.Size() == 0 {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("missing %v", missing)
	}
	return nil
}
