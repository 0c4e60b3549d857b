package registry

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/random"
)

func TestOpenCreatesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "images")
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if l, err := s.List(); err != nil || len(l) != 0 {
		t.Fatalf("List on a new store = %v, %v", l, err)
	}
	if _, err := s.Resolve("docker.io/library/busybox", "1.36"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Resolve on a new store: %v, want ErrNotFound", err)
	}
	if err := s.Has("busybox:1.36"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Has on a new store: %v", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("read-only use created %s (%v)", dir, err)
	}
	// A directory with unrelated files is refused.
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "notes.txt"), []byte("x"), 0o644)
	if _, err := Open(other); err == nil {
		t.Fatal("Open accepted a directory that is no image store")
	}
}

func TestPutListResolveVerify(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	img, err := random.Image(1000, 2)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := random.Index(500, 2, 2)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put("lab/app:v1", img); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("registry.k8s.io/multi:1", idx); err != nil {
		t.Fatal(err)
	}
	// Putting again under the same name replaces the entry.
	if err := s.Put("lab/app:v1", img); err != nil {
		t.Fatal(err)
	}
	list, err := s.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Name != "docker.io/lab/app:v1" || list[1].Name != "registry.k8s.io/multi:1" {
		t.Fatalf("List = %+v", list)
	}
	imgDigest, _ := img.Digest()
	if list[0].Digest != imgDigest || list[0].Missing != nil {
		t.Fatalf("entry %+v, want digest %s complete", list[0], imgDigest)
	}
	imgSize := sizeOfImage(t, img)
	if list[0].Size != imgSize {
		t.Fatalf("size %d, want %d", list[0].Size, imgSize)
	}
	// The layout reads back with go-containerregistry's own reader.
	li, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	lm, err := li.IndexManifest()
	if err != nil || len(lm.Manifests) != 2 {
		t.Fatalf("layout index: %v, %v", lm, err)
	}
	back, err := li.Image(imgDigest)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := back.Digest(); d != imgDigest {
		t.Fatalf("read back %s", d)
	}

	d, err := s.Resolve("docker.io/lab/app", "v1")
	if err != nil || d.Digest != imgDigest {
		t.Fatalf("Resolve tag: %v %v", d, err)
	}
	layers, _ := img.Layers()
	ld, _ := layers[0].Digest()
	if d, err := s.Resolve("docker.io/lab/app", ld.String()); err != nil || d.Digest != ld {
		t.Fatalf("Resolve layer: %v %v", d, err)
	}
	// A digest of another repository's image does not resolve here.
	if _, err := s.Resolve("registry.k8s.io/multi", ld.String()); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Resolve across repositories: %v", err)
	}
	if err := s.Has("docker.io/lab/app:v1"); err != nil {
		t.Fatal(err)
	}

	if p, err := s.Verify(context.Background()); err != nil || len(p) != 0 {
		t.Fatalf("Verify: %v %v", p, err)
	}
	// Truncate a layer: Has and Verify name the image and the blob.
	if err := os.Truncate(s.BlobPath(ld), 10); err != nil {
		t.Fatal(err)
	}
	if err := s.Has("lab/app:v1"); err == nil {
		t.Fatal("Has accepted a truncated layer")
	}
	p, err := s.Verify(context.Background())
	if err != nil || len(p) != 1 || p[0].Image != "docker.io/lab/app:v1" || p[0].Blob != ld {
		t.Fatalf("Verify: %v %v", p, err)
	}
}

func sizeOfImage(t *testing.T, img v1.Image) int64 {
	t.Helper()
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := img.RawManifest()
	n := int64(len(raw)) + m.Config.Size
	for _, l := range m.Layers {
		n += l.Size
	}
	return n
}
