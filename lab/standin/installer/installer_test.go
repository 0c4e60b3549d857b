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

// An upgrade's installer image: the same kernel, the installed initramfs
// with the version as its gzip file name: it unpacks to the same bytes,
// and each version has its own digest (the install image's too).
func TestVersionImage(t *testing.T) {
	dir, kernel, installed := fakeBuild(t)
	base, err := Image(dir, "amd64")
	if err != nil {
		t.Fatal(err)
	}
	digests := map[string]string{}
	d, _ := base.Digest()
	digests[d.String()] = "the install image"
	for _, v := range []string{"v1.13.1", "v1.14.0", "v1.13.1"} {
		img, err := VersionImage(dir, "amd64", v)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := img.Digest()
		if prev, ok := digests[d.String()]; ok && prev != v {
			t.Errorf("%s has the digest of %s", v, prev)
		}
		digests[d.String()] = v
		layers, err := img.Layers()
		if err != nil || len(layers) != 1 {
			t.Fatalf("%s: %d layers, %v", v, len(layers), err)
		}
		rc, err := layers[0].Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		files := map[string][]byte{}
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(tr)
			files[h.Name] = b
		}
		rc.Close()
		if !bytes.Equal(files["usr/install/amd64/vmlinuz"], kernel) {
			t.Errorf("%s: the kernel differs", v)
		}
		got := files["usr/install/amd64/initramfs.xz"]
		zr, err := gzip.NewReader(bytes.NewReader(got))
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		unpacked, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("%s: %v", v, err)
		}
		want, _ := io.ReadAll(mustGunzip(t, installed))
		if zr.Name != "rackboot-standin-"+v || !bytes.Equal(unpacked, want) || bytes.Equal(got, installed) {
			t.Errorf("%s: initramfs named %q, unpacks to the same bytes %v, bytes differ %v", v, zr.Name, bytes.Equal(unpacked, want), !bytes.Equal(got, installed))
		}
	}
	if len(digests) != 3 {
		t.Errorf("digests %v, want 3 different", digests)
	}
	if _, err := VersionImage(dir, "amd64", ""); err == nil {
		t.Error("no version: no error")
	}
}

func mustGunzip(t *testing.T, b []byte) io.Reader {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return zr
}
