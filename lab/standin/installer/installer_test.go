package installer

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/types"
)

// fakeBuild writes vmlinuz and an initramfs.cpio.gz laid out as Build
// makes it: a gzip archive (the installed initramfs), zero padding, an
// uncompressed archive.
func fakeBuild(t *testing.T) (dir string, kernel, installed []byte) {
	t.Helper()
	dir = t.TempDir()
	kernel = make([]byte, 100<<10)
	payload := make([]byte, 64<<10)
	rand.Read(kernel)
	rand.Read(payload)
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(payload)
	zw.Close()
	installed = gz.Bytes()
	full := append(append([]byte(nil), installed...), 0, 0, 0)
	full = append(full, []byte("070701 an uncompressed archive follows")...)
	if err := os.WriteFile(filepath.Join(dir, KernelFile), kernel, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, InitramfsFile), full, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir, kernel, installed
}

func TestInstallerImage(t *testing.T) {
	dir, kernel, installed := fakeBuild(t)
	for _, arch := range []string{"amd64", "arm64"} {
		img, err := Image(dir, arch)
		if err != nil {
			t.Fatal(err)
		}
		again, err := Image(dir, arch)
		if err != nil {
			t.Fatal(err)
		}
		d1, _ := img.Digest()
		d2, _ := again.Digest()
		if d1 != d2 {
			t.Errorf("%s: two builds from the same files: %s and %s", arch, d1, d2)
		}
		if mt, _ := img.MediaType(); mt != types.OCIManifestSchema1 {
			t.Errorf("%s: manifest media type %s", arch, mt)
		}
		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if cf.OS != "linux" || cf.Architecture != arch || !cf.Created.IsZero() {
			t.Errorf("%s: config os %q arch %q created %v", arch, cf.OS, cf.Architecture, cf.Created)
		}
		layers, err := img.Layers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("%s: %d layers, %v", arch, len(layers), err)
		}
		if mt, _ := layers[0].MediaType(); mt != types.OCILayer {
			t.Errorf("%s: layer media type %s", arch, mt)
		}
		rc, err := layers[0].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		want := []struct {
			name string
			data []byte
		}{
			{"usr/install/" + arch + "/initramfs.xz", installed},
			{"usr/install/" + arch + "/vmlinuz", kernel},
		}
		for _, w := range want {
			h, err := tr.Next()
			if err != nil {
				t.Fatalf("%s: %v", arch, err)
			}
			b, _ := io.ReadAll(tr)
			if h.Name != w.name || !bytes.Equal(b, w.data) || h.ModTime.Unix() != 0 || h.Uid != 0 || h.Mode != 0o644 {
				t.Errorf("%s: entry %s (%d bytes, mtime %v, mode %o), want %s (%d bytes, mtime 0, 0644)", arch, h.Name, len(b), h.ModTime, h.Mode, w.name, len(w.data))
			}
		}
		if _, err := tr.Next(); err != io.EOF {
			t.Errorf("%s: more than two entries (%v)", arch, err)
		}
		rc.Close()
	}
	if _, err := Image(dir, "riscv64"); err == nil {
		t.Error("riscv64: no error")
	}
	if _, err := Image(t.TempDir(), "amd64"); err == nil {
		t.Error("an empty dir: no error")
	}
}
