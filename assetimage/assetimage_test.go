package assetimage

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"

	"github.com/dotfile/rackboot/imager"
	"github.com/dotfile/rackboot/registry"
)

var epoch = time.Unix(1764806400, 0).UTC() // 2025-12-04

// Laptop is a laptop's asset cache for tests: boot files of one or more
// sets (random bytes with a kernel's and an xz initramfs's magic) and an
// image store holding random images.
type Laptop struct {
	Dir    string
	Store  *registry.Store
	Kernel map[imager.Set][]byte
}

// NewLaptop makes one in a temporary directory with set and image.
func NewLaptop(t *testing.T) *Laptop {
	t.Helper()
	dir := t.TempDir()
	st, err := registry.Open(filepath.Join(dir, ImagesDir))
	if err != nil {
		t.Fatal(err)
	}
	l := &Laptop{Dir: dir, Store: st, Kernel: map[imager.Set][]byte{}}
	l.AddSet(t, imager.Set{Version: "v1.13.0", Schematic: imager.VanillaSchematicID, Arch: "amd64"})
	l.AddImage(t, "registry.k8s.io/pause:3.10")
	return l
}

// AddSet imports a set made of random bytes with the right magic.
func (l *Laptop) AddSet(t *testing.T, s imager.Set) {
	t.Helper()
	k := make([]byte, 256<<10)
	rand.Read(k)
	copy(k[0x1fe:], "\x55\xaa")
	copy(k[0x202:], "HdrS")
	in := make([]byte, 512<<10)
	rand.Read(in)
	copy(in, "\xfd7zXZ\x00")
	tmp := t.TempDir()
	kp, ip := filepath.Join(tmp, "kernel"), filepath.Join(tmp, "initramfs")
	if err := os.WriteFile(kp, k, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ip, in, 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := imager.OpenCache(l.Dir, imager.WithCacheClock(func() time.Time { return epoch }))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Import(s, kp, ip); err != nil {
		t.Fatal(err)
	}
	l.Kernel[s] = k
}

// AddImage puts a random two-layer image into the store.
func (l *Laptop) AddImage(t *testing.T, ref string) v1.Image {
	t.Helper()
	img, err := random.Image(64<<10, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Store.Put(ref, img); err != nil {
		t.Fatal(err)
	}
	return img
}

func (l *Laptop) build(t *testing.T, created time.Time) *Built {
	t.Helper()
	b, err := Build(Config{AssetsDir: l.Dir, Images: l.Store, Created: created})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func layerDigests(t *testing.T, b *Built, arch string) []v1.Hash {
	t.Helper()
	idx, err := b.Index.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range idx.Manifests {
		if m.Platform.Architecture != arch {
			continue
		}
		img, err := b.Index.Image(m.Digest)
		if err != nil {
			t.Fatal(err)
		}
		mf, err := img.Manifest()
		if err != nil {
			t.Fatal(err)
		}
		var out []v1.Hash
		for _, l := range mf.Layers {
			if l.MediaType != "application/vnd.oci.image.layer.v1.tar" {
				t.Errorf("layer %s is %s, want an uncompressed OCI layer", l.Digest, l.MediaType)
			}
			out = append(out, l.Digest)
		}
		return out
	}
	t.Fatalf("no %s manifest", arch)
	return nil
}

// TestReproducible: the same cache builds to the same digest, also after
// the image was put into the store (an assets image never holds another);
// another time, another digest; both platforms share the layers.
func TestReproducible(t *testing.T) {
	l := NewLaptop(t)
	a := l.build(t, epoch)
	b := l.build(t, epoch)
	if a.Digest != b.Digest {
		t.Fatalf("two builds: %s and %s", a.Digest, b.Digest)
	}
	if err := Put(l.Store, a); err != nil {
		t.Fatal(err)
	}
	if err := l.Store.Has(a.Name()); err != nil {
		t.Fatal(err)
	}
	if c := l.build(t, epoch); c.Digest != a.Digest || slices.Contains(c.Images, a.Name()) {
		t.Fatalf("after Put: %s (images %v), want %s without the assets image", c.Digest, c.Images, a.Digest)
	}
	if c := l.build(t, epoch.Add(time.Second)); c.Digest == a.Digest {
		t.Error("another time, same digest")
	}
	if !slices.Equal(layerDigests(t, a, "amd64"), layerDigests(t, a, "arm64")) {
		t.Error("the platforms' manifests name different layers")
	}
	if len(a.Sets) != 1 || !slices.Equal(a.Images, []string{"registry.k8s.io/pause:3.10"}) || len(layerDigests(t, a, "amd64")) != 3 {
		t.Errorf("sets %v images %v layers %d: want one set, pause, 3 layers (set, image, index)", a.Sets, a.Images, len(layerDigests(t, a, "amd64")))
	}
	if !strings.HasPrefix(a.Ref(), Repository+":"+a.Digest.Hex[:12]+"@sha256:") {
		t.Errorf("ref %s", a.Ref())
	}
}

// TestLayersShared: one more Talos version and one more image leave every
// earlier layer but the store's index as it was.
func TestLayersShared(t *testing.T) {
	l := NewLaptop(t)
	before := layerDigests(t, l.build(t, epoch), "amd64")
	l.AddSet(t, imager.Set{Version: "v1.13.1", Schematic: imager.VanillaSchematicID, Arch: "amd64"})
	l.AddImage(t, "ghcr.io/siderolabs/kubelet:v1.36.1")
	after := layerDigests(t, l.build(t, epoch), "amd64")
	if len(after) != len(before)+2 {
		t.Fatalf("%d layers, then %d: want 2 more", len(before), len(after))
	}
	for _, d := range before[:len(before)-1] {
		if !slices.Contains(after, d) {
			t.Errorf("layer %s is not in the new image", d)
		}
	}
	if slices.Contains(after, before[len(before)-1]) {
		t.Error("the store's index layer did not change")
	}
}

// TestEmpty: nothing to carry is ErrEmpty.
func TestEmpty(t *testing.T) {
	st, _ := registry.Open(filepath.Join(t.TempDir(), "images"))
	if _, err := Build(Config{AssetsDir: t.TempDir(), Images: st}); !errors.Is(err, ErrEmpty) {
		t.Fatalf("empty cache: %v, want ErrEmpty", err)
	}
}

// Unpack writes the image's layers in order into dir, as a runtime does.
func unpack(t *testing.T, b *Built, dir string) {
	t.Helper()
	idx, _ := b.Index.IndexManifest()
	img, err := b.Index.Image(idx.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	ls, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(epoch) || h.Uname != "" {
				t.Errorf("%s: owner %d:%d %q, time %v", h.Name, h.Uid, h.Gid, h.Uname, h.ModTime)
			}
			p := filepath.Join(dir, filepath.FromSlash(h.Name))
			switch h.Typeflag {
			case tar.TypeDir:
				os.MkdirAll(p, 0o755)
			case tar.TypeReg:
				data, _ := io.ReadAll(tr)
				if err := os.WriteFile(p, data, 0o644); err != nil {
					t.Fatal(err)
				}
			default:
				t.Errorf("%s: type %c", h.Name, h.Typeflag)
			}
		}
		rc.Close()
	}
}

// TestUnpacked: the unpacked image is an asset cache and an image store
// rackboot opens: the kernel byte for byte, the image complete.
func TestUnpacked(t *testing.T) {
	l := NewLaptop(t)
	b := l.build(t, epoch)
	dir := t.TempDir()
	unpack(t, b, dir)
	c, err := imager.OpenCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s := imager.Set{Version: "v1.13.0", Schematic: imager.VanillaSchematicID, Arch: "amd64"}
	if err := c.Verify(s.Version, s.Schematic, s.Arch); err != nil {
		t.Fatal(err)
	}
	f, err := c.OpenFile(s.ID(imager.FileKernel))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(f)
	f.Close()
	if !bytes.Equal(got, l.Kernel[s]) {
		t.Error("unpacked kernel differs")
	}
	st, err := registry.Open(filepath.Join(dir, ImagesDir))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Has("registry.k8s.io/pause:3.10"); err != nil {
		t.Fatal(err)
	}
	if ps, err := st.Verify(context.Background()); err != nil || len(ps) > 0 {
		t.Fatalf("verify: %v %v", err, ps)
	}
}

// TestMirrorServesAssets: put into the laptop's store, the assets image is
// served by the registry mirror; skopeo inspects it by name and by digest.
func TestMirrorServesAssets(t *testing.T) {
	skopeo, err := exec.LookPath("skopeo")
	if err != nil {
		t.Fatal("skopeo not found: install the Debian package skopeo (apt-get install skopeo)")
	}
	l := NewLaptop(t)
	b := l.build(t, epoch)
	if err := Put(l.Store, b); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := registry.New(registry.Config{Store: l.Store, Log: slog.New(slog.DiscardHandler)}, registry.WithListener(ln))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	host := srv.Addr().String()
	for _, ref := range []string{b.Name(), Repository + "@" + b.Digest.String()} {
		ictx, icancel := context.WithTimeout(context.Background(), 2*time.Minute)
		out, err := exec.CommandContext(ictx, skopeo, "inspect", "--tls-verify=false", "--no-tags", "--override-arch", "arm64", "docker://"+host+"/"+ref).CombinedOutput()
		icancel()
		t.Logf("skopeo inspect %s\n%s", ref, out)
		if err != nil {
			t.Fatal(err)
		}
		var r struct {
			Digest, Architecture string
			Layers               []string
		}
		if err := json.Unmarshal(out, &r); err != nil {
			t.Fatal(err)
		}
		if r.Digest != b.Digest.String() || r.Architecture != "arm64" || len(r.Layers) != 3 {
			t.Errorf("skopeo says %+v, want digest %s, arm64, 3 layers", r, b.Digest)
		}
	}
	t.Logf("laptop disk: image store blobs and boot files %d bytes, assets image layers %d bytes", dirSize(t, l.Dir)-b.Bytes, b.Bytes)
}

func dirSize(t *testing.T, dir string) int64 {
	var n int64
	filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return nil
	})
	return n
}
