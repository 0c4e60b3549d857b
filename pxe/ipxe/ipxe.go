// Package ipxe holds the iPXE binaries rackboot hands to PXE firmware and the
// iPXE script templates its HTTP server renders.
//
// The binaries come from Debian trixie's ipxe package (pinned by version and
// .deb SHA-256), copied into bin/ at build time by scripts/materialize-ipxe.sh
// (bin/ is git-ignored) and embedded here. A build without them compiles and reports ErrNoIPXE; Dir
// serves them from a directory instead (rackboot serve --ipxe-dir).
package ipxe

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"text/template"
)

// The embed pattern must match something even when bin/ is absent (a fresh
// clone), so it takes the whole directory: README.md and the templates are
// always there; bin/ joins them once materialized.
//
//go:embed *
var content embed.FS

// ErrNoIPXE says the build carries no iPXE binaries.
var ErrNoIPXE = errors.New("no iPXE binaries in this build: run `make ipxe` (Debian trixie's ipxe package) or pass --ipxe-dir")

// Names of the iPXE binaries, as DHCP boot files and TFTP/HTTP file names.
const (
	BIOS     = "undionly.kpxe"  // x86 BIOS: chains the firmware's UNDI driver
	EFI      = "ipxe.efi"       // x64 UEFI, all iPXE drivers
	SNP      = "snponly.efi"    // x64 UEFI, the firmware's SNP driver only
	ARM64EFI = "ipxe-arm64.efi" // arm64 UEFI, all iPXE drivers
)

// IsBinary says whether name is exactly one of the iPXE binary names. Only
// these are ever served from the binaries' file system.
func IsBinary(name string) bool {
	switch name {
	case BIOS, EFI, SNP, ARM64EFI:
		return true
	}
	return false
}

// FS returns the embedded binaries (a file system holding some of BIOS, EFI,
// SNP, ARM64EFI and SOURCE), or ErrNoIPXE.
func FS() (fs.FS, error) {
	sub, err := fs.Sub(content, "bin")
	if err != nil {
		return nil, fmt.Errorf("open embedded iPXE binaries: %w", err)
	}
	if !hasBinary(sub) {
		return nil, ErrNoIPXE
	}
	return sub, nil
}

// Dir returns the binaries in dir (e.g. /usr/lib/ipxe), or an error naming
// dir when it holds none of them.
func Dir(dir string) (fs.FS, error) {
	st, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("iPXE directory: %w", err)
	}
	if !st.IsDir() {
		return nil, fmt.Errorf("iPXE directory %s is not a directory", dir)
	}
	fsys := os.DirFS(dir)
	if !hasBinary(fsys) {
		return nil, fmt.Errorf("iPXE directory %s holds none of %s, %s, %s, %s", dir, BIOS, EFI, SNP, ARM64EFI)
	}
	return fsys, nil
}

func hasBinary(fsys fs.FS) bool {
	for _, n := range []string{BIOS, EFI, SNP, ARM64EFI} {
		if st, err := fs.Stat(fsys, n); err == nil && st.Mode().IsRegular() && st.Size() > 0 {
			return true
		}
	}
	return false
}

// Source returns the embedded bin/SOURCE (package, version, sha256 of the
// binaries), or "" when the build has none.
func Source() string {
	b, err := content.ReadFile("bin/SOURCE")
	if err != nil {
		return ""
	}
	return string(b)
}

// Templates parses the iPXE script templates: "boot.ipxe.tmpl" (the generic
// entry script), "machine.ipxe.tmpl" (kernel, initrds, boot),
// "local.ipxe.tmpl" (boot from disk), "unknown.ipxe.tmpl" (a machine not
// in the rack) and "discovery.ipxe.tmpl" (a machine not in the rack, booted
// without a config to be discovered). Each call returns a fresh set.
func Templates() (*template.Template, error) {
	t, err := template.ParseFS(content, "templates/*.ipxe.tmpl")
	if err != nil {
		return nil, fmt.Errorf("parse iPXE templates: %w", err)
	}
	return t, nil
}
