package main

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/dotfile/rackboot/imager"
)

// TestBootAssetsArm64Standin: with no Talos in the cache, an arm64 machine
// gets the stand-in in the stand-in directory's arm64 subdirectory (asset
// IDs standin/arm64/...), served from there; without that subdirectory it
// gets the cache's error, and amd64 is unchanged.
func TestBootAssetsArm64Standin(t *testing.T) {
	cache, err := imager.OpenCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	dir := t.TempDir()
	write := func(name, body string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("vmlinuz", "amd64 kernel")
	write("initramfs.cpio.gz", "amd64 initramfs")

	_, resolve, err := bootAssets(cache, dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := resolve("v1.13.0", "s", "arm64"); err == nil {
		t.Error("arm64 without an arm64 stand-in resolved")
	}

	write("arm64/vmlinuz", "arm64 kernel")
	write("arm64/initramfs.cpio.gz", "arm64 initramfs")
	assets, resolve, err := bootAssets(cache, dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ arch, kernel, initrd, kernelBody string }{
		{"amd64", "standin/vmlinuz", "standin/initramfs.cpio.gz", "amd64 kernel"},
		{"arm64", "standin/arm64/vmlinuz", "standin/arm64/initramfs.cpio.gz", "arm64 kernel"},
	} {
		k, i, err := resolve("v1.13.0", "s", tt.arch)
		if err != nil || k != tt.kernel || i != tt.initrd {
			t.Errorf("%s: %q %q %v, want %q %q", tt.arch, k, i, err, tt.kernel, tt.initrd)
			continue
		}
		f, err := assets.Open(k)
		if err != nil {
			t.Fatalf("open %s: %v", k, err)
		}
		b, _ := io.ReadAll(f)
		f.Close()
		if string(b) != tt.kernelBody {
			t.Errorf("%s served %q, want %q", k, b, tt.kernelBody)
		}
	}
	for _, id := range []string{"standin/arm64/../vmlinuz", "standin/arm64/arm64/vmlinuz", "standin/arm64/SOURCE", "standin/arm64/"} {
		if f, err := assets.Open(id); err == nil {
			f.Close()
			t.Errorf("%s opened", id)
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: %v, want not-exist", id, err)
		}
	}
}
